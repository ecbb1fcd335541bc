"""Filling the workers' slots with queued URLs, and emptying them as results come.

A worker holds the URLs its upload slots upload and those it gets ready for them. Each
turn claims queued URLs for every free slot, least loaded worker first; a suspect (see
``quarantine``) is claimed for the worker kept free for it, and runs there alone.

A claim that finds nothing is statements for nothing, so the ``Lookout`` remembers when
the queue was found drained and looks again only once there may be work (see there).
"""
import logging
from dataclasses import dataclass
from typing import Dict, List

from .jobs import Result, Task

log = logging.getLogger("uploader.dispatcher")  # the log lines keep their logger's name


@dataclass
class Lookout:
    """Whether this turn's claim is worth its statements.

    The queue is *drained* once a claim took nothing with no suspect waiting; turns then
    claim again only once told of work (a notification, a poll due: the upkeep's
    ``poll_due``) or having added some (a job, a call, a URL handed back). Whether a
    suspect waits is asked again only after such news, or while the last answer was
    yes: a suspect is queued only by a requeue (here, or elsewhere: then a notification
    tells, or the next poll)."""

    drained: bool = False  # the last claim found nothing to take and no suspect waiting
    look: bool = True  # this turn may find work: claim
    ask_suspects: bool = True  # ask whether a suspect waits

    def begin(self, told: bool) -> None:
        """A turn starts; ``told``: news of work came from elsewhere (or a poll is due)."""
        self.look = not self.drained or told
        self.ask_suspects = self.ask_suspects or told

    def work_added(self) -> None:
        """This instance added work (or may have: a retry, a cancel)."""
        self.drained = False
        self.ask_suspects = True

    def handed_back(self) -> None:
        """URLs went back to the queue, maybe as suspects: look at it this turn."""
        self.look = self.ask_suspects = True

    def settle(self, drained: bool, ask_suspects: bool) -> None:
        """What this turn's claim found, kept once the turn committed."""
        self.drained, self.ask_suspects = drained, ask_suspects


class Slots:
    """Claims queued URLs for free slots (``fill``) and records results (``take``, then
    ``record``)."""

    def __init__(self, *, store, pool, per_worker: int, host: str, lookout: Lookout,
                 observe):
        self.store = store
        self.pool = pool
        self.per_worker = per_worker
        self.host = host
        self.lookout = lookout
        self.observe = observe

    def free(self, state) -> int:
        return sum(max(0, self.per_worker - len(tasks)) for tasks in state.assigned.values())

    def fill(self, state):
        """Claim queued URLs for every free slot; returns each worker's batch to send,
        whether the queue was found drained (nothing taken, no suspect waiting) and
        whether to ask for suspects next time. A drained queue is not looked at again
        until this turn may find work."""
        lookout = self.lookout
        load = {i: len(tasks) for i, tasks in state.assigned.items()
                if i in self.pool.workers and self.pool.workers[i].process.is_alive()}
        free = {i: self.per_worker - n for i, n in load.items()}
        if not any(n > 0 for n in free.values()) or not lookout.look:
            # work told of stays to be looked for
            return {}, lookout.drained and not lookout.look, lookout.ask_suspects
        waiting = self.store.suspects_waiting() if lookout.ask_suspects else False
        free, suspect_worker = state.quarantine.plan(free, load, waiting=waiting)
        sends: Dict[int, List[Task]] = {}
        if suspect_worker is not None:
            task = self.store.claim_suspect()
            if task is not None:
                state.quarantine.started(task.url_id, suspect_worker)
                state.assigned[suspect_worker][task.url_id] = task
                sends[suspect_worker] = [task]
        free = {i: n for i, n in free.items() if n > 0}
        if not free:
            return sends, False, waiting
        tasks = self.store.claim(sum(free.values()))
        for task in tasks:
            index = max(free, key=free.get)  # least loaded worker first
            free[index] -= 1
            state.assigned[index][task.url_id] = task
            sends.setdefault(index, []).append(task)
        return sends, not tasks and not waiting, waiting

    def take(self, state, result: Result, finishing: list) -> None:
        """A result empties its slot at once (events after it in the turn see the slot
        free); it is recorded with the turn's others (``record``)."""
        task = state.assigned.get(result.worker, {}).pop(result.url_id, None)
        if task is None:
            log.info("ignored a result for URL #%d that is not in flight here", result.url_id)
            return
        state.quarantine.finished(result.url_id)
        finishing.append((result, task))

    def record(self, effects: list, finishing: list) -> None:
        """Record the turn's results in one go (``store.finish_many``: on PostgreSQL one
        statement, their jobs' counters too); each is logged and counted."""
        if not finishing:
            return
        recorded = self.store.finish_many([(task, result.state, dict(
            attempts=result.attempts, link=result.link, reason=result.reason,
            sha256=result.sha256, reused=result.reused, host=self.host,
            deletehash=result.deletehash)) for result, task in finishing])
        for (result, task), kept in zip(finishing, recorded):
            if not kept:
                log.warning("refused a late result for URL #%d (%s): this instance no longer "
                            "holds it", result.url_id, result.state)
                continue
            effects.append(lambda result=result, task=task: self.observe.emit(
                "url_finished", task, result))
