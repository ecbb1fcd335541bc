"""The worker pool: a ``multiprocess`` manager, one inbox per worker, one shared result queue.

    dispatcher --send(i, tasks)--> inbox[i] --> worker process i (N slot threads)
                                                   |
    dispatcher <--on_event-- reader thread <-- results queue (shared)
                                   ^
    watcher thread per worker -----+ puts WorkerExited after the process ends

Because a watcher puts ``WorkerExited`` on the same FIFO queue as the worker's own
results, the dispatcher always sees a dead worker's last results before its death, and
can hand back exactly the URLs that were still in flight. In the embedded mode the
manager also hosts what the workers share (``shared``): the upload gate (rate limit,
pauses, Imgur's budgets), the Imgur credential (refreshed once for all) and the dedup
index; with PostgreSQL those live in the database. Processes are forked from a fork
server, never from the front end (it has threads); the fork server ends with the front
end, and every child watches its parent, so none outlives it.
"""
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict

import multiprocess
from multiprocess.managers import SyncManager

from . import jobs, worker
from .credentials import Credentials
from .errors import PoolBroken
from .jobs import WorkerExited
from .shared import Shared
from .shared.embedded import Coordinator

log = logging.getLogger(__name__)


class PoolManager(SyncManager):
    """The manager process: queues and the objects every worker shares live here."""


PoolManager.register("Coordinator", Coordinator)
PoolManager.register("Credentials", Credentials)


@dataclass(frozen=True)
class ManagerLost:
    """The manager process died or its queues broke: nothing can be dispatched any more."""

    reason: str


@dataclass
class WorkerHandle:
    index: int
    generation: int
    process: object
    inbox: object
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    """Starts, feeds, watches and stops the worker processes."""

    def __init__(self, config, on_event: Callable[[object], None]):
        self.config = config
        self.on_event = on_event
        self.ctx = multiprocess.get_context("forkserver")
        # The fork server imports the worker's modules once; each worker is then a fork of
        # it (single-threaded, so safe), instead of a new interpreter importing everything.
        self.ctx.set_forkserver_preload(["uploader.worker"])
        self.workers: Dict[int, WorkerHandle] = {}
        self._generation = 0
        self._closing = False

    # -- start -----------------------------------------------------------------
    def start(self, make_shared: Callable[[SyncManager], Shared]) -> None:
        """Start the manager, then the workers; ``make_shared(manager)`` builds what every
        worker shares (objects in the manager, or handles to the shared database)."""
        self.manager = PoolManager(ctx=self.ctx)
        self.manager.start(initializer=_manager_init)
        self.results = self.manager.Queue()
        self.shared = make_shared(self.manager)
        for index in range(self.config.workers.processes):
            self.spawn(index)
        threading.Thread(target=self._read_results, name="result-reader", daemon=True).start()
        threading.Thread(target=self._watch_manager, name="manager-watch", daemon=True).start()

    def spawn(self, index: int) -> WorkerHandle:
        """Start worker ``index`` (again) with a fresh inbox, so no stale task reaches it."""
        self._generation += 1
        try:
            inbox = self.manager.Queue()
        except (OSError, EOFError) as exc:
            raise PoolBroken(f"cannot start worker {index}: {type(exc).__name__}: {exc}") from exc
        process = self.ctx.Process(
            target=worker.run,
            args=(index, self._generation, inbox, self.results, self.config, self.shared),
            name=f"uploader-worker-{index}",
            daemon=True,
        )
        process.start()
        handle = WorkerHandle(index, self._generation, process, inbox)
        self.workers[index] = handle
        threading.Thread(target=self._watch_worker, args=(handle,),
                         name=f"watch-worker-{index}", daemon=True).start()
        log.info("started worker %d (pid %d, generation %d)", index, process.pid, handle.generation)
        return handle

    # -- use -------------------------------------------------------------------
    def send(self, index: int, tasks) -> None:
        """Send worker ``index`` a batch of tasks, in one message."""
        try:
            self.workers[index].inbox.put(jobs.pack(tasks))
        except (OSError, EOFError) as exc:  # the manager's connection broke
            raise PoolBroken(f"cannot send to worker {index}: {type(exc).__name__}: {exc}") from exc

    def release_claims(self, index: int, generation: int) -> None:
        """A worker ended: the bytes it had claimed are free to take, its gate grants void."""
        try:
            self.shared.coordinator.release_owner(index, generation)
        except Exception as exc:  # the manager is gone (that is seen elsewhere) or the database
            log.warning("could not release the claims of worker %d: %s", index, exc)

    def pids(self):
        return [h.process.pid for h in self.workers.values()]

    def manager_pid(self):
        return self.manager._process.pid

    def manager_alive(self) -> bool:
        return self.manager._process.is_alive()

    # -- stop ------------------------------------------------------------------
    def ask_workers_to_stop(self) -> None:
        """``None`` stops a worker's slots once each has finished its current URL."""
        for handle in self.workers.values():
            try:
                handle.inbox.put(None)
            except Exception:  # the manager may be gone; terminate() still works
                break

    def terminate(self, timeout: float = 2.0) -> None:
        """Stop every process now (workers first, then the manager)."""
        self._closing = True
        for handle in self.workers.values():
            if handle.process.is_alive():
                handle.process.terminate()
        deadline = time.monotonic() + timeout
        for handle in self.workers.values():
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(1.0)
        try:
            self.results.put(None)  # ends the reader thread
        except Exception:
            pass
        try:
            self.manager.shutdown()
        except Exception:
            log.debug("manager shutdown failed", exc_info=True)

    # -- threads ---------------------------------------------------------------
    def _read_results(self) -> None:
        while True:
            try:
                item = self.results.get()
            except Exception as exc:  # EOFError, BrokenPipeError, ConnectionError...
                if not self._closing:
                    self.on_event(ManagerLost(f"result queue failed: {type(exc).__name__}: {exc}"))
                return
            if item is None:
                return
            for event in jobs.unpack(item):
                self.on_event(event)

    def _watch_worker(self, handle: WorkerHandle) -> None:
        handle.process.join()
        if self._closing:
            return
        try:
            self.results.put(WorkerExited(handle.index, handle.generation, handle.process.exitcode))
        except Exception as exc:
            self.on_event(ManagerLost(f"cannot report worker exit: {type(exc).__name__}: {exc}"))

    def _watch_manager(self) -> None:
        process = self.manager._process
        process.join()
        if not self._closing:
            self.on_event(ManagerLost(f"manager process exited with code {process.exitcode}"))


def _manager_init() -> None:
    """In the manager process: leave Ctrl-C to the front end, and die with it (its parent,
    the fork server, ends when the front end does)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker.exit_with_parent(os.getppid())
