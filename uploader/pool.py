"""The worker pool: a ``multiprocess`` manager for what workers share, and a pipe per worker.

    dispatcher --send(i, tasks)--> pipe i --> worker process i (N slot threads)
    store listener --tell_gate-->  pipe i      (a cluster gate's pauses: backends/postgres/tickets.py)
    dispatcher <--on_event-- reader thread <-- pipe i (batches of results), one per worker
                                                 EOF on pipe i: worker i ended

Tasks and results travel on a direct pipe between the dispatcher and each worker, as
pre-pickled batches: no process in between, no pickling by the manager's (pure-Python)
pickler, and no lock shared by the workers (a shared queue's write lock, held by a worker
killed mid-write, would block every other one). One reader thread waits on every pipe; a
worker's pipe gives EOF once the process is gone, after everything it wrote, so the
dispatcher always sees a dead worker's last results before its death and can hand back
exactly the URLs that were still in flight. In the embedded mode the manager hosts what
the workers share (``shared``): the upload gate (rate limit, pauses, Imgur's budgets),
the Imgur credential (refreshed once for all) and the dedup index; with PostgreSQL those
live in the database. Processes are forked from a fork server, never from the front end
(it has threads); every child holds the front end's ``lifeline``, so none outlives it.
"""
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict

import multiprocess
import multiprocess.connection
from multiprocess.managers import SyncManager

from . import jobs, lifeline, worker
from .errors import PoolBroken
from .jobs import WorkerExited
from .backends import Shared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerLost:
    """The manager process died or its queues broke: nothing can be dispatched any more."""

    reason: str


@dataclass
class WorkerHandle:
    index: int
    generation: int
    process: object
    conn: object  # our end of the worker's pipe
    started: float = field(default_factory=time.monotonic)
    sending: threading.Lock = field(default_factory=threading.Lock)  # one message at a time


class WorkerPool:
    """Starts, feeds, watches and stops the worker processes."""

    def __init__(self, config, on_event: Callable[[object], None]):
        self.config = config
        self.on_event = on_event
        self.ctx = multiprocess.get_context("forkserver")
        # The fork server imports the worker's modules once; each worker is then a fork of
        # it (single-threaded, so safe), instead of a new interpreter importing everything
        # (boto3 too, for S3: half a second a worker). A child also runs the main module
        # again unless it is a package's __main__: hence ``python -m uploader`` (bin/serve);
        # ``-m uploader.cli`` would import the whole front end into every child (0.3 s each).
        host_modules = ["uploader.hosts.s3"] if config.resolved_image_host == "s3" else []
        self.ctx.set_forkserver_preload(["uploader.worker", *host_modules])
        self.workers: Dict[int, WorkerHandle] = {}
        self._generation = 0
        self._closing = False
        self._gate_news = None  # the last jobs.GateNews told, for workers started later
        self._gate_lock = threading.Lock()

    # -- start -----------------------------------------------------------------
    def start_manager(self, manager_class=SyncManager) -> SyncManager:
        """Start the manager process, first: what the workers share may live in it (the
        backend's ``manager_class`` serves it)."""
        self.lifeline = lifeline.Lifeline(self.ctx)
        self.manager = manager_class(ctx=self.ctx)
        self.manager.start(initializer=_manager_init, initargs=(self.lifeline.end,))
        return self.manager

    def start_workers(self, shared: Shared) -> None:
        """Start the workers, each handed ``shared`` (objects in the manager, or handles to
        the shared database: ``shared.make_shared``)."""
        self.shared = shared
        self._wake_r, self._wake_w = os.pipe()  # tells the reader its set of pipes changed
        for index in range(self.config.workers.processes):
            self.spawn(index)
        threading.Thread(target=self._read_results, name="result-reader", daemon=True).start()
        threading.Thread(target=self._watch_manager, name="manager-watch", daemon=True).start()

    def spawn(self, index: int) -> WorkerHandle:
        """Start worker ``index`` (again) on a pipe of its own, so no stale task reaches it."""
        self._generation += 1
        ours, theirs = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=worker.run,
            args=(index, self._generation, theirs, self.lifeline.end, self.config,
                  self.shared),
            name=f"uploader-worker-{index}",
            daemon=True,
        )
        try:
            process.start()
        except (OSError, EOFError) as exc:  # the fork server is gone: so is everything
            raise PoolBroken(f"cannot start worker {index}: {type(exc).__name__}: {exc}") from exc
        finally:
            theirs.close()  # only the worker holds its end: its death is our EOF
        handle = WorkerHandle(index, self._generation, process, ours)
        with self._gate_lock:
            self.workers[index] = handle
            if self._gate_news is not None:
                self._send(handle, [self._gate_news])
        os.write(self._wake_w, b"x")
        log.info("started worker %d (pid %d, generation %d)", index, process.pid, handle.generation)
        return handle

    # -- use -------------------------------------------------------------------
    def send(self, index: int, tasks) -> None:
        """Send worker ``index`` a batch of tasks, in one message. A worker that died
        meanwhile loses nothing: its EOF hands its tasks back."""
        self._send(self.workers[index], tasks)

    def tell_gate(self, listening: bool) -> None:
        """Thread-safe: tell every worker a pause of the cluster's gate was heard
        (``listening`` True), or that listening began or ended (``jobs.GateNews``)."""
        with self._gate_lock:
            self._gate_news = jobs.GateNews(listening)
            for handle in list(self.workers.values()):
                self._send(handle, [self._gate_news])

    def _send(self, handle: WorkerHandle, records) -> None:
        try:
            with handle.sending:  # the dispatcher's tasks and the listener's news
                handle.conn.send_bytes(jobs.pack(records))
        except OSError as exc:
            log.info("worker %d is gone; its tasks come back with its exit (%s)", handle.index,
                     exc)

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
        """An empty message stops a worker's slots once each has finished its current URL."""
        for handle in self.workers.values():
            try:
                with handle.sending:
                    handle.conn.send_bytes(b"")
            except OSError:  # gone already
                pass

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
        os.write(self._wake_w, b"x")  # the reader sees _closing and ends
        try:
            self.manager.shutdown()
        except Exception:
            log.debug("manager shutdown failed", exc_info=True)

    # -- threads ---------------------------------------------------------------
    def _read_results(self) -> None:
        """Every worker's results, as they come; a worker's EOF becomes ``WorkerExited``."""
        wake = _Wake(self._wake_r)
        while not self._closing:
            handles = {h.conn: h for h in list(self.workers.values()) if not h.conn.closed}
            for ready in multiprocess.connection.wait([*handles, wake]):
                if ready is wake:
                    wake.drain()
                    continue
                handle = handles[ready]
                try:
                    message = ready.recv_bytes()
                except (EOFError, OSError):
                    self._ended(handle)
                    continue
                for event in jobs.unpack(message):
                    self.on_event(event)

    def _ended(self, handle: WorkerHandle) -> None:
        handle.conn.close()
        handle.process.join(5.0)
        if not self._closing:
            self.on_event(WorkerExited(handle.index, handle.generation, handle.process.exitcode))

    def _watch_manager(self) -> None:
        process = self.manager._process
        process.join()
        if not self._closing:
            self.on_event(ManagerLost(f"manager process exited with code {process.exitcode}"))


def _manager_init(lifeline_end) -> None:
    """In the manager process: leave Ctrl-C to the front end, and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lifeline.watch(lifeline_end)


class _Wake:
    """The read end of a self-pipe, waitable beside the workers' pipes."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        os.read(self.fd, 4096)
