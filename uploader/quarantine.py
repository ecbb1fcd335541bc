"""Suspects of a worker crash run alone, so a poison URL cannot take innocent ones with it.

When a worker process dies with several URLs in flight, nobody knows which one killed
it. Each try still counts as an attempt, but from then on every one of those URLs is a
*suspect*: it runs alone on a worker (the quarantine worker takes no other work while
a suspect is queued or running). A poison URL then dies alone until its attempts run out;
an innocent one succeeds on its next, solitary, try. Other workers keep working.
"""
from typing import Dict, Optional, Set, Tuple


class Quarantine:
    def __init__(self):
        self.queued: Set[int] = set()  # suspect URL ids waiting for their solitary try
        self.running: Dict[int, int] = {}  # suspect URL id -> worker running it
        self.worker: Optional[int] = None  # the worker kept free for suspects

    def crashed(self, url_ids, *, crowd: bool) -> None:
        """URLs handed back after a crash; ``crowd``: several were in flight on that worker."""
        for url_id in url_ids:
            was_suspect = self.running.pop(url_id, None) is not None or url_id in self.queued
            if crowd or was_suspect:
                self.queued.add(url_id)

    def finished(self, url_id: int) -> None:
        """A URL reached a final state (or left the service's hands)."""
        self.queued.discard(url_id)
        self.running.pop(url_id, None)

    def plan(self, free: Dict[int, int], load: Dict[int, int]) -> Tuple[Dict[int, int], Optional[Tuple[int, int]]]:
        """Adjust free slots for this turn; returns (free slots, (suspect, worker) to start or None).

        ``load`` is how many URLs each live worker has in flight now."""
        busy = set(self.running.values())
        if self.worker not in free:
            self.worker = None
        if not self.queued and not busy:
            self.worker = None
            return free, None
        if self.worker is None and self.queued:
            self.worker = min(free, key=lambda i: (load.get(i, 0), i)) if free else None
        free = {i: (0 if i == self.worker or i in busy else n) for i, n in free.items()}
        if self.worker is not None and self.queued and load.get(self.worker, 0) == 0:
            suspect = min(self.queued)
            return free, (suspect, self.worker)
        return free, None

    def started(self, url_id: int, worker: int) -> None:
        self.queued.discard(url_id)
        self.running[url_id] = worker
