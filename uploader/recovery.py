"""Recovery: taking back what a death left in flight, and telling others we still live.

A worker's death hands its in-flight URLs back (or fails those that used every attempt);
when it had several, each becomes a suspect that runs alone (``quarantine``). The worker
is started again at once, unless it keeps dying young (``WorkerDeaths``).

An instance's own death is the store's to tell, and the store says how (``upkeep_for``):

- a store that is this instance's alone (embedded SQLite: its lock keeps any other
  instance out; ``store.clustered`` is false) takes back, at the start, whatever a
  previous run left in flight (``Alone``);
- a store shared by instances (PostgreSQL; ``store.lease_seconds``) holds a lease for
  each: every turn renews ours when due, takes back URLs of instances whose lease ran
  out (``store.reap``) and polls for work in case a notification was missed (``Leased``).
"""
import logging
import threading
import time
from dataclasses import dataclass

from . import jobs
from .worker import SHARED_STATE_LOST

log = logging.getLogger("uploader.dispatcher")  # the log lines keep their logger's name


@dataclass
class Respawn:
    """Start worker ``worker`` again (its back-off ran out)."""

    worker: int


def upkeep_for(store, *, max_attempts: int, poll_seconds: float, lookout, observe):
    """The upkeep the store asks for: ``Leased`` when other instances share it (it keeps
    leases), else ``Alone``."""
    if not store.clustered:
        return Alone(store, max_attempts=max_attempts, observe=observe)
    return Leased(store, max_attempts=max_attempts, poll_seconds=poll_seconds,
                  lookout=lookout, observe=observe)


def count_deaths(observe, failed) -> None:
    """URLs ``store.reap`` failed: each used every attempt, each cut short by a death."""
    for url_id, job_id, url, attempts, reason in failed:
        observe.emit("url_failed", job_id, url, reason, attempts, "service_died")


class Alone:
    """The store is this instance's alone: no lease, no one else adding work."""

    def __init__(self, store, *, max_attempts: int, observe):
        self.store = store
        self.max_attempts = max_attempts
        self.observe = observe

    def at_start(self) -> None:
        """Take back what a previous run left in flight (no other instance can be running)."""
        with self.store.transaction():
            requeued, failed = self.store.reap(self.max_attempts)
        if requeued:
            log.info("handed back %d URLs left in flight by the previous run", requeued)
        count_deaths(self.observe, failed)

    def moments(self, free_slots: int) -> list:
        """When a turn is due for this upkeep's sake: never."""
        return []

    def poll_due(self, now: float) -> bool:
        """Whether to look at the queue as if told of work: always (it is ours alone)."""
        return True

    def only_poll_due(self, now: float) -> bool:
        """Whether a poll is all that is due now: never (it has no polls)."""
        return False

    def reconnected(self, now: float) -> None:
        pass

    def duties(self, effects: list, now: float) -> None:
        pass

    def schedule(self, now: float, looked: bool) -> None:
        pass


class Leased:
    """The store is shared: renew our lease, take back what dead instances held, poll."""

    def __init__(self, store, *, max_attempts: int, poll_seconds: float, lookout, observe):
        self.store = store
        self.max_attempts = max_attempts
        self.lease_seconds = store.lease_seconds
        self.poll_seconds = poll_seconds
        self.lookout = lookout
        self.observe = observe
        self.connected_since = time.monotonic()  # (``reconnected``)
        self.next_heartbeat = self.next_reap = self.next_poll = 0.0

    def at_start(self) -> None:
        """Nothing: dead instances are found by the turns (``duties``)."""

    def moments(self, free_slots: int) -> list:
        """When a turn is due: to renew the lease, to reap, and (with a free slot) to poll."""
        return [self.next_heartbeat, self.next_reap] + ([self.next_poll] if free_slots else [])

    def poll_due(self, now: float) -> bool:
        return now >= self.next_poll

    def only_poll_due(self, now: float) -> bool:
        """A poll is due, and no duty (a heartbeat, a reap)."""
        return self.next_poll <= now < min(self.next_heartbeat, self.next_reap)

    def reconnected(self, now: float) -> None:
        """The store is reachable again after an outage: a whole lease before reaping."""
        self.connected_since = now

    def duties(self, effects: list, now: float) -> None:
        """Renew our lease, and take back what dead instances held."""
        if now >= self.next_heartbeat and not self.store.heartbeat():
            log.warning("this instance's lease had expired (no heartbeat for over %.0f s): "
                        "other instances took back the URLs it held; their results here "
                        "will be refused", self.lease_seconds)
        # Only once we have been connected for a whole lease: after an outage everyone's
        # heartbeat is old, and the others must get the chance to renew theirs first.
        if now >= self.next_reap and now - self.connected_since >= self.lease_seconds:
            requeued, failed = self.store.reap(self.max_attempts)
            if requeued:
                log.info("took back %d URLs that dead instances held", requeued)
                self.lookout.handed_back()
            if failed:
                effects.append(lambda: count_deaths(self.observe, failed))

    def schedule(self, now: float, looked: bool) -> None:
        """A turn committed at ``now``: when the next duties and poll are due."""
        period = self.lease_seconds / 3
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + period
        if now >= self.next_reap:
            self.next_reap = now + period
        if looked:  # looked for work: the next poll is due a poll's wait from now
            self.next_poll = now + self.poll_seconds


