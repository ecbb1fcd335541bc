"""The upload gate of one machine: ``ratelimit``'s rules over state kept in this
instance's multiprocessing manager, where every worker process reaches it."""
import threading
import time
from typing import Dict, List, Optional

from ...ratelimit import Answer, GateRules


class UploadGate:
    """The gate of one machine: rules and state behind a lock, on the monotonic clock.
    Lives in the multiprocessing manager; ``when`` is a ``time.monotonic()`` moment (one
    clock for every process on the machine, so a caller's lag in hearing it does not
    shift it). Grants are counted per owner (a worker process), so those of a worker
    that died can be dropped (``release``) instead of counting as in flight forever."""

    def __init__(self, rate: float, burst: int, reserve: Optional[dict] = None,
                 costs: Optional[dict] = None, host: str = "Imgur"):
        self.rules = GateRules(rate, burst, reserve, costs, host)
        self.state = self.rules.new_state(time.monotonic())
        self._grants: Dict[tuple, int] = {}
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return sum(self._grants.values())

    def _count(self, owner: tuple, change: int) -> None:
        left = self._grants.get(owner, 0) + change
        if left > 0:
            self._grants[owner] = left
        else:
            self._grants.pop(owner, None)

    def reserve(self, owner: tuple = ()) -> Answer:
        return self.reserve_many(1, owner)[0]

    def reserve_many(self, count: int, owner: tuple = ()) -> List[Answer]:
        """``count`` reservations for one owner in one call (``GateRules.reserve_slots``)."""
        with self._lock:
            answers = self.rules.reserve_slots(self.state, time.monotonic(), self.in_flight,
                                               count)
            self._count(owner, sum(granted for granted, _, _ in answers))
            return answers

    def confirm(self, owner: tuple = ()) -> Answer:
        with self._lock:
            answer = self.rules.confirm(self.state, time.monotonic())
            if not answer[0]:
                self._count(owner, -1)
            return answer

    def observe(self, report: Optional[dict], owner: tuple = ()) -> None:
        with self._lock:
            self._count(owner, -1)
            self.rules.observe(self.state, time.monotonic(), report)

    def withdraw(self, owner: tuple = ()) -> None:
        """A grant given back unused: one less in flight, nothing learned."""
        with self._lock:
            self._count(owner, -1)

    def pause(self, seconds: float, why: str) -> None:
        with self._lock:
            self.rules.pause(self.state, time.monotonic(), seconds, why)

    def learn(self, report: Optional[dict]) -> None:
        with self._lock:
            self.rules.learn(self.state, time.monotonic(), report)

    def release(self, owner: tuple) -> None:
        """A worker ended: its grants will never be answered."""
        with self._lock:
            self._grants.pop(owner, None)
