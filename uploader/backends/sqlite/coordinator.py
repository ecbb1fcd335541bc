"""The embedded shared state: objects in this instance's multiprocessing manager.

The upload gate (``gate.UploadGate``) and the dedup index (``dedup.DedupIndex``)
live in the manager, and a worker needs both around every upload: claim the bytes and
reserve a moment before, report the host's budgets and publish the link after. Round
trips are what costs, so the calls after an upload travel in batches (``end_many``) and
a worker's reservations too (``reserve_many``). Either part may be absent (no gate for
the local host, no dedup when it is off).
"""
from typing import List, Optional, Tuple

from multiprocess.managers import BaseProxy, MakeProxyType

from ...errors import SharedStateLost
from .gate import UploadGate
from .. import Shared
from .dedup import DedupIndex


class Coordinator:
    """The embedded ``protocols.Coordinator``, in the manager: the gate and the dedup index."""

    def __init__(self, gate: Optional[dict] = None, dedup: Optional[dict] = None):
        """``gate``: ``GateRules`` arguments; ``dedup``: ``{"store": StorageConfig, "host"}``
        (None: not in use)."""
        self.gate = UploadGate(**gate) if gate is not None else None
        self.dedup = None
        if dedup is not None:
            from .store import SqliteStore  # a reader: the front end holds the store

            store = SqliteStore(dedup["store"].path, "dedup", read_only=True)
            host = dedup["host"]
            self.dedup = DedupIndex(lambda key: store.link_for(key[1], host, key[0]))

    def claim_many(self, claims) -> List[Tuple[str, Optional[str]]]:
        """For each (sha256, account, owner): (decision, link): ``reuse`` (with the link),
        ``wait`` (ask again), or ``upload`` (these bytes are ours to upload). Bytes are the
        same only within an account. ``owner``: (worker, generation, URL id)."""
        if self.dedup is None:
            return [("upload", None)] * len(claims)
        return [self.dedup.claim((account, sha256), owner) for sha256, account, owner in claims]

    def _end(self, sha256: str, account: str, link: Optional[str], report: Optional[dict],
             owner: tuple, *, observe: bool) -> None:
        """After the last try: tell the gate (when a grant is still open), publish or release."""
        if observe:
            self.observe(report, owner[:2])
        if self.dedup is not None:
            if link:
                self.dedup.publish((account, sha256), link)
            else:
                self.dedup.release((account, sha256))

    def end_many(self, ends) -> None:
        """Several ``_end`` calls in one round trip: (sha256, account, link, report, owner,
        observe) each."""
        for sha256, account, link, report, owner, observe in ends:
            self._end(sha256, account, link, report, owner, observe=observe)

    def forget(self, sha256: str, account: str) -> None:
        """These bytes' link was deleted: upload them afresh next time."""
        if self.dedup is not None:
            self.dedup.forget((account, sha256))

    def reserve(self, owner: tuple) -> Optional[tuple]:
        return self.gate.reserve(owner) if self.gate is not None else None

    def reserve_many(self, count: int, owner: tuple) -> List[tuple]:
        """``count`` ``reserve`` answers in one round trip (``coalesce``)."""
        if self.gate is None:
            return [(True, 0.0, "")] * count
        return self.gate.reserve_many(count, owner)

    def confirm(self, owner: tuple) -> tuple:
        return self.gate.confirm(owner) if self.gate is not None else (True, 0.0, "")

    def observe(self, report: Optional[dict], owner: tuple) -> None:
        if self.gate is not None:
            self.gate.observe(report, owner)

    def withdraw(self, owner: tuple) -> None:
        """A grant given back unused (its moment went by before it could be used)."""
        if self.gate is not None:
            self.gate.withdraw(owner)

    def pause(self, seconds: float, why: str) -> None:
        if self.gate is not None:
            self.gate.pause(seconds, why)

    def learn(self, report: Optional[dict]) -> None:
        """The host's budgets, asked without spending any (at start)."""
        if self.gate is not None:
            self.gate.learn(report)

    def release_owner(self, worker: int, generation: int) -> None:
        """A worker process ended: its dedup claims and gate grants are void."""
        if self.dedup is not None:
            self.dedup.release_owner(worker, generation)
        if self.gate is not None:
            self.gate.release((worker, generation))

    def heard(self, listening: bool) -> None:
        """Nothing is held ahead here, and nothing is listened to: no news to hear."""

    def close(self) -> None:
        """Nothing of a worker's lives outside the manager: nothing to tell or stop."""


_LOCAL = ("heard", "close")  # about the calling process only: answered without a round trip


class CoordinatorProxy(MakeProxyType("_CoordinatorCalls", tuple(
        name for name in vars(Coordinator) if not name.startswith("_") and name not in _LOCAL))):
    """A worker's handle on the manager's ``Coordinator`` (``manager`` registers it): each
    call a round trip, except those about the calling process alone."""

    def heard(self, listening: bool) -> None:
        """See ``Coordinator.heard``."""

    def close(self) -> None:
        """See ``Coordinator.close``."""


class Guarded:
    """A manager proxy as a worker holds it: a call whose connection broke (the manager is
    gone) raises ``SharedStateLost``, which the worker does not take for the URL's failure;
    every other outcome is the proxy's own."""

    def __init__(self, proxy):
        self._proxy = proxy

    def __getattr__(self, name):
        method = getattr(self._proxy, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except (EOFError, ConnectionError) as exc:
                raise SharedStateLost(f"{type(exc).__name__}: {exc}") from exc
        setattr(self, name, call)  # made once per name: later calls find it directly
        return call


def guarded(shared: Shared) -> Shared:
    """``shared`` with its manager proxies (the embedded mode's) ``Guarded``."""
    def guard(part):
        return Guarded(part) if isinstance(part, BaseProxy) else part
    return Shared(guard(shared.coordinator), guard(shared.credentials))
