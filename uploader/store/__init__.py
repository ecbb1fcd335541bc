"""The store: jobs, per-URL state, the queue of URLs and every uploaded link.

One interface, two backends, chosen by ``storage.url``:

- empty: ``sqlite.SqliteStore``, one file, one instance (the embedded default);
- ``postgresql://...``: ``postgres.PostgresStore``, shared by any number of instances.

Queries live in ``sql.SqlStore`` and the schema in ``schema``, once for both. The writer
side belongs to the dispatcher's thread; reads come from the HTTP reader threads. Every
change is committed before anyone can see it: the API only answers from committed rows.
"""
from .sql import SqlStore

CHANNEL = "uploader_work"  # NOTIFY'd by a commit that adds work (PostgreSQL)


def open_store(storage, instance: str) -> SqlStore:
    """The store ``storage`` (a ``StorageConfig``) names, created or migrated, ready to use."""
    if storage.url:
        from .postgres import PostgresStore  # the embedded mode never imports the driver
        return PostgresStore(storage.url, instance, lease_seconds=storage.lease_seconds,
                             listen_url=storage.listen_url,
                             read_connections=storage.read_connections,
                             shared_connections=storage.shared_connections)
    from .sqlite import SqliteStore
    return SqliteStore(storage.path, instance)
