"""Suspects of a worker crash run alone, so a poison URL cannot take innocent ones with it.

When a worker process dies with several URLs in flight, nobody knows which one killed
it. Each try still counts as an attempt, but from then on every one of those URLs is a
*suspect* (a flag on the URL in the store, so every instance knows): it runs alone on a
worker, which takes no other work while a suspect is queued or running on it. A poison
URL then dies alone until its attempts run out; an innocent one succeeds on its next,
solitary, try. Other workers keep working.
"""
from typing import Dict, Optional, Tuple


class Quarantine:
    def __init__(self):
        self.running: Dict[int, int] = {}  # suspect URL id -> worker running it (here)
        self.worker: Optional[int] = None  # the worker kept free for suspects

    def copy(self) -> "Quarantine":
        twin = Quarantine()
        twin.running, twin.worker = dict(self.running), self.worker
        return twin

    def finished(self, url_id: int) -> None:
        """A URL left this instance's hands (final, handed back or lost)."""
        self.running.pop(url_id, None)

    def plan(self, free: Dict[int, int], load: Dict[int, int],
             waiting: bool) -> Tuple[Dict[int, int], Optional[int]]:
        """Adjust this turn's free slots; returns (free slots, worker to start a suspect on).

        ``load``: URLs each live worker has in flight now; ``waiting``: a suspect is queued."""
        busy = set(self.running.values())
        if self.worker not in free:
            self.worker = None
        if not waiting and not busy:
            self.worker = None
            return free, None
        if self.worker is None and waiting:
            self.worker = min(free, key=lambda i: (load.get(i, 0), i)) if free else None
        free = {i: (0 if i == self.worker or i in busy else n) for i, n in free.items()}
        if self.worker is not None and waiting and load.get(self.worker, 0) == 0:
            return free, self.worker
        return free, None

    def started(self, url_id: int, worker: int) -> None:
        self.running[url_id] = worker
