"""Retention on the embedded store alone: SQLite fills the pages pruning freed before it
grows the file (the rest of retention, on both backends: tests/system/test_retention.py)."""
import contextlib
import os
import sqlite3

from uploader.config import StorageConfig
from uploader.backends import open_store

from tests.pruning import finished_job, prune_all


def test_a_pruned_sqlite_store_reuses_its_pages_instead_of_growing(tmp_path):
    store = open_store(StorageConfig(path=str(tmp_path / "store.sqlite3")), "me")
    sizes = []
    try:
        for cycle in range(4):  # a retention window's worth arrives, and the last one goes
            for n in range(10):  # (their URLs failed: links, kept for good, would grow it)
                finished_job(store, f"c{cycle}-{n}", 200, links=False)
            prune_all(store, 86400)
            store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(os.path.getsize(tmp_path / "store.sqlite3"))
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "store.sqlite3")) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 0  # free, for the next
    assert sizes[1:] == [sizes[0]] * 3, sizes
