"""The backends: where jobs, the queue, links and the workers' shared state live.

One choice, made here from ``storage.url``, and nowhere else:

- empty: ``sqlite``, one SQLite file and one instance (the embedded default); what the
  workers share lives in this instance's multiprocessing manager;
- ``postgresql://...``: ``postgres``, one database shared by any number of instances;
  what the workers share lives in its rows.

Each backend gives a store (jobs, the queue, links, the outbox) and what the workers share
(``Shared``: the coordinator, with the upload gate and the dedup claims, and the host's
credential), as ``protocols`` declares them. Queries live in ``sql`` and the schema in
``schema``, once for both; ``memory`` keeps the same promises in plain Python, for tests.
"""
import os
from dataclasses import dataclass
from typing import List

from ..config import redact_url_password
from .protocols import Coordinator, Credentials, Store  # noqa: F401  (the contracts)


@dataclass(frozen=True)
class Shared:
    """What every worker shares, handed to each worker process (manager proxies, or
    objects that pickle as their settings)."""

    coordinator: object
    credentials: object = None


def open_backend(config, instance: str):
    """The backend ``config.storage`` names, its store opened (created or migrated)."""
    if config.storage.url:
        from .postgres import PostgresBackend  # the embedded mode never imports the driver
        return PostgresBackend(config, instance)
    from .sqlite import SqliteBackend
    return SqliteBackend(config, instance)


def storage_problems(storage, *, connect: bool) -> List[str]:
    """What would stop ``storage`` from opening, one line each (``preflight``);
    ``connect``: also try to reach a database."""
    if storage.url:
        from .postgres import database_problems
        return database_problems(storage.url) if connect else []
    from .sqlite import file_problems
    return file_problems(storage.path)


def describe_store(storage) -> str:
    """Where the store is, fit for a log line (a database URL's password as ``***``)."""
    if storage.url:
        return f"PostgreSQL at {redact_url_password(storage.url)}"
    return f"SQLite at {os.path.abspath(storage.path)}"


def open_store(storage, instance: str):
    """The store ``storage`` (a ``StorageConfig``) names, created or migrated, ready to use."""
    if storage.url:
        from .postgres.store import PostgresStore
        return PostgresStore(storage.url, instance, lease_seconds=storage.lease_seconds,
                             listen_url=storage.listen_url,
                             read_connections=storage.read_connections,
                             shared_connections=storage.shared_connections)
    from .sqlite.store import SqliteStore
    return SqliteStore(storage.path, instance)
