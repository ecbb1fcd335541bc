"""The dispatcher: one thread per instance that owns its writes and its workers' work.

    POST handler --submit------------> events --+
    handlers, courier --call(fn)-----> events --+
    result reader (worker reports) --> events --+--> dispatcher thread --> store (a commit a turn)
    store listener (work elsewhere) -> events --+          |
                                                          +--> pool.send(worker, tasks)

It is an actor: everything reaches it as an event on one in-process queue, and it alone
decides what this instance has in flight where. Each turn commits new jobs first, in a
small transaction of their own (a POST waits for it), and runs each call (a cancel, a
deletion, the courier's claims) in one of its own; then it applies every other event,
claims queued URLs for free worker slots, and commits all of it in ONE transaction. Only
then does anything happen outside: tasks are sent, metrics counted, outcomes logged. A
turn works on a copy of the dispatcher's state, kept only once the commit succeeded, so a
turn that fails (the database is down, or lost a race with another instance) is simply
run again later, and nothing is visible or in flight before it is durable.

The parts of a turn live beside it: ``slots`` fills the workers' slots (with quarantine)
and records results; ``recovery`` takes back what a death left in flight, and keeps the
lease the store asks for (its ``upkeep``); ``waits`` writes the turn's notes of URLs
waiting for the host together; ``observers`` count and log what committed. A stop
drains in-flight work within a grace period and hands back the rest (``_finish``).
"""
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

from .errors import PoolBroken, QueueFull, StoreConflict, StoreUnavailable
from .jobs import Attempt, Progress, Ready, Refused, Result, Task, Waiting, WorkerExited
from .metrics import Metrics
from .observers import observers_for
from .pool import ManagerLost
from .quarantine import Quarantine
from .recovery import Respawn, WorkerDeaths, upkeep_for
from .slots import Lookout, Slots
from .waits import WaitNotes

log = logging.getLogger(__name__)

BATCH_LIMIT = 200  # events applied in one transaction (bounds how long a POST may wait)
# A clustered store: a turn of workers' reports only, with fewer results than this, waits
# up to this long for more (a paced host's come one by one; a turn is five statements or so).
LINGER_RESULTS, LINGER_SECONDS = 16, 0.1
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0)  # between turns while the store is unreachable: capped,
# so that a long outage ends for us within seconds of the store's return


@dataclass
class _Submit:
    job_id: str
    urls: Sequence[str]
    future: Future
    options: dict = field(default_factory=dict)  # account, retry_of, callback_url


@dataclass
class _Call:
    """Run ``fn(store)`` in a transaction of its own on the dispatcher's thread (the one
    writer); ``future`` gets its result or its exception."""

    fn: Callable
    future: Future


@dataclass
class _Stop:
    grace: float
    immediate: bool


class _Wake:
    """Work may be waiting in the store (another instance added it, or a poll is due)."""


@dataclass
class _State:
    """Everything a turn may change, copied at its start and kept only if it commits."""

    assigned: Dict[int, Dict[int, Task]]  # worker -> url id -> task in flight there
    ready: Dict[int, int] = field(default_factory=dict)  # worker -> generation that is ready
    quick_deaths: Dict[int, int] = field(default_factory=dict)
    quarantine: Quarantine = field(default_factory=Quarantine)
    stopping: Optional[float] = None  # deadline of the graceful stop
    lost: Optional[str] = None  # why the manager is gone
    host_full: Dict[int, str] = field(default_factory=dict)  # url id -> why it waits for room
    waits_shown: Dict[int, int] = field(default_factory=dict)  # url id -> lease: see WaitNotes

    def copy(self) -> "_State":
        return _State({w: dict(t) for w, t in self.assigned.items()}, dict(self.ready),
                      dict(self.quick_deaths), self.quarantine.copy(), self.stopping, self.lost,
                      dict(self.host_full), dict(self.waits_shown))

    def task(self, url_id: int) -> Optional[Task]:
        for tasks in self.assigned.values():
            if url_id in tasks:
                return tasks[url_id]
        return None


