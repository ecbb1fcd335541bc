"""A turn's notes of URLs waiting for the image host, written together once its events
are applied.

A worker says when one of its URLs begins to wait more than a second for the host (until
when, and why) and when the wait is over; meanwhile the job document shows it. Written as
they came, each note was a statement of the writer's turn: about one per URL of a paced
cluster. A turn keeps each URL's last note and hands them to the store at once
(``store.set_waiting_many``: PostgreSQL writes them with the turn's results, in one
statement), leaving out what no client would see: the note of a URL finished or handed
back in the turn (that clears its wait, ``sql.CLEARED``), and the end of a wait that was
never written (it began and ended within the turn).
"""
from typing import Callable, Dict, Optional, Tuple

from .jobs import Task


class WaitNotes:
    """One turn's waits, each URL's last note; ``shown``: URL id -> lease of each URL in
    flight here whose wait is written in the store (the turn's copy of it, kept up to date)."""

    def __init__(self, shown: Dict[int, int]):
        self.shown = shown
        self._last: Dict[int, Tuple[Task, Optional[float], Optional[str]]] = {}

    def note(self, task: Task, until: Optional[float], reason: Optional[str]) -> None:
        self._last[task.url_id] = (task, until, reason)

    def write(self, store, held: Callable[[int], Optional[Task]]) -> None:
        """Hand the store what clients should see, in one call; ``held(url id)``: the task
        in flight here under that id now, or None (a result taken: finished)."""
        waits = []
        for url_id, (task, until, reason) in self._last.items():
            current = held(url_id)
            if current is None or current.lease != task.lease:
                continue  # finished or handed back: that cleared its wait
            if until is None and self.shown.pop(url_id, None) != task.lease:
                continue  # never written: nothing to clear
            if until is not None:
                self.shown[url_id] = task.lease
            waits.append((task, until, reason))
        for url_id, lease in list(self.shown.items()):
            current = held(url_id)
            if current is None or current.lease != lease:
                del self.shown[url_id]  # no longer in flight under that lease
        if waits:
            store.set_waiting_many(waits)
