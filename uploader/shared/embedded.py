"""The embedded shared state: objects in this instance's multiprocessing manager.

The upload gate (``ratelimit.UploadGate``) and the dedup index (``dedup.DedupIndex``)
live in the manager, and a worker needs both around every upload: claim the bytes and
reserve a moment before, report the host's budgets and publish the link after. Calling
them one by one cost four round trips per URL; ``begin`` and ``end`` do the same in two.
Either part may be absent (no gate for the local host, no dedup when it is off).
"""
from typing import Optional, Tuple

from ..dedup import DedupIndex
from ..ratelimit import UploadGate


class Coordinator:
    def __init__(self, gate: Optional[dict] = None, dedup: Optional[dict] = None):
        """``gate``: ``GateRules`` arguments; ``dedup``: ``{"store": StorageConfig, "host"}``
        (None: not in use)."""
        self.gate = UploadGate(**gate) if gate is not None else None
        self.dedup = None
        if dedup is not None:
            from ..store.sqlite import SqliteStore  # a reader: the front end holds the store

            store = SqliteStore(dedup["store"].path, "dedup", read_only=True)
            host = dedup["host"]
            self.dedup = DedupIndex(lambda key: store.link_for(key[1], host, key[0]))

    def begin(self, sha256: str, account: str, owner: tuple) -> Tuple[str, Optional[str], Optional[tuple]]:
        """(decision, link, grant): decision ``reuse`` (with the link), ``wait`` (ask again),
        or ``upload`` with the gate's first ``reserve()`` answer (None without a gate).
        Bytes are the same only within an account. ``owner``: (worker, generation, thread)."""
        if self.dedup is not None:
            decision, link = self.dedup.claim((account, sha256), owner)
            if decision != "upload":
                return decision, link, None
        return "upload", None, self.reserve(owner[:2])

    def end(self, sha256: str, account: str, link: Optional[str], report: Optional[dict],
            owner: tuple, *, observe: bool) -> None:
        """After the last try: tell the gate (when a grant is still open), publish or release."""
        if observe:
            self.observe(report, owner[:2])
        if self.dedup is not None:
            if link:
                self.dedup.publish((account, sha256), link)
            else:
                self.dedup.release((account, sha256))

    def forget(self, sha256: str, account: str) -> None:
        """These bytes' link was deleted: upload them afresh next time."""
        if self.dedup is not None:
            self.dedup.forget((account, sha256))

    def reserve(self, owner: tuple) -> Optional[tuple]:
        return self.gate.reserve(owner) if self.gate is not None else None

    def confirm(self, owner: tuple) -> tuple:
        return self.gate.confirm(owner) if self.gate is not None else (True, 0.0, "")

    def observe(self, report: Optional[dict], owner: tuple) -> None:
        if self.gate is not None:
            self.gate.observe(report, owner)

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