class Dispatcher:
    """Claims queued URLs for free worker slots and records what comes back."""

    def __init__(self, *, store, pool, per_worker: int, max_attempts: int, max_queued: int,
                 host: str, poll_seconds: float, metrics=None, on_fatal=None, on_outbox=None):
        """``per_worker``: the URLs a worker holds (its upload slots' and those it gets
        ready); ``max_queued``: a key's queued URLs at most (0: no cap); ``host``: the
        image host results are recorded for; ``poll_seconds``: see ``recovery.Leased``."""
        self.store = store
        self.pool = pool
        self.observe = observers_for(metrics or Metrics())
        self.max_queued = max_queued
        self.on_fatal = on_fatal or (lambda reason: None)
        self.on_outbox = on_outbox or (lambda: None)  # a commit added effects to carry out
        self.lookout = Lookout()  # whether a claim is worth its statements
        self.linger_seconds = LINGER_SECONDS if store.clustered else 0.0
        self.slots = Slots(store=store, pool=pool, per_worker=per_worker, host=host,
                           lookout=self.lookout, observe=self.observe)
        self.upkeep = upkeep_for(store, max_attempts=max_attempts, poll_seconds=poll_seconds,
                                 lookout=self.lookout, observe=self.observe)
        self.deaths = WorkerDeaths(store=store, pool=pool, max_attempts=max_attempts,
                                   lookout=self.lookout, observe=self.observe, post=self.post)
        self.events: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self.state = _State(assigned={})
        self.stopped = threading.Event()
        self.store_problem: Optional[str] = None  # why the last turn could not commit
        self._store_error = StoreUnavailable  # its kind (StoreFull: the disk is full)
        self._refused: Dict[int, Refused] = {}  # worker -> PostgreSQL refuses its connections
        self._held: List[object] = []  # events of a turn that could not commit, to run again
        self._retry_at: Optional[float] = None
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    # -- called from other threads ---------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread.start()
        self.post(_Wake())  # first turn: dispatch whatever is queued

    def recover(self) -> None:
        """Take back what a previous run left in flight, as the store's upkeep says."""
        self.upkeep.at_start()
        self.state = _State(assigned={index: {} for index in self.pool.workers})

    def post(self, event) -> None:
        """Thread-safe: queue an event for the dispatcher."""
        self.events.put(event)

    def wake(self) -> None:
        self.post(_Wake())

    def submit(self, job_id: str, urls: Sequence[str], **options) -> Future:
        """Create a job (``options``: ``account``, ``retry_of``, ``callback_url``); the
        future resolves once it is committed (or fails: StoreUnavailable)."""
        future: Future = Future()
        self.post(_Submit(job_id, urls, future, options))
        return future

    def call(self, fn: Callable) -> Future:
        """Run ``fn(store)`` in a transaction on the writer's thread; a future of its result."""
        future: Future = Future()
        self.post(_Call(fn, future))
        return future

    def stop(self, grace: float, immediate: bool = False) -> None:
        self.post(_Stop(grace, immediate))

    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in list(self.state.assigned.values()))

    def host_full(self) -> Optional[str]:
        """Why the image host has no room, while URLs in flight here wait for it (/healthz)."""
        waiting = self.state.host_full
        if not waiting:
            return None
        reason = next(iter(waiting.values()))
        return f"{reason} ({len(waiting)} URL{'' if len(waiting) == 1 else 's'} waiting)"

    def refused_workers(self) -> List[str]:
        """Why PostgreSQL refuses connections of live workers (``store.refusals``)."""
        live = {index: handle.generation for index, handle in list(self.pool.workers.items())}
        return [f"worker {event.worker}: {event.reason}" for event in list(self._refused.values())
                if event.reason and live.get(event.worker) == event.generation]

    def ready_workers(self) -> int:
        """Worker processes alive and past their start-up (their slots take tasks)."""
        ready = self.state.ready
        return sum(1 for index, handle in list(self.pool.workers.items())
                   if handle.process.is_alive() and ready.get(index) == handle.generation)

    # -- the actor -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                self._turn(self._next_batch())
        except PoolBroken as exc:
            self._finish(self.state, fatal=f"multiprocessing manager lost ({exc})")
        except Exception:
            log.exception("dispatcher failed")
            self._finish(self.state, fatal="dispatcher failed; see the traceback above")

    def _next_batch(self) -> List[object]:
        batch, self._held = self._held, []
        timeout = 0 if batch and self._retry_at is None else self._wait_seconds()
        try:
            batch.append(self.events.get(timeout=timeout))
        except queue.Empty:
            pass
        while len(batch) < BATCH_LIMIT:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        until = time.monotonic() + self.linger_seconds
        while self.linger_seconds and 0 < len(batch) < BATCH_LIMIT and all(
                isinstance(e, (Result, Attempt, Waiting, Progress)) for e in batch) and sum(
                isinstance(e, Result) for e in batch) < LINGER_RESULTS:
            try:
                batch.append(self.events.get(timeout=max(0.0, until - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _wait_seconds(self) -> Optional[float]:
        """How long the queue may keep us waiting: until the next duty, retry or deadline."""
        moments = [m for m in (self._retry_at, self.state.stopping) if m is not None]
        moments += self.upkeep.moments(self.slots.free(self.state))
        return None if not moments else max(0.0, min(moments) - time.monotonic())

    def _turn(self, batch: List[object]) -> None:
        submits = [event for event in batch if isinstance(event, _Submit)]
        if submits:
            self._create_jobs(submits)
        for call in (event for event in batch if isinstance(event, _Call)):
            self._run_call(call)
        for refused in (event for event in batch if isinstance(event, Refused)):
            self._refused[refused.worker] = refused  # heard even while the store is away
        if submits:  # work added here (a retry is a job too); a call queues none (a cancel,
            self.lookout.work_added()  # a deletion, the courier's look for effects)
        batch = [event for event in batch if not isinstance(event, (_Submit, _Call, Refused))]
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            self._held = batch  # the store was unreachable a moment ago: wait a little more
            return
        for tries in range(3):
            try:
                self._apply(batch)
                self._store_ok()
                return
            except StoreConflict as exc:  # lost a race with another instance: again, at once
                log.info("turn lost a race (%s); running it again", exc)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                self._held = batch
                return
        self._held = batch

    def _apply(self, batch: List[object]) -> None:
        """One turn: every event and slot refill on a copy of the state, committed at once;
        then the effects outside the store, in order."""
        now = time.monotonic()
        if not batch and self._nothing_queued(now):
            self.upkeep.schedule(now, looked=True)  # polled: the next poll a poll's wait away
            return
        state, effects = self.state.copy(), []
        told = self.upkeep.poll_due(now) or any(isinstance(event, _Wake) for event in batch)
        self.lookout.begin(told)  # what the claim finds is kept once the turn commits (settle)
        drained, ask_suspects = self.lookout.drained, self.lookout.ask_suspects
        waits = WaitNotes(state.waits_shown)  # written once the events are applied, together
        with self.store.transaction():
            self.upkeep.duties(effects, now)
            finishing = []  # the turn's results: slots freed in order, recorded together
            for event in batch:
                if isinstance(event, Result):
                    self.slots.take(state, event, finishing)
                elif isinstance(event, Waiting):
                    self._waiting(state, effects, waits, event)
                else:
                    self._apply_event(state, effects, event)
            waits.write(self.store, state.task)  # (a store may write them with the results)
            self.slots.record(effects, finishing)
            if state.lost or state.stopping is not None:
                sends = {}
            else:
                sends, drained, ask_suspects = self.slots.fill(state)
        if state.host_full:  # only URLs still in flight here wait
            state.host_full = {u: why for u, why in state.host_full.items() if state.task(u)}
        self.state = state
        self.upkeep.schedule(now, looked=self.lookout.look)
        self.lookout.settle(drained, ask_suspects)
        self._outbox_news()
        for effect in effects:
            try:
                effect()
            except PoolBroken:
                raise
            except Exception:  # an effect is logging, metrics or a courtesy to the pool
                log.exception("after a turn: %r failed", effect)
        if state.lost is not None:
            self._finish(state, fatal=f"multiprocessing manager lost ({state.lost})")
            return
        for index, tasks in sends.items():
            self.pool.send(index, tasks)
        if state.stopping is not None and (
                self.in_flight() == 0 or time.monotonic() >= state.stopping):
            self._finish(state)

    def _nothing_queued(self, now: float) -> bool:
        """Only a poll is due, of a queue found drained, and nothing is queued anywhere: a
        statement instead of a turn that claims (four, for nothing)."""
        return (self.lookout.drained and self.state.stopping is None
                and self.upkeep.only_poll_due(now) and not self.store.work_queued())

    def _apply_event(self, state: _State, effects: list, event) -> None:
        if isinstance(event, Attempt):
            task = state.assigned.get(event.worker, {}).get(event.url_id)
            if task is not None:
                state.assigned[event.worker][event.url_id] = replace(task, attempt=event.attempt)
                self.store.set_attempts(task, event.attempt)
        elif isinstance(event, Progress):
            task = state.task(event.url_id)
            if task is not None:
                self.store.set_progress(task, event.received, event.total)
        elif isinstance(event, Ready):
            state.ready[event.worker] = event.generation
        elif isinstance(event, WorkerExited):
            self.deaths.exited(state, effects, event)
        elif isinstance(event, Respawn):
            self.deaths.respawn(state, effects, event)
        elif isinstance(event, _Stop):
            self._on_stop(state, effects, event)
        elif isinstance(event, ManagerLost):
            state.lost = event.reason

    def _waiting(self, state: _State, effects: list, waits: WaitNotes, event: Waiting) -> None:
        task = state.task(event.url_id)
        if task is None:
            return
        waits.note(task, event.until, event.reason)
        if event.host_full and event.until is not None:
            state.host_full[event.url_id] = event.reason
        else:
            state.host_full.pop(event.url_id, None)
            if event.until is not None:
                effects.append(lambda u=event.url_id: self.observe.emit("url_waiting", u))

    def _store_ok(self) -> None:
        if self.store_problem is not None:
            log.info("the store is reachable again")
            self.upkeep.reconnected(time.monotonic())
        self.store_problem, self._retry_at, self._failures = None, None, 0

    def _store_failed(self, exc: Exception) -> None:
        if self.store_problem is None:
            log.error("the store is unreachable (%s); holding results and retrying", exc)
        self.store_problem = str(exc)
        self._store_error = type(exc)
        delay = RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay

    def _run_call(self, call: _Call) -> None:
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            call.future.set_exception(self._store_error(self.store_problem or "store down"))
            return
        try:
            with self.store.transaction():
                result = call.fn(self.store)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                self._store_failed(exc)
            call.future.set_exception(exc)
            return
        self._store_ok()
        self._outbox_news()
        call.future.set_result(result)

    def _outbox_news(self) -> None:
        """A commit added effects for the outbox: the courier should look."""
        if self.store.outbox_added:
            self.store.outbox_added = False
            self.on_outbox()

    def _create_jobs(self, submits: List[_Submit]) -> None:
        """Store new jobs and answer their submitters once committed."""
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            for event in submits:  # the store was unreachable a moment ago: say so at once
                event.future.set_exception(self._store_error(self.store_problem or "store down"))
            return
        created = []
        try:
            with self.store.transaction():
                for event in submits:
                    try:
                        self.store.create_job(event.job_id, event.urls,
                                              max_queued=self.max_queued, **event.options)
                    except (StoreUnavailable, StoreConflict):
                        raise
                    except QueueFull as exc:  # an answer (429), not a fault
                        event.future.set_exception(exc)
                        continue
                    except Exception as exc:  # one bad job must not stop the service
                        log.exception("could not store job %s", event.job_id)
                        event.future.set_exception(exc)
                        continue
                    created.append(event)
        except Exception as exc:  # the commit itself failed (database down, disk full, ...)
            if isinstance(exc, StoreUnavailable):
                self._store_failed(exc)
            for event in submits:
                if not event.future.done():
                    event.future.set_exception(exc)
            return
        self._store_ok()
        for event in created:  # committed: now the job exists for everyone
            self.observe.emit("job_created", event.job_id, event.urls)
            event.future.set_result(None)

    def _on_stop(self, state: _State, effects: list, event: _Stop) -> None:
        if state.stopping is None:
            in_flight = sum(len(tasks) for tasks in state.assigned.values())
            log.info("stopping: %d URLs in flight, up to %.1f s to finish them",
                     in_flight, event.grace)
            state.stopping = time.monotonic() + event.grace
            effects.append(self.pool.ask_workers_to_stop)
        if event.immediate:
            state.stopping = time.monotonic()

    def _finish(self, state: _State, fatal: Optional[str] = None) -> None:
        """Hand back whatever is still in flight, commit, stop the processes."""
        leftover = [task for tasks in state.assigned.values() for task in tasks.values()]
        try:
            with self.store.transaction():
                for task in leftover:
                    self.store.requeue(task, refund=True)  # we cut it short, not the URL
            if leftover:
                log.info("handed back %d unfinished URLs; they resume on the next start "
                         "(or on another instance)", len(leftover))
        except Exception as exc:
            log.error("could not hand back %d in-flight URLs (%s); they are taken back when "
                      "their lease runs out", len(leftover), exc)
        self.state = replace(state, assigned={index: {} for index in state.assigned})
        self.pool.terminate()
        if fatal:
            log.error("%s; exiting so a supervisor can restart the service", fatal)
            self.on_fatal(fatal)
        self.stopped.set()

