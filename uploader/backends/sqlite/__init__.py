"""The embedded backend: one SQLite file (``store``) and, in this instance's
multiprocessing manager, the upload gate, the dedup index (``coordinator``) and the
host's credential (``credentials``)."""
from ... import hosts
from .. import Shared, open_store
from . import wire  # noqa: F401  (registers the manager's serializer in every process)


class SqliteBackend:
    """The embedded store, and what the workers share, in the manager."""

    def __init__(self, config, instance: str):
        self.config = config
        self.store = open_store(config.storage, instance)

    def make_shared(self, manager) -> Shared:
        """``manager``: the started manager, where ``Coordinator`` and ``Credentials``
        are registered (``pool``)."""
        config = self.config
        gate, credential = hosts.gate_settings(config), hosts.credential_settings(config)
        dedup = ({"store": config.storage, "host": config.resolved_image_host}
                 if config.imgur.dedup else None)
        credentials = manager.Credentials(**credential) if credential is not None else None
        return Shared(manager.Coordinator(gate, dedup), credentials)
