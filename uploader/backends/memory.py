"""The in-memory backend, for tests: the store's and the coordinator's promises in plain Python.

No database and no process: a ``MemoryStore`` keeps its rows in a ``Rows`` object (give
several stores the same one to have several instances on one store), and a
``MemoryCoordinator`` is the embedded coordinator's gate and dedup index, reading links
from such a store. ``tests/system/test_store.py`` runs the store's contract on it beside SQLite
and PostgreSQL, so it is kept faithful; the service never runs on it (procrastinate's
``InMemoryConnector`` is "for testing only" in the same way).

It also keeps the job rules in Python, which the SQL of the real stores enforces on its
own: ``TRANSITIONS`` (every legal move of a URL: a store here refuses any other) and
``job_status`` (a job's status from its URLs' states), the oracle the state-machine tests
hold the real stores to.
"""
import contextlib
import copy
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .. import jobs
from ..errors import QueueFull
from ..jobs import COMPLETE, FAILED, FINAL_STATES, IN_FLIGHT, QUEUED, Task
from .outbox import PENDING, Effect
from .prune import JOBS, ROWS, _batch
from .sql import CANCELLED, NO_CURSOR, SERVICE_DIED, new_image_id
from .sqlite.coordinator import Coordinator
from .sqlite.dedup import DedupIndex

# Every legal move of a URL; anything else is a bug.
TRANSITIONS = {
    QUEUED: frozenset({IN_FLIGHT, FAILED}),  # failed: its job was cancelled
    IN_FLIGHT: frozenset({QUEUED, COMPLETE, FAILED}),
    COMPLETE: frozenset(),
    FAILED: frozenset(),
}


def can_move(old: str, new: str) -> bool:
    """True when a URL may go from state ``old`` to ``new``."""
    return new in TRANSITIONS[old]


def job_status(states) -> str:
    """The status a job has when its URLs are in ``states``."""
    states = list(states)
    if states and all(s in FINAL_STATES for s in states):
        return jobs.JOB_COMPLETE
    if any(s != QUEUED for s in states):
        return jobs.JOB_IN_PROGRESS
    return jobs.JOB_PENDING


@dataclass
class Url:
    id: int
    job_id: str
    url: str
    account: str
    turn: int
    state: str = QUEUED
    owner: Optional[str] = None
    lease: Optional[int] = None
    attempts: int = 0
    suspect: int = 0
    link: Optional[str] = None
    reason: Optional[str] = None
    sha256: Optional[str] = None
    reused: int = 0
    waiting_until: Optional[float] = None
    waiting_reason: Optional[str] = None
    progress_bytes: Optional[int] = None
    progress_total: Optional[int] = None

    def move(self, state: str) -> None:
        if state != self.state and not can_move(self.state, state):
            raise AssertionError(f"URL {self.id}: {self.state} -> {state} is no legal move")
        self.state = state
        self.waiting_until = self.waiting_reason = None
        self.progress_bytes = self.progress_total = None
        if state != IN_FLIGHT:
            self.owner = self.lease = None


@dataclass
class Job:
    id: str
    seq: int
    created: float
    account: str
    retry_of: Optional[str]
    callback_url: Optional[str]
    urls: List[int] = field(default_factory=list)
    status: str = jobs.JOB_PENDING
    finished: Optional[float] = None
    cancelled: bool = False


@dataclass
class Link:
    id: int
    link: str
    sha256: Optional[str]
    host: Optional[str]
    created: float
    account: str
    image_id: str
    deletehash: Optional[str]
    deleted: Optional[float] = None


@dataclass
class Rows:
    """One store's rows; shared by the ``MemoryStore`` of each instance using it."""

    jobs: Dict[str, Job] = field(default_factory=dict)
    urls: Dict[int, Url] = field(default_factory=dict)
    links: Dict[int, Link] = field(default_factory=dict)
    outbox: Dict[str, dict] = field(default_factory=dict)
    next_id: int = 1
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def __deepcopy__(self, memo):  # a transaction's undo copy: everything but the lock
        copied = Rows(*(copy.deepcopy(getattr(self, name), memo)
                        for name in ("jobs", "urls", "links", "outbox", "next_id")))
        copied.lock = self.lock
        return copied


