"""Retention on the embedded store alone: SQLite fills the pages pruning freed before it
grows the file (the rest of retention, on both backends: tests/system/test_retention.py)."""
import contextlib
import os
import sqlite3

import pytest

from uploader import jobs
from uploader.config import StorageConfig
from uploader.backends import open_store



@pytest.fixture
def store(storage):
    store = open_store(StorageConfig(**storage), "me")
    yield store
    store.close()


def finished_job(store, job_id, count, *, callback=None, days_ago=40.0, links=True):
    """A job of ``count`` URLs, each uploaded (a link of its own) or, without ``links``,
    failed, finished ``days_ago``."""
    with store.transaction():
        store.create_job(job_id, [f"https://example.test/{job_id}/{n}.png" for n in range(count)],
                         callback_url=callback)
    with store.transaction():
        tasks = store.claim(count)
        store.finish_many([(task, jobs.COMPLETE, {
            "attempts": 1, "link": f"https://i.example/{job_id}-{task.url_id}.png",
            "sha256": f"{job_id}-{task.url_id}", "host": "imgur"}) if links else
            (task, jobs.FAILED, {"attempts": 1, "reason": "the source answered HTTP 404"})
            for task in tasks])
    with store.transaction():
        store._execute("UPDATE jobs SET finished = finished - ? WHERE id = ?",
                       (days_ago * 86400, job_id))


def recording(store):
    """Every statement the pruner runs, with the rows it touched: [(sql, rowcount)]."""
    seen, pruning = [], store._pruning

    @contextlib.contextmanager
    def watched():
        with pruning() as run:
            if run is None:
                yield None
                return

            def recorded(sql, params=()):
                cursor = run(sql, params)
                seen.append((sql, cursor.rowcount))
                return cursor
            yield recorded
    store._pruning = watched
    return seen


def prune_all(store, older_than):
    deleted = {}
    while batch := store.prune(older_than):
        for table, rows in batch.items():
            deleted[table] = deleted.get(table, 0) + rows
    return deleted


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
