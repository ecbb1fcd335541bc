"""The dispatcher: one thread that owns the store's writes and the pool's work.

    POST handler --submit--> events --+
    result reader -----------------> events --> dispatcher thread --> store (one commit a batch)
    worker watchers (via results) --> events          |
                                                      +--> pool.send(worker, tasks)

It is an actor: everything reaches it as an event on one in-process queue, and it alone
decides what is in flight where. Each turn drains the waiting events; new jobs are
committed first, in a small transaction of their own (a POST waits for it), and their
submitters answered; then every other event is applied and free worker slots refilled
in ONE transaction, committed, and only then are the new tasks sent. Nothing is visible
or in flight before it is durable. A worker's death hands its in-flight URLs back (or
fails those that used every attempt) and, when it had several, runs each of them alone
next (``quarantine``); a stop drains in-flight work within a grace period and hands back
the rest.
"""
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from . import jobs
from .jobs import Attempt, Progress, Ready, Result, Task, Waiting, WorkerExited
from .errors import PoolBroken
from .metrics import Metrics
from .pool import ManagerLost
from .quarantine import Quarantine

log = logging.getLogger(__name__)

BATCH_LIMIT = 200  # events applied in one transaction (bounds how long a POST may wait)


@dataclass
class _Submit:
    job_id: str
    urls: Sequence[str]
    future: Future


@dataclass
class _Stop:
    grace: float
    immediate: bool


@dataclass
class _Respawn:
    worker: int


