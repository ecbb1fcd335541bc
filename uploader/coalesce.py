"""Many threads of one worker asking the shared state at the same moment share one trip.

A worker's threads ask in waves: its upload slots free together (their uploads started
together and the host answers in about the same time), and its fetch threads finish
together. One call each would be one round trip each to the manager (and, for the
embedded mode, one manager connection and thread per asking thread, each opened with a
handshake) or a visit each to the database. Instead a ``Line`` has a thread of its own
that takes everything asked since its last trip, makes one ``call_many`` with it, and
hands each asker its own answer. Each answer is what that asker would have got asking
alone, in turn: ``call_many`` applies the rules once per item, in order.

A ``Combiner`` does the same without a thread of its own, for a way any thread may take
(a pooled database connection, where a manager proxy is not): the asker whose turn comes
makes the trip for everyone waiting, and no asker is handed over to another thread.
"""
import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


def next_batch(asks: "queue.SimpleQueue", limit: int = 0) -> list:
    """The next item (waiting for it), then every item already queued behind it, up to
    ``limit`` in all (0: no limit): what a thread that works in batches takes at once."""
    batch = [asks.get()]
    while len(batch) != limit:
        try:
            batch.append(asks.get_nowait())
        except queue.Empty:
            break
    return batch


class _Ask:
    """One question and, once ``done`` is released, its answer. ``done`` is a lock taken
    at once and released by the line's thread: a latch, cheaper than an Event."""
    __slots__ = ("item", "done", "answer", "error")

    def __init__(self, item):
        self.item = item
        self.done = threading.Lock()
        self.done.acquire()
        self.answer = self.error = None


class Line:
    """``line(item)`` -> the answer for ``item``, by way of ``call_many([items])``."""

    def __init__(self, call_many: Callable[[list], list], name: str):
        self._call_many = call_many
        self._asks: "queue.SimpleQueue[_Ask]" = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def __call__(self, item=None):
        ask = _Ask(item)
        self._asks.put(ask)
        ask.done.acquire()
        if ask.error is not None:
            raise ask.error
        return ask.answer

    def _run(self) -> None:
        try:  # open the way (the manager connection) before the first wave comes
            self._call_many([])
        except Exception as exc:
            log.debug("%s: could not open the way yet: %s", threading.current_thread().name, exc)
        while True:
            _answer(next_batch(self._asks), self._call_many)


def _answer(batch: list, call_many) -> None:
    """One trip for a batch of asks: each gets its answer, or the trip's error."""
    error = None
    try:
        answers = call_many([ask.item for ask in batch])
        if len(answers) != len(batch):  # nobody may be left waiting
            raise RuntimeError(f"{len(answers)} answers to {len(batch)} asks")
    except BaseException as exc:  # every asker of this trip hears it
        error, answers = exc, [None] * len(batch)
    for ask, answer in zip(batch, answers):
        ask.answer, ask.error = answer, error
        ask.done.release()


class Combiner:
    """``combiner(item)`` -> the answer for ``item``, by way of ``call_many([items])``,
    made by whichever asking thread gets the turn, for all asked meanwhile."""

    def __init__(self, call_many: Callable[[list], list]):
        self._call_many = call_many
        self._waiting: list = []
        self._waiting_lock = threading.Lock()
        self._turn = threading.Lock()

    def __call__(self, item=None):
        ask = _Ask(item)
        with self._waiting_lock:
            self._waiting.append(ask)
        with self._turn:
            if ask.done.locked():  # nobody answered it while we waited for the turn
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                _answer(batch, self._call_many)
        if ask.error is not None:
            raise ask.error
        return ask.answer
