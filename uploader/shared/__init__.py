"""What every worker shares, across one instance or a whole cluster.

The upload gate with its pauses and the host's budgets, the dedup index and the host's
credential. Workers (and the host's upload policy, ``hosts.citizen``) call:

    coordinator.claim(sha256, account, owner) / end_many([(sha256, account, link, report,
                                                          owner, observe), ...])
    coordinator.reserve_many(count, owner) / confirm(owner) / observe(report, owner)
                                                        / withdraw(owner)
    coordinator.pause(seconds, why)
    coordinator.release_owner(worker, generation)       (the dispatcher, when a worker dies)
    credentials.current() / refresh(version, reason)

Two backends behind the same calls: ``embedded`` (objects in this instance's
multiprocessing manager, reached through its proxies) and ``postgres`` (rows in the
shared database, reached directly from each process).
"""
from dataclasses import dataclass

from .. import hosts
from . import wire  # noqa: F401  (registers the manager's serializer in every process)


@dataclass(frozen=True)
class Shared:
    """Handed to every worker process (proxies, or objects that pickle as their settings)."""

    coordinator: object
    credentials: object = None


def make_shared(config, manager, instance: str, database=None) -> Shared:
    """The shared state the configuration asks for; ``manager``: the started manager;
    ``database``: how to reach PostgreSQL (``store.postgres.Database``) for a cluster."""
    gate, credential = hosts.gate_settings(config), hosts.credential_settings(config)
    host = config.resolved_image_host
    if config.storage.shared:
        from .postgres import PgCoordinator, PgCredentials

        coordinator = PgCoordinator(database, instance,
                                    lease_seconds=config.storage.lease_seconds, gate=gate,
                                    dedup_host=host if config.imgur.dedup else None,
                                    tickets=config.workers.uploads_per_process)
        credentials = None
        if credential is not None:
            credentials = PgCredentials(database, **credential)
            credentials.forgive()
        return Shared(coordinator, credentials)
    dedup = {"store": config.storage, "host": host} if config.imgur.dedup else None
    credentials = manager.Credentials(**credential) if credential is not None else None
    return Shared(manager.Coordinator(gate, dedup), credentials)
