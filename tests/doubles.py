"""Stand-ins for parts of the service that unit tests share: a worker pool that records
what it would send, a writer that runs calls at once, a worker's report that records."""
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from uploader.errors import StoreUnavailable


@dataclass
class _Process:
    alive: bool = True

    def is_alive(self):
        return self.alive


@dataclass
class _Handle:
    index: int
    generation: int
    process: _Process = field(default_factory=_Process)
    started: float = field(default_factory=time.monotonic)


class StubPool:
    """Records what would be sent to worker processes; spawning bumps the generation."""

    def __init__(self, processes):
        self.generations = itertools.count(1)
        self.workers = {i: _Handle(i, next(self.generations)) for i in range(processes)}

    def send(self, index, task):
        pass

    def spawn(self, index):
        self.workers[index] = _Handle(index, next(self.generations))

    def release_claims(self, index, generation):
        pass

    def ask_workers_to_stop(self):
        pass

    def terminate(self):
        pass


class OneWriter:
    """The dispatcher as the courier and the handlers use it: ``call(fn)`` runs
    ``fn(store)`` in a transaction of its own, one call at a time. ``fail_next`` calls
    fail as a commit that cannot be made would: their statements ran, and are rolled back."""

    def __init__(self, store):
        self.store = store
        self.fail_next = 0
        self._lock = threading.Lock()

    def call(self, fn) -> Future:
        future: Future = Future()
        with self._lock:
            try:
                with self.store.transaction():
                    result = fn(self.store)
                    if self.fail_next:
                        self.fail_next -= 1
                        raise StoreUnavailable("injected: the commit failed")
                future.set_result(result)
            except Exception as exc:
                future.set_exception(exc)
        return future


class Report:
    """What the worker's per-URL report offers the upload policy."""

    grant_open = False
    attempts = 1
    rate = None
    grants_given_back = 0

    def describe(self):
        return "a URL"

    def waiting(self, until, why):
        pass

    def retrying(self):
        self.attempts += 1
