"""The embedded backend: one SQLite file (``store``) and, in this instance's
multiprocessing manager, the upload gate, the dedup index (``coordinator``) and the
host's credential (``credentials``)."""
import os
from typing import List

from ... import hosts
from ...writable import directory_problems
from .. import Shared, open_store
from . import wire  # noqa: F401  (registers the manager's serializer in every process)
from .manager import EmbeddedManager

SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteBackend:
    """The embedded store, and what the workers share, in the manager."""

    manager_class = EmbeddedManager  # the pool starts it; ``make_shared`` fills it

    def __init__(self, config, instance: str):
        self.config = config
        self.store = open_store(config.storage, instance)

    def make_shared(self, manager) -> Shared:
        """``manager``: the started ``EmbeddedManager``."""
        config = self.config
        gate, credential = hosts.gate_settings(config), hosts.credential_settings(config)
        dedup = ({"store": config.storage, "host": config.resolved_image_host}
                 if config.imgur.dedup else None)
        credentials = manager.Credentials(**credential) if credential is not None else None
        return Shared(manager.Coordinator(gate, dedup), credentials)


def file_problems(path: str) -> List[str]:
    """Whether SQLite can open ``path`` for writing and make its journal beside it."""
    if os.path.isdir(path):
        return [f"storage.path {path} is a directory, not a SQLite file"]
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.exists(path):
        return directory_problems(directory, f"storage.path {path}")
    try:
        with open(path, "r+b") as f:  # opened for writing, as SQLite will; nothing written
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return [f"storage.path {path} cannot be opened for writing: {exc.strerror}"]
    if header and header != SQLITE_HEADER:
        return [f"storage.path {path} is not a SQLite database (damaged, or another kind "
                "of file); move it away to start afresh"]
    # Its journal (-wal) and shared memory (-shm) files are made beside it.
    return directory_problems(directory, f"storage.path {path}")
