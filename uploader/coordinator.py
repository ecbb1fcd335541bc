"""One manager round trip before and one after each upload, for the gate and dedup together.

The upload gate (``ratelimit.UploadGate``) and the dedup index (``dedup.DedupIndex``) both
live in the multiprocessing manager, and a worker needs both around every upload: claim
the bytes and reserve a moment before, report Imgur's budgets and publish the link after.
Calling them one by one cost four round trips per URL; ``begin`` and ``end`` do the same
in two. Either part may be absent (no gate for the local host, no dedup when it is off).
"""
from typing import Optional, Tuple

from .dedup import DedupIndex
from .ratelimit import UploadGate


class Coordinator:
    def __init__(self, gate: Optional[dict] = None, dedup: Optional[dict] = None):
        """``gate``: UploadGate's arguments, ``dedup``: DedupIndex's (None: not in use)."""
        self.gate = UploadGate(**gate) if gate is not None else None
        self.dedup = DedupIndex(**dedup) if dedup is not None else None

    def begin(self, sha256: str, owner: tuple) -> Tuple[str, Optional[str], Optional[tuple]]:
        """(decision, link, grant): decision ``reuse`` (with the link), ``wait`` (ask again),
        or ``upload`` with the gate's first ``reserve()`` answer (None without a gate)."""
        if self.dedup is not None:
            decision, link = self.dedup.claim(sha256, owner)
            if decision != "upload":
                return decision, link, None
        return "upload", None, self.reserve()

    def end(self, sha256: str, link: Optional[str], report: Optional[dict], *, observe: bool) -> None:
        """After the last try: tell the gate (when a grant is still open), publish or release."""
        if observe:
            self.observe(report)
        if self.dedup is not None:
            if link:
                self.dedup.publish(sha256, link)
            else:
                self.dedup.release(sha256)

    def reserve(self) -> Optional[tuple]:
        return self.gate.reserve() if self.gate is not None else None

    def confirm(self) -> tuple:
        return self.gate.confirm() if self.gate is not None else (True, 0.0, "")

    def observe(self, report: Optional[dict]) -> None:
        if self.gate is not None:
            self.gate.observe(report)

    def pause(self, seconds: float, why: str) -> None:
        if self.gate is not None:
            self.gate.pause(seconds, why)

    def release_owner(self, worker: int, generation: int) -> None:
        if self.dedup is not None:
            self.dedup.release_owner(worker, generation)