class WorkerDeaths:
    """A worker died: hand back (or fail) its URLs, and start it again."""

    def __init__(self, *, store, pool, max_attempts: int, lookout, observe, post):
        self.store = store
        self.pool = pool
        self.max_attempts = max_attempts
        self.lookout = lookout
        self.observe = observe
        self.post = post  # queues an event for the dispatcher (a ``Respawn`` later)

    def exited(self, state, effects: list, event: jobs.WorkerExited) -> None:
        handle = self.pool.workers.get(event.worker)
        if handle is None or handle.generation != event.generation:
            return
        if event.exitcode == SHARED_STATE_LOST:  # as if the manager's death were seen here:
            state.lost = state.lost or f"worker {event.worker} lost its connection to it"
            return  # its URLs stay in flight, handed back unfailed by the stop (``_finish``)
        orphans = state.assigned.get(event.worker, {})
        state.assigned[event.worker] = {}
        effects.append(lambda: self.pool.release_claims(event.worker, event.generation))
        if state.stopping is None:
            log.error("worker %d died (exit code %s) with %d URLs in flight",
                      event.worker, event.exitcode, len(orphans))
            effects.append(lambda: self.observe.emit("worker_died", event.worker))
        crowd = len(orphans) > 1
        for task in orphans.values():
            state.quarantine.finished(task.url_id)
            if state.stopping is None and task.attempt >= self.max_attempts:
                reason = (f"worker died while uploading (exit code {event.exitcode}) "
                          f"on attempt {task.attempt} of {self.max_attempts}")
                if self.store.finish(task, jobs.FAILED, attempts=task.attempt, reason=reason):
                    effects.append(lambda t=task, r=reason: self.observe.emit(
                        "url_failed", t.job_id, t.url, r, t.attempt, "worker_died"))
            else:
                self.store.requeue(task, suspect=state.stopping is None and (crowd or task.suspect))
                self.lookout.handed_back()  # back in the queue: maybe a suspect
        if state.stopping is None:
            self._schedule_respawn(state, effects, event.worker, handle)

    def respawn(self, state, effects: list, event: Respawn) -> None:
        if state.stopping is None:
            state.assigned[event.worker] = {}
            effects.append(lambda: self.pool.spawn(event.worker))

    def _schedule_respawn(self, state, effects: list, index: int, handle) -> None:
        """Respawn at once, unless this worker keeps dying young (then back off, up to 30 s)."""
        lived = time.monotonic() - handle.started
        deaths = state.quick_deaths[index] = (state.quick_deaths.get(index, 0) + 1
                                              if lived < 2.0 else 0)
        delay = 0.0 if deaths < 3 else min(30.0, 0.5 * 2 ** deaths)
        if delay == 0:
            effects.append(lambda: self.pool.spawn(index))
            return
        log.error("worker %d keeps dying; next start in %.0f s", index, delay)

        def later():
            timer = threading.Timer(delay, self.post, args=(Respawn(index),))
            timer.daemon = True
            timer.start()

        effects.append(later)
