"""The embedded backend's multiprocessing manager: the process where the upload gate, the
dedup index and the host's credential live for every worker of this instance."""
from multiprocess.managers import SyncManager

from . import wire
from .coordinator import Coordinator, CoordinatorProxy
from .credentials import Credentials


class EmbeddedManager(SyncManager):
    """A manager that serves ``Coordinator`` and ``Credentials``, on the fast wire."""

    def __init__(self, ctx):
        super().__init__(ctx=ctx, serializer=wire.SERIALIZER)


EmbeddedManager.register("Coordinator", Coordinator, proxytype=CoordinatorProxy)
EmbeddedManager.register("Credentials", Credentials)