class MemoryStore:
    """``protocols.Store`` in memory: one instance of a store (``rows``), not clustered, so
    every URL in flight under another instance was left by a dead one (as with SQLite)."""

    clustered = False
    lease_seconds = None
    listings_at_once = None
    outbox_added = False

    def __init__(self, instance: str = "memory", rows: Optional[Rows] = None):
        self.instance = instance
        self.rows = rows if rows is not None else Rows()
        self._requeued = False

    # -- the writer: jobs and the queue -----------------------------------------------------
    @contextlib.contextmanager
    def transaction(self):
        with self.rows.lock:
            undo = copy.deepcopy(self.rows)
            try:
                yield self
                self._before_commit()
            except BaseException:
                self._restore(undo)
                self._requeued = self.outbox_added = False
                raise

    def _restore(self, undo: Rows) -> None:
        for name in ("jobs", "urls", "links", "outbox", "next_id"):
            setattr(self.rows, name, getattr(undo, name))

    def _before_commit(self) -> None:
        """What SQL does at the commit: the queued URLs of cancelled jobs that a requeue
        brought back fail."""
        if self._requeued:
            for job in self.rows.jobs.values():
                if job.cancelled:
                    self._fail_queued(job)
            self._requeued = False

    def create_job(self, job_id: str, urls: Sequence[str], *, account: str = "",
                   retry_of: Optional[str] = None, callback_url: Optional[str] = None,
                   max_queued: int = 0) -> None:
        for url in urls:
            url.encode("utf-8")  # what no database can store (a lone surrogate) is refused
        if job_id in self.rows.jobs:
            raise ValueError(f"job {job_id} exists already")
        claimable = self._claimable(account)
        if max_queued:
            queued = (min(len(claimable), max_queued)
                      + sum(1 for u in self._queued() if u.suspect and u.account == account))
            if queued + len(urls) > max_queued:
                raise QueueFull(queued=queued, adding=len(urls), limit=max_queued)
        head = claimable[0].turn if claimable else 0
        job = Job(job_id, self.rows.new_id(), time.time(), account, retry_of, callback_url)
        for n, url in enumerate(urls):
            row = Url(self.rows.new_id(), job_id, url, account, head + n)
            self.rows.urls[row.id] = row
            job.urls.append(row.id)
        self.rows.jobs[job_id] = job

    def cancel(self, job_id: str, account: str) -> Optional[int]:
        job = self.rows.jobs.get(job_id)
        if job is None or job.account != account:
            return None
        job.cancelled = True
        return self._fail_queued(job)

    def _fail_queued(self, job: Job) -> int:
        failed = 0
        for url in self._urls_of(job):
            if url.state == QUEUED:
                url.move(FAILED)
                url.reason = CANCELLED
                failed += 1
        self._settle(job)
        return failed

    def claim(self, limit: int) -> List[Task]:
        """Fair as ``sql.FAIR_CLAIM``: the n-th claimable URL of an account (by turn, then
        id) has the round (what the account has in flight) + n; the lowest rounds go first,
        then the oldest."""
        if limit <= 0:
            return []
        busy: Dict[str, int] = {}
        for url in self.rows.urls.values():
            if url.state == IN_FLIGHT:
                busy[url.account] = busy.get(url.account, 0) + 1
        ranked = []
        for account in {u.account for u in self._queued() if not u.suspect}:
            for n, url in enumerate(self._claimable(account), 1):
                ranked.append((busy.get(account, 0) + n, url.id))
        return self._take([self.rows.urls[url_id] for _, url_id in sorted(ranked)[:limit]])

    def claim_suspect(self) -> Optional[Task]:
        suspects = [u for u in self._queued() if u.suspect]
        tasks = self._take(suspects[:1])
        return tasks[0] if tasks else None

    def _take(self, urls: List[Url]) -> List[Task]:
        lease = secrets.randbits(62)
        for url in urls:
            url.move(IN_FLIGHT)
            url.owner, url.lease, url.attempts = self.instance, lease, url.attempts + 1
            job = self.rows.jobs[url.job_id]
            if job.status == jobs.JOB_PENDING:
                job.status = jobs.JOB_IN_PROGRESS
        return [Task(url_id=u.id, job_id=u.job_id, url=u.url, attempt=u.attempts, lease=lease,
                     suspect=bool(u.suspect), account=u.account)
                for u in sorted(urls, key=lambda u: u.id)]

    def suspects_waiting(self) -> bool:
        return any(u.suspect for u in self._queued())

    def work_queued(self) -> bool:
        return bool(self._queued())

    def finish(self, task: Task, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None,
               deletehash: Optional[str] = None) -> bool:
        url = self._held(task)
        if url is None:
            return False
        url.move(state)
        url.attempts = max(url.attempts, attempts)
        url.link, url.reason, url.sha256, url.reused = link, reason, sha256, int(reused)
        if state == COMPLETE and link:
            found = self._link(link, task.account)
            if found is not None and found.deleted is not None and not reused:
                del self.rows.links[found.id]  # live again: listed as the newest
                found = None
            if found is None:
                row = Link(self.rows.new_id(), link, sha256, host, time.time(), task.account,
                           new_image_id(), deletehash)
                self.rows.links[row.id] = row
        self._settle(self.rows.jobs[url.job_id])
        return True

    def finish_many(self, finishes: Sequence[Tuple[Task, str, dict]]) -> List[bool]:
        return [self.finish(task, state, **fields) for task, state, fields in finishes]

    def requeue(self, task: Task, *, refund: bool = False, suspect: bool = False) -> bool:
        url = self._held(task)
        if url is None:
            return False
        url.move(QUEUED)
        url.attempts -= int(refund)
        url.suspect = max(url.suspect, int(suspect))
        self._requeued = True
        return True

    def set_attempts(self, task: Task, attempts: int) -> None:
        url = self._held(task)
        if url is not None:
            url.attempts = max(url.attempts, attempts)

    def set_waiting(self, task: Task, until: Optional[float], reason: Optional[str]) -> None:
        url = self._held(task)
        if url is not None:
            url.waiting_until, url.waiting_reason = until, reason

    def set_waiting_many(self, waits: Sequence[Tuple[Task, Optional[float], Optional[str]]]
                         ) -> None:
        for task, until, reason in waits:
            self.set_waiting(task, until, reason)

    def set_progress(self, task: Task, received: int, total: Optional[int]) -> None:
        url = self._held(task)
        if url is not None:
            url.progress_bytes, url.progress_total = received, total

    def reap(self, max_attempts: int) -> Tuple[int, List[tuple]]:
        left = [u for u in sorted(self.rows.urls.values(), key=lambda u: u.id)
                if u.state == IN_FLIGHT and u.owner != self.instance]
        failed, requeued = [], 0
        for url in left:
            if url.attempts >= max_attempts:
                url.move(FAILED)
                url.reason = SERVICE_DIED.format(attempts=url.attempts)
                failed.append((url.id, url.job_id, url.url, url.attempts, url.reason))
                self._settle(self.rows.jobs[url.job_id])
            else:
                url.move(QUEUED)
                requeued += 1
        self._requeued = self._requeued or requeued > 0
        return requeued, failed

    # -- the writer: images and the outbox --------------------------------------------------
    def delete_image(self, image_id: str, account: str) -> Optional[tuple]:
        row = next((r for r in self.rows.links.values() if r.image_id == image_id
                    and r.account == account and r.deleted is None), None)
        if row is None:
            return None
        row.deleted = time.time()
        held = any(r.link == row.link and r.account != account and r.deleted is None
                   for r in self.rows.links.values())
        if row.deletehash and not held:
            self.add_effect("host_delete", row.deletehash, body=json.dumps(
                {"host": row.host, "link": row.link, "account": account}))
        return row.link, row.host, held

    def restore_link(self, link: str, account: str) -> None:
        row = self._link(link, account)
        if row is not None:
            row.deleted = None

    def add_effect(self, kind: str, target: str, *, job_id: Optional[str] = None,
                   body: Optional[str] = None) -> str:
        effect_id = str(uuid.uuid4())
        now = time.time()
        self.rows.outbox[effect_id] = dict(
            id=effect_id, kind=kind, job_id=job_id, target=target, state=PENDING, next_at=now,
            created=now, body=body, attempts=0, holder=None, held_until=None,
            last_error=None, done=None)
        self.outbox_added = True
        return effect_id

    def claim_effects(self, limit: int, hold_seconds: float) -> List[Effect]:
        now = time.time()
        due = sorted((e for e in self.rows.outbox.values() if e["state"] == PENDING
                      and e["next_at"] <= now and (e["held_until"] is None
                                                   or e["held_until"] < now
                                                   or e["holder"] != self.instance)),
                     key=lambda e: e["next_at"])[:limit]
        for effect in due:
            effect.update(holder=self.instance, held_until=now + hold_seconds,
                          attempts=effect["attempts"] + 1)
        return [Effect(e["id"], e["kind"], e["job_id"], e["target"], e["attempts"] - 1,
                       e["body"]) for e in due]

    def set_effect_body(self, effect_id: str, body: str) -> None:
        effect = self.rows.outbox.get(effect_id)
        if effect is not None and effect["body"] is None:
            effect["body"] = body

    def record_effect(self, effect_id: str, *, state: str, error: Optional[str],
                      retry_in: float = 0.0, attempted: bool = True) -> bool:
        effect = self.rows.outbox.get(effect_id)
        if effect is None or effect["holder"] != self.instance or effect["state"] != PENDING:
            return False
        now = time.time()
        effect.update(state=state, last_error=error, attempts=effect["attempts"] - (not attempted),
                      next_at=now + retry_in, holder=None, held_until=None,
                      done=None if state == PENDING else now)
        return True

    # -- readers ------------------------------------------------------------------------------
    def read_job(self, job_id: str, account: Optional[str] = None):
        with self.rows.lock:
            job = self.rows.jobs.get(job_id)
            if job is None or (account is not None and job.account != account):
                return None
            urls = []
            for url in self._urls_of(job):
                link = self._link(url.link, job.account) if url.link else None
                urls.append((url.id, url.url, url.state, url.link, url.reason, url.attempts,
                             url.reused, url.waiting_until, url.waiting_reason,
                             url.progress_bytes, url.progress_total,
                             link.image_id if link else None, link.deleted if link else None))
            callback = next(((e["state"], e["attempts"], e["last_error"])
                             for e in self.rows.outbox.values()
                             if e["job_id"] == job_id and e["kind"] == "webhook"), None)
            return ((job.id, job.created, job.finished, job.status, job.retry_of,
                     job.callback_url), urls, callback)

    def list_jobs(self, account: str, limit: int, before: Optional[int] = None):
        with self.rows.lock:
            mine = sorted((j for j in self.rows.jobs.values() if j.account == account
                           and j.seq < (NO_CURSOR if before is None else before)),
                          key=lambda j: j.seq, reverse=True)[:limit + 1]
            rows = [(j.seq, j.id, j.created, j.finished, j.status, *self._counts(j),
                     j.retry_of) for j in mine]
        more = len(rows) > limit
        rows = rows[:limit]
        return [r[1:] for r in rows], (str(rows[-1][0]) if more else None)

    def image(self, image_id: str, account: str) -> Optional[tuple]:
        with self.rows.lock:
            return next(((r.link, r.host, r.deletehash, r.sha256)
                         for r in self.rows.links.values() if r.image_id == image_id
                         and r.account == account and r.deleted is None), None)

    def link_live(self, link: str) -> bool:
        with self.rows.lock:
            return any(r.link == link and r.deleted is None for r in self.rows.links.values())

    @contextlib.contextmanager
    def links(self, page_size: int, account: str = ""):
        with self.rows.lock:  # one snapshot
            live = [r.link for r in sorted(self.rows.links.values(), key=lambda r: r.id)
                    if r.account == account and r.deleted is None]

        def pages():
            for start in range(0, len(live), page_size):
                yield live[start:start + page_size]

        yield pages()

    def link_for(self, sha256: str, host: str, account: str = "") -> Optional[str]:
        with self.rows.lock:
            return next((r.link for r in sorted(self.rows.links.values(), key=lambda r: r.id)
                         if r.sha256 == sha256 and r.host == host and r.account == account
                         and r.deleted is None and None not in (r.sha256, r.host)), None)

    def queue_depth(self) -> Tuple[int, float]:
        with self.rows.lock:
            queued = self._queued()
            if not queued:
                return 0, 0.0
            created = self.rows.jobs[queued[0].job_id].created
            return len(queued), max(0.0, time.time() - created)

    def next_effect_in(self) -> Optional[float]:
        now = time.time()
        with self.rows.lock:
            due = [e["next_at"] for e in self.rows.outbox.values() if e["state"] == PENDING
                   and (e["held_until"] is None or e["held_until"] < now
                        or e["holder"] != self.instance)]
        return None if not due else max(0.0, min(due) - now)

    # -- life ---------------------------------------------------------------------------------
    def heartbeat(self) -> bool:
        return True

    def kept_alive(self):
        return contextlib.nullcontext(self)

    def listen(self, on_work, on_pause, on_state) -> bool:
        return False

    def problem(self) -> Optional[str]:
        return None

    def prune(self, older_than: float) -> Optional[Dict[str, int]]:
        with self.transaction():
            before = time.time() - older_than
            pending = {e["job_id"] for e in self.rows.outbox.values() if e["state"] == PENDING}
            old = sorted((j for j in self.rows.jobs.values() if j.finished is not None
                          and j.finished < before and j.id not in pending),
                         key=lambda j: j.finished)[:JOBS]
            taken = set(_batch([(j.id, len(j.urls)) for j in old]))
            deleted = {}
            if taken:
                deleted["urls"] = sum(len(self.rows.jobs[j].urls) for j in taken)
                self.rows.urls = {i: u for i, u in self.rows.urls.items()
                                  if u.job_id not in taken}
                gone = [i for i, e in self.rows.outbox.items()
                        if e["job_id"] in taken and e["state"] != PENDING]
                deleted["jobs"] = len(taken)
                for job_id in taken:
                    del self.rows.jobs[job_id]
            else:
                gone = [i for i, e in self.rows.outbox.items() if e["job_id"] is None
                        and e["state"] != PENDING and e["done"] < before][:ROWS]
            for effect_id in gone:
                del self.rows.outbox[effect_id]
            deleted["outbox"] = len(gone)
        return {table: n for table, n in deleted.items() if n}

    def end_pruning(self) -> None:
        """Nothing is held between batches."""

    def close(self) -> None:
        """Nothing to let go of: the rows stay, for the next instance to open."""

    # -- plumbing -----------------------------------------------------------------------------
    def _queued(self) -> List[Url]:
        return sorted((u for u in self.rows.urls.values() if u.state == QUEUED),
                      key=lambda u: u.id)

    def _claimable(self, account: str) -> List[Url]:
        """An account's rotation: its queued URLs that are no suspects, by turn then id."""
        return sorted((u for u in self._queued() if not u.suspect and u.account == account),
                      key=lambda u: (u.turn, u.id))

    def _held(self, task: Task) -> Optional[Url]:
        url = self.rows.urls.get(task.url_id)
        if (url is None or url.state != IN_FLIGHT or url.owner != self.instance
                or url.lease != task.lease):
            return None
        return url

    def _urls_of(self, job: Job) -> List[Url]:
        return [self.rows.urls[i] for i in job.urls]

    def _link(self, link: str, account: str) -> Optional[Link]:
        return next((r for r in self.rows.links.values()
                     if r.link == link and r.account == account), None)

    def _counts(self, job: Job) -> Tuple[int, int, int]:
        """(remaining, completed, failed) of a job."""
        states = [u.state for u in self._urls_of(job)]
        return (sum(s not in FINAL_STATES for s in states), states.count(COMPLETE),
                states.count(FAILED))

    def _settle(self, job: Job) -> None:
        """A job's status after its URLs changed: never backwards, finished once; one that
        completes with a callback owes its delivery."""
        status = job_status(u.state for u in self._urls_of(job))
        if status == jobs.JOB_COMPLETE and job.status != jobs.JOB_COMPLETE:
            job.status, job.finished = status, time.time()
            if job.callback_url:
                self.add_effect("webhook", job.callback_url, job_id=job.id)
        elif status == jobs.JOB_IN_PROGRESS and job.status == jobs.JOB_PENDING:
            job.status = status


class MemoryCoordinator(Coordinator):
    """``protocols.Coordinator`` in this process: the embedded coordinator's gate and dedup
    index (the same rules, the same code), its links read from a ``MemoryStore``."""

    def __init__(self, gate: Optional[dict] = None, store: Optional[MemoryStore] = None,
                 host: str = "local"):
        super().__init__(gate, None)
        if store is not None:
            self.dedup = DedupIndex(lambda key: store.link_for(key[1], host, key[0]))