class Dispatcher:
    """Assigns queued URLs to free worker slots and records what comes back."""

    def __init__(self, *, writer, pool, config, metrics=None, on_fatal=None):
        self.writer = writer
        self.pool = pool
        self.metrics = metrics or Metrics()
        self.slots = config.workers.uploads_per_process
        self.max_attempts = config.imgur.max_attempts
        self.host = config.resolved_image_host
        self.on_fatal = on_fatal or (lambda reason: None)
        self.events: "queue.Queue[object]" = queue.Queue()
        self.assigned: Dict[int, Dict[int, Task]] = {}
        self.quick_deaths: Dict[int, int] = {}
        self.stopping: Optional[float] = None  # deadline of the graceful stop
        self.stopped = threading.Event()
        self.progress: Dict[int, tuple] = {}  # url id -> (bytes received, total), in memory only
        self.ready: Dict[int, int] = {}  # worker -> generation that said it is ready
        self.quarantine = Quarantine()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    # -- called from other threads ---------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread.start()
        self.post(None)  # first turn: dispatch whatever is queued

    def recover(self) -> None:
        """Queue again what a previous run left in flight: nothing is in flight before we start."""
        with self.writer.transaction():
            handed_back, failed = self.writer.hand_back_in_flight(
                max_attempts=self.max_attempts, when=jobs.now())
        if handed_back:
            log.info("handed back %d URLs left in flight by the previous run", handed_back)
        for url_id, job_id, url, attempts, reason in failed:
            self._died_with(job_id, url, reason, attempts, "service_died")
        self.assigned = {index: {} for index in self.pool.workers}

    def post(self, event) -> None:
        """Thread-safe: queue an event for the dispatcher."""
        self.events.put(event)

    def submit(self, job_id: str, urls: Sequence[str]) -> Future:
        """Create a job; the future resolves once it is committed."""
        future: Future = Future()
        self.post(_Submit(job_id, urls, future))
        return future

    def stop(self, grace: float, immediate: bool = False) -> None:
        self.post(_Stop(grace, immediate))

    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in list(self.assigned.values()))

    def ready_workers(self) -> int:
        """Worker processes alive and past their start-up (their slots take tasks)."""
        return sum(1 for index, handle in list(self.pool.workers.items())
                   if handle.process.is_alive() and self.ready.get(index) == handle.generation)

    # -- the actor -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                batch = self._next_batch()
                self._turn(batch)
        except PoolBroken as exc:
            self._finish(fatal=f"multiprocessing manager lost ({exc})")
        except Exception:
            log.exception("dispatcher failed")
            self._finish(fatal="dispatcher failed; see the traceback above")

    def _next_batch(self) -> List[object]:
        timeout = None if self.stopping is None else max(0.0, self.stopping - time.monotonic())
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < BATCH_LIMIT:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        return batch

    def _turn(self, batch: List[object]) -> None:
        submits = [event for event in batch if isinstance(event, _Submit)]
        if submits:  # commit new jobs first, in a small transaction: a POST waits for it
            self._create_jobs(submits)
            batch = [event for event in batch if not isinstance(event, _Submit)]
        sends: Dict[int, List[Task]] = {}
        lost: Optional[str] = None
        with self.writer.transaction():
            for event in batch:
                if isinstance(event, Result):
                    self._on_result(event)
                elif isinstance(event, Attempt):
                    self._on_attempt(event)
                elif isinstance(event, Waiting):
                    self.writer.set_waiting(event.url_id, event.until, event.reason)
                    if event.until is not None:
                        self.metrics.waiting()
                elif isinstance(event, Progress):
                    self.progress[event.url_id] = (event.received, event.total)
                elif isinstance(event, Ready):
                    self.ready[event.worker] = event.generation
                elif isinstance(event, WorkerExited):
                    self._on_worker_exited(event)
                elif isinstance(event, _Respawn):
                    self._respawn(event.worker)
                elif isinstance(event, _Stop):
                    self._on_stop(event)
                elif isinstance(event, ManagerLost):
                    lost = event.reason
            if lost is None and self.stopping is None:
                sends = self._fill_slots()
        if lost is not None:
            self._finish(fatal=f"multiprocessing manager lost ({lost})")
            return
        for index, tasks in sends.items():
            self.pool.send(index, tasks)
        if self.stopping is not None and (self.in_flight() == 0 or time.monotonic() >= self.stopping):
            self._finish()

    def _create_jobs(self, submits: List[_Submit]) -> None:
        """Store new jobs and answer their submitters once committed."""
        created = []
        try:
            with self.writer.transaction():
                for event in submits:
                    try:
                        self.writer.create_job(event.job_id, event.urls, jobs.now())
                    except Exception as exc:  # one bad job must not stop the service
                        log.exception("could not store job %s", event.job_id)
                        event.future.set_exception(exc)
                        continue
                    created.append(event)
        except Exception as exc:  # the commit itself failed (disk full, ...)
            for event in created:
                event.future.set_exception(exc)
            raise
        for event in created:  # committed: now the job exists for everyone
            self.metrics.job_submitted(len(event.urls))
            event.future.set_result(None)

    def _fill_slots(self) -> Dict[int, List[Task]]:
        """Mark queued URLs in flight for every free slot; returns each worker's batch to send."""
        load = {i: len(tasks) for i, tasks in self.assigned.items()
                if i in self.pool.workers and self.pool.workers[i].process.is_alive()}
        free, solitary = self.quarantine.plan({i: self.slots - n for i, n in load.items()}, load)
        sends: Dict[int, List[Task]] = {}
        if solitary is not None:
            url_id, index = solitary
            task = self.writer.take_url(url_id)
            if task is None:  # no longer queued (finished meanwhile)
                self.quarantine.finished(url_id)
            else:
                self.quarantine.started(url_id, index)
                self.assigned[index][task.url_id] = task
                sends[index] = [task]
        free = {i: n for i, n in free.items() if n > 0}
        if not free:
            return sends
        for task in self.writer.take_queued(sum(free.values()), exclude=self.quarantine.queued):
            index = max(free, key=free.get)  # least loaded worker first
            free[index] -= 1
            self.assigned[index][task.url_id] = task
            sends.setdefault(index, []).append(task)
        return sends

    def _on_result(self, result: Result) -> None:
        task = self.assigned.get(result.worker, {}).pop(result.url_id, None)
        self.progress.pop(result.url_id, None)
        self.quarantine.finished(result.url_id)
        recorded = self.writer.finish(
            result.url_id, result.state, attempts=result.attempts, link=result.link,
            reason=result.reason, sha256=result.sha256, reused=result.reused, host=self.host,
            when=jobs.now(),
        )
        if not recorded:
            log.info("ignored a second result for URL #%d (%s)", result.url_id, result.state)
            return
        self.metrics.result(result)
        if task is not None:
            log_outcome(task.job_id, task.url, result.state, link=result.link,
                        reason=result.reason, attempts=result.attempts, seconds=result.seconds,
                        reused=result.reused)

    def _on_attempt(self, event: Attempt) -> None:
        tasks = self.assigned.get(event.worker, {})
        if event.url_id in tasks:
            tasks[event.url_id] = replace(tasks[event.url_id], attempt=event.attempt)
        self.writer.set_attempts(event.url_id, event.attempt)

    def _on_worker_exited(self, event: WorkerExited) -> None:
        handle = self.pool.workers.get(event.worker)
        if handle is None or handle.generation != event.generation:
            return
        orphans = self.assigned[event.worker]
        self.assigned[event.worker] = {}
        self.pool.release_claims(event.worker, event.generation)
        if self.stopping is None:
            log.error("worker %d died (exit code %s) with %d URLs in flight",
                      event.worker, event.exitcode, len(orphans))
            self.metrics.worker_died()
        handed_back = []
        for task in orphans.values():
            self.progress.pop(task.url_id, None)
            if self.stopping is None and task.attempt >= self.max_attempts:
                self.quarantine.finished(task.url_id)
                reason = (f"worker died while uploading (exit code {event.exitcode}) "
                          f"on attempt {task.attempt} of {self.max_attempts}")
                self.writer.finish(task.url_id, jobs.FAILED, attempts=task.attempt,
                                   reason=reason, when=jobs.now())
                self._died_with(task.job_id, task.url, reason, task.attempt, "worker_died")
            else:
                self.writer.requeue(task.url_id)
                handed_back.append(task.url_id)
        if self.stopping is None:
            self.quarantine.crashed(handed_back, crowd=len(orphans) > 1)
            self._schedule_respawn(event.worker, handle)

    def _died_with(self, job_id, url, reason, attempts, failure_class) -> None:
        """Count and log a URL failed by the dispatcher itself (no worker reported it)."""
        self.metrics.failed(failure_class)
        log_outcome(job_id, url, jobs.FAILED, reason=reason, attempts=attempts)

    def _schedule_respawn(self, index: int, handle) -> None:
        """Respawn at once, unless this worker keeps dying young (then back off, up to 30 s)."""
        lived = time.monotonic() - handle.started
        self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if lived < 2.0 else 0
        delay = 0.0 if self.quick_deaths[index] < 3 else min(30.0, 0.5 * 2 ** self.quick_deaths[index])
        if delay == 0:
            self._respawn(index)
        else:
            log.error("worker %d keeps dying; next start in %.0f s", index, delay)
            timer = threading.Timer(delay, self.post, args=(_Respawn(index),))
            timer.daemon = True
            timer.start()

    def _respawn(self, index: int) -> None:
        if self.stopping is None:
            self.pool.spawn(index)
            self.assigned[index] = {}

    def _on_stop(self, event: _Stop) -> None:
        if self.stopping is None:
            log.info("stopping: %d URLs in flight, up to %.1f s to finish them",
                     self.in_flight(), event.grace)
            self.stopping = time.monotonic() + event.grace
            self.pool.ask_workers_to_stop()
        if event.immediate:
            self.stopping = time.monotonic()

    def _finish(self, fatal: Optional[str] = None) -> None:
        """Hand back whatever is still in flight, commit, stop the processes."""
        leftover = [task for tasks in self.assigned.values() for task in tasks.values()]
        try:
            with self.writer.transaction():
                for task in leftover:
                    self.writer.requeue(task.url_id, refund=True)  # we cut it short, not the URL
        except Exception:
            log.exception("could not hand back %d in-flight URLs", len(leftover))
        if leftover:
            log.info("handed back %d unfinished URLs; they resume on the next start", len(leftover))
        for tasks in self.assigned.values():
            tasks.clear()
        self.pool.terminate()
        if fatal:
            log.error("%s; exiting so a supervisor can restart the service", fatal)
            self.on_fatal(fatal)
        self.stopped.set()


def log_outcome(job_id, url, state, *, link=None, reason=None, attempts=0, seconds=None,
                reused=False) -> None:
    """The one log line per URL outcome (fields also go to JSON logs as keys)."""
    outcome = "reused" if reused else state
    detail = link if state == jobs.COMPLETE else reason
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    log.info("job %s: %s %s: %s (attempts %d%s)", job_id, url, outcome, detail, attempts, took,
             extra={"job_id": job_id, "url": url, "outcome": outcome, "link": link,
                    "reason": reason, "attempts": attempts, "duration": seconds})
