"""The shared backend: PostgreSQL, where any number of instances meet and act as one
service: the store (``store``), the gate and the dedup claims (``coordinator``, with the
gate's ``tickets``) and the host's credential (``credentials``), all in its rows."""
from typing import List

from multiprocess.managers import SyncManager

from ... import hosts
from ...config import redact_url_password
from .. import Shared, open_store

CHANNEL = "uploader_work"  # NOTIFY'd by a commit that adds work


class PostgresBackend:
    """The shared store, and what the workers share, in the same database."""

    manager_class = SyncManager  # holds nothing of ours; the pool still starts and watches it

    def __init__(self, config, instance: str):
        self.config = config
        self.instance = instance
        self.store = open_store(config.storage, instance)

    def make_shared(self, manager) -> Shared:
        """``manager`` is not used: every process reaches the database itself."""
        from .coordinator import PgCoordinator
        from .credentials import PgCredentials

        config, database = self.config, self.store.database
        gate, credential = hosts.gate_settings(config), hosts.credential_settings(config)
        coordinator = PgCoordinator(database, self.instance,
                                    lease_seconds=config.storage.lease_seconds, gate=gate,
                                    dedup_host=(config.resolved_image_host
                                                if config.imgur.dedup else None),
                                    tickets=config.workers.uploads_per_process)
        credentials = None
        if credential is not None:
            credentials = PgCredentials(database, **credential)
            credentials.forgive()
        return Shared(coordinator, credentials)


def database_problems(url: str) -> List[str]:
    """Whether the database at ``url`` takes our login (within 3 s)."""
    import psycopg

    from .store import login_refused

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = login_refused(exc) or "cannot connect: " + " ".join(str(exc).split())
        return [f"storage.url {redact_url_password(url)}: {reason}"]
    return []
