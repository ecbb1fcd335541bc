"""Every query of the store, written once for both backends.

``SqlStore`` holds the queries; ``sqlite.SqliteStore`` and ``postgres.PostgresStore``
supply connections, transactions and the few words where the dialects differ (the
clock, ``greatest``, ``FOR UPDATE SKIP LOCKED``, who counts as dead).

The queue lives in ``urls``. A URL is claimed by one instance at a time:

    queued --claim (owner = this instance, lease = a fresh token, attempts + 1)--> in_flight
    in_flight --finish, only while owner and lease still match--> complete | failed
    in_flight --requeue (worker died, stop) or reap (owner died)--> queued

A late result from an instance whose URLs were reaped no longer matches and is refused.
Jobs belong to an account (a digest of the API key that made them, '' without keys) and
so do their links; every read for a client names the account. The writer side (``transaction`` and what runs inside it) belongs to one thread, the
dispatcher's; readers come from any thread and each read sees one snapshot.
"""
import contextlib
import json
import secrets
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import jobs
from ..errors import QueueFull
from ..jobs import Task
from .outbox import OutboxQueries
from .prune import PruneQueries

URL_COLUMNS = ("u.id, u.url, u.state, u.link, u.reason, u.attempts, u.reused, u.waiting_until,"
               " u.waiting_reason, u.progress_bytes, u.progress_total, l.image_id, l.deleted")
JOB_COLUMNS = "id, created, finished, status, retry_of, callback_url"
LISTED_COLUMNS = "{seq}, id, created, finished, status, remaining, completed, failed, retry_of"
SERVICE_DIED = "the service died while uploading, on each of {attempts} attempts"
CANCELLED = "cancelled by the client before it was uploaded"
NO_CURSOR = 2 ** 62  # before any job
CLEARED = ("waiting_until = NULL, waiting_reason = NULL, progress_bytes = NULL,"
           " progress_total = NULL")  # what a URL in flight shows, and nothing else does


class SqlStore(OutboxQueries, PruneQueries):
    """Queries shared by the backends; see the module docstring for the queue's rules."""

    dialect = ""
    NOW = ""  # SQL for the database's clock, in epoch seconds
    GREATEST = ""  # the two-argument maximum
    SKIP_LOCKED = ""  # appended to a claim's SELECT
    SEQ = ""  # the column giving jobs their order of creation
    RANKED = ""  # the fair claim's CTE ranked (id, round): see FAIR_CLAIM
    PICKED = ""  # "id {picked}": the id is one of those the CTE ``picked`` chose
    BY_TURNS = BY_QUEUED = ""  # after "FROM urls": through that index, where a planner would not
    listings_at_once = None  # how many ``links`` listings may stream at once (None: any)
    outbox_added = False  # set when a commit added effects for the courier

    def __init__(self, instance: str):
        self.instance = instance
        self._queries: Dict[str, str] = {}
        self._job_deltas: Dict[str, List[int]] = {}  # job id -> [final, complete, failed]
        self._work_added = False  # queued URLs appeared (other instances may want to know)
        self._requeued = False  # URLs went back to the queue (those of cancelled jobs fail)
        self._jobs_counted = False  # a statement of this transaction counted its own jobs
        self.outbox_added = False  # set when a commit added effects for the courier

    # -- backends provide ------------------------------------------------------------------
    def transaction(self):
        """``with store.transaction():`` the writer's unit of work: commit or roll back."""
        raise NotImplementedError

    def reading(self):
        """``with store.reading() as conn:`` a connection holding one snapshot."""
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence = ()):
        """Run one writer statement; returns a cursor."""
        raise NotImplementedError

    def _insert_urls(self, job_id: str, urls: Sequence[str], account: str, turn: int) -> None:
        self._executemany(
            NEW_URL,
            [(job_id, url, jobs.QUEUED, account, turn + n) for n, url in enumerate(urls)])

    def _executemany(self, sql: str, rows) -> None:
        raise NotImplementedError

    def _dead_owners(self, column: str = "owner") -> Tuple[str, tuple]:
        """SQL condition (and its parameters) true of a row whose ``column`` names an
        instance that is dead (or no instance)."""
        raise NotImplementedError

    def _stream_cursor(self, conn):
        return conn.cursor()

    def close(self) -> None:
        """Release connections (and, for a backend that has them, locks and threads)."""

    def kept_alive(self):
        """``with store.kept_alive():`` this instance's lease renewed while the caller is
        busy; a store without leases (the embedded one) has nothing to keep."""
        return contextlib.nullcontext(self)

    # -- plumbing ------------------------------------------------------------------------------
    def q(self, sql: str) -> str:
        """``sql`` in this backend's dialect: macros filled in, placeholders converted."""
        done = self._queries.get(sql)
        if done is None:
            done = sql.format(now=self.NOW, greatest=self.GREATEST,
                              skip_locked=self.SKIP_LOCKED, seq=self.SEQ,
                              ranked=self.RANKED, picked=self.PICKED,
                              by_turns=self.BY_TURNS, by_queued=self.BY_QUEUED)
            done = self._queries[sql] = self._placeholders(done)
        return done

    def _placeholders(self, sql: str) -> str:
        return sql

    def _driver_errors(self):
        """The driver's errors as the store's (``StoreUnavailable``, ``StoreFull``, ...)
        within it: each backend says which are which."""
        return contextlib.nullcontext()

    def _before_commit(self) -> None:
        """Apply what the transaction accumulated: job counters, in one order for everyone
        (so two instances finishing URLs of the same jobs never deadlock); a job that
        completes with a callback gets its delivery in the outbox, in the same commit."""
        if self._requeued:
            self._fail_queued(FAIL_QUEUED_OF_CANCELLED, ())
            self._requeued = False
        deltas, self._job_deltas, self._jobs_counted = self._job_deltas, {}, False
        for job_id, callback_url in self._apply_job_deltas(deltas):
            self.add_effect("webhook", callback_url, job_id=job_id)

    def _apply_job_deltas(self, deltas: Dict[str, List[int]]) -> List[Tuple[str, str]]:
        """The job counters changed, in the order of their ids; returns (job id, callback
        URL) of each job they complete that has a callback."""
        completed_jobs = []
        for job_id in sorted(deltas):
            done, completed, failed = deltas[job_id]
            row = self._execute(
                JOB_COUNTED,
                (done, completed, failed, done, jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS, done,
                 job_id)).fetchone()
            if row is not None and row[0] <= 0 and row[1]:
                completed_jobs.append((job_id, row[1]))
        return completed_jobs

    def _after_rollback(self) -> None:
        self._job_deltas.clear()
        self._work_added = self._requeued = self.outbox_added = self._jobs_counted = False

    def _count(self, job_id: str, state: str) -> None:
        counts = self._job_deltas.setdefault(job_id, [0, 0, 0])
        counts[0] += 1
        counts[1 if state == jobs.COMPLETE else 2] += 1

    # -- the writer: jobs and the queue ------------------------------------------------------
    def create_job(self, job_id: str, urls: Sequence[str], *, account: str = "",
                   retry_of: Optional[str] = None, callback_url: Optional[str] = None,
                   max_queued: int = 0) -> None:
        """Insert a job and its URLs; all or nothing, without spoiling the rest of the batch.
        ``account``: who owns it (a digest of the API key, '' when there are no keys).
        ``max_queued``: when set, ``QueueFull`` (nothing created) if the account would then
        have more URLs queued (counted up to that many). Its URLs join the account's
        rotation at its head (``turn``: the head's, then one more for each), so they take
        turns with the jobs already queued there instead of waiting behind them. A store
        that cannot take it (unreachable, full) says so as the store's error, so the caller
        tells that from a bad job."""
        with self._driver_errors():
            self._execute("SAVEPOINT create_job")
            try:
                head, queued = self._execute(
                    NEW_JOB_CAPPED if max_queued else NEW_JOB,
                    (job_id, jobs.JOB_PENDING, len(urls), account, retry_of, callback_url, account,
                     *((account, max_queued, account) if max_queued else ()))).fetchone()
                if max_queued and queued + len(urls) > max_queued:
                    raise QueueFull(queued=queued, adding=len(urls), limit=max_queued)
                self._insert_urls(job_id, urls, account, head)
            except BaseException:
                try:
                    self._execute("ROLLBACK TO SAVEPOINT create_job")
                    self._execute("RELEASE SAVEPOINT create_job")
                except Exception:  # the whole transaction is gone (SQLite ends it on a full
                    pass  # disk): the first error says why
                raise
            self._execute("RELEASE SAVEPOINT create_job")
        self._work_added = True

    def cancel(self, job_id: str, account: str) -> Optional[int]:
        """Fail a job's queued URLs (those in flight finish): how many; None: no such job here."""
        found = self._execute(CANCEL_JOB, (job_id, account)).fetchone()
        if found is None:
            return None
        return self._fail_queued(FAIL_QUEUED_OF_JOB, (job_id,))

    def _fail_queued(self, sql: str, params: tuple) -> int:
        """Fail queued URLs as cancelled (``FAIL_QUEUED_OF_*``), counted for their jobs."""
        rows = self._execute(sql, (CANCELLED, *params)).fetchall()
        for (job_id,) in rows:
            self._count(job_id, jobs.FAILED)
        return len(rows)

    def claim(self, limit: int) -> List[Task]:
        """Take up to ``limit`` queued URLs (suspects excepted) under a new lease, fairly: in
        rounds across API keys, the key with the fewest URLs in flight first, and within a
        key in its rotation across jobs (see ``FAIR_CLAIM``)."""
        if limit <= 0:
            return []
        return self._claim(FAIR_CLAIM, self._fair_claim_params(limit))

    def claim_suspect(self) -> Optional[Task]:
        """Take the oldest queued suspect, to run alone (see ``quarantine``)."""
        tasks = self._claim(SUSPECT_CLAIM, ())
        return tasks[0] if tasks else None

    def _taking(self, sql: str) -> str:
        """A claim's statement (ending in ``TAKEN``) as this backend runs it: a backend may
        mark the claimed URLs' pending jobs begun in the same statement."""
        return sql

    @staticmethod
    def _fair_claim_params(limit: int) -> tuple:
        """FAIR_CLAIM's parameters before owner and lease (a backend may add its own)."""
        return (limit,)

    def _claim(self, sql: str, params: tuple) -> List[Task]:
        lease = secrets.randbits(62)
        taking = self._taking(sql)
        rows = self._execute(taking, (*params, self.instance, lease)).fetchall()
        job_ids = sorted({r[1] for r in rows})
        if not job_ids:
            return []
        if taking == sql:  # the claim did not mark its jobs begun itself
            self._execute(
                jobs_begun(len(job_ids)),
                (jobs.JOB_IN_PROGRESS, *job_ids, jobs.JOB_PENDING))
        return [Task(url_id=r[0], job_id=r[1], url=r[2], attempt=r[3], lease=lease,
                     suspect=bool(r[4]), account=r[5]) for r in sorted(rows)]

    def suspects_waiting(self) -> bool:
        """True while a suspect waits for its solitary run (on any instance's queue)."""
        return self._execute(QUEUED_FIRST, (1, 1)).fetchone() is not None

    def work_queued(self) -> bool:
        """True while any URL is queued (on any instance's queue): one statement, on the
        writer's connection (its own transaction where the connection commits each)."""
        with self._driver_errors():
            return self._execute(ANY_QUEUED).fetchone() is not None

    def finish(self, task: Task, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None,
               deletehash: Optional[str] = None) -> bool:
        """Record a URL's final state while this instance still holds its lease.

        Returns False, changing nothing, when the lease is gone (the URL was reaped and
        maybe finished elsewhere) or the URL was final already. A new link is recorded
        for the job's account, with an image id of its own and the host's delete hash."""
        row = self._execute(
            FINISH_URL,
            (state, attempts, link, reason, sha256, int(reused), task.url_id, self.instance,
             task.lease)).fetchone()
        if row is None:
            return False
        if state == jobs.COMPLETE and link:
            recorded = (link, sha256, host, task.account, new_image_id(), deletehash)
            if not self._execute(NEW_LINK_ROW + NEW_LINK_ONCE, recorded).rowcount and not reused:
                self._link_again([recorded])
            self._link_recorded(sha256, host, task.account)
        self._count(row[0], state)
        return True

    def finish_many(self, finishes: Sequence[Tuple[Task, str, dict]]) -> List[bool]:
        """``finish(task, state, **fields)`` for each, in order: what each returned."""
        return [self.finish(task, state, **fields) for task, state, fields in finishes]

    def _link_again(self, rows: Sequence[tuple]) -> None:
        """Fresh uploads whose links the account had already, as (link, sha256, host,
        account, image id, delete hash) rows: a host that names objects by their bytes
        (S3) gives the same bytes the same link. One deleted is live again: its row is
        replaced by a new one (a new image id, listed as the newest). One live is kept."""
        for row in rows:
            if self._execute(DROP_DELETED_LINK, (row[0], row[3])).rowcount:
                self._execute(NEW_LINK_ROW, row)

    def _link_recorded(self, sha256: Optional[str], host: Optional[str], account: str) -> None:
        """A link is committed with this transaction (the shared dedup claim can go)."""

    def requeue(self, task: Task, *, refund: bool = False, suspect: bool = False) -> bool:
        """Hand an in-flight URL back to the queue.

        Its attempt stays counted when a crash cut it short (the URL may be the cause);
        ``refund`` gives it back when we interrupted it ourselves (a stop). ``suspect``
        marks it to run alone next."""
        done = self._execute(
            REQUEUE,
            (int(refund), int(suspect), task.url_id, self.instance, task.lease)).rowcount == 1
        self._work_added = self._requeued = self._work_added or done
        return done

    def set_attempts(self, task: Task, attempts: int) -> None:
        self._execute(
            SET_ATTEMPTS,
            (attempts, task.url_id, self.instance, task.lease))

    def set_waiting(self, task: Task, until: Optional[float], reason: Optional[str]) -> None:
        """Note (or clear, with None) that a URL waits for the host's limits until a moment."""
        self._execute(WAITING, (until, reason, task.url_id, self.instance, task.lease))

    def set_waiting_many(self, waits: Sequence[Tuple[Task, Optional[float], Optional[str]]]
                         ) -> None:
        """``set_waiting(task, until, reason)`` for each (one note per URL)."""
        self._executemany(WAITING, [(until, reason, task.url_id, self.instance, task.lease)
                                    for task, until, reason in waits])

    def set_progress(self, task: Task, received: int, total: Optional[int]) -> None:
        """Bytes of the image fetched so far (visible from every instance)."""
        self._execute(
            SET_PROGRESS,
            (received, total, task.url_id, self.instance, task.lease))

    def reap(self, max_attempts: int) -> Tuple[int, List[tuple]]:
        """Take back the URLs dead instances left in flight: queued again, or failed when
        they used every attempt (each cut short by a death), so a URL that kills whatever
        runs it cannot loop forever. Returns (how many were queued again,
        [(url id, job id, url, attempts, reason)] of those that failed)."""
        dead, params = self._dead_owners()
        rows = self._execute(
            "SELECT id, job_id, url, attempts FROM urls"
            f" WHERE state = 'in_flight' AND {dead} AND attempts >= ? ORDER BY id",
            (*params, max_attempts)).fetchall()
        failed = []
        for url_id, job_id, url, attempts in rows:
            reason = SERVICE_DIED.format(attempts=attempts)
            self._execute(
                "UPDATE urls SET state = ?, reason = ?, owner = NULL, lease = NULL, " + CLEARED +
                " WHERE id = ? AND state = 'in_flight'", (jobs.FAILED, reason, url_id))
            self._count(job_id, jobs.FAILED)
            failed.append((url_id, job_id, url, attempts, reason))
        requeued = self._execute(
            "UPDATE urls SET state = 'queued', owner = NULL, lease = NULL, " + CLEARED +
            f" WHERE state = 'in_flight' AND {dead}", params).rowcount
        if requeued > 0:
            self._work_added = self._requeued = True
        return requeued, failed

    # -- images ------------------------------------------------------------------------------
    def delete_image(self, image_id: str, account: str) -> Optional[tuple]:
        """Record an image's deletion, all of it in this transaction: its link leaves the
        listing and dedup (its jobs show it deleted) and, unless another account holds the
        same link (S3 gives identical bytes one object), the outbox owes the host the
        removal of its bytes, which the courier then carries out. (link, host, held
        elsewhere) of the image, or None: no such image of this account, or deleted already."""
        row = self._execute(DELETE_IMAGE, (image_id, account)).fetchone()
        if row is None:
            return None
        link, host, deletehash = row
        held = self._execute(HELD_ELSEWHERE, (link, account)).fetchone()
        if deletehash and held is None:  # (a link the host gave without one stays there)
            self.add_effect("host_delete", deletehash,
                            body=json.dumps({"host": host, "link": link, "account": account}))
        return link, host, held is not None

    def restore_link(self, link: str, account: str) -> None:
        """The host refused for good to delete this link's image: the account's link is live
        again (listed, reused by dedup, not deleted in its jobs), as it is at the host."""
        self._execute(RESTORE_LINK, (link, account))

    # -- readers -----------------------------------------------------------------------------
    def read_job(self, job_id: str, account: Optional[str] = None):
        """(job row, URL rows in submission order, callback row or None) from one snapshot,
        or None; with ``account``, only a job of that account."""
        with self.reading() as conn:
            job = conn.execute(self.q(JOB if account is None else JOB_OF_ACCOUNT),
                               (job_id,) if account is None else (job_id, account)).fetchone()
            if job is None:
                return None
            rows = conn.execute(self.q(JOB_URLS), (job_id,)).fetchall()
            callback = conn.execute(self.q(JOB_CALLBACK), (job_id,)).fetchone()
        return tuple(job), [tuple(r) for r in rows], None if callback is None else tuple(callback)

    def list_jobs(self, account: str, limit: int, before: Optional[int] = None):
        """(rows of an account's jobs, newest first, the cursor after them or None)."""
        with self.reading() as conn:
            rows = conn.execute(self.q(JOBS_LISTED),
                (account, NO_CURSOR if before is None else before, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = [tuple(r) for r in rows[:limit]]
        return [r[1:] for r in rows], (str(rows[-1][0]) if more else None)

    def image(self, image_id: str, account: str) -> Optional[tuple]:
        """(link, host, delete hash, SHA-256) of an image of this account not deleted yet,
        or None."""
        with self.reading() as conn:
            row = conn.execute(self.q(IMAGE), (image_id, account)).fetchone()
        return None if row is None else tuple(row)

    def link_live(self, link: str) -> bool:
        """True when some account holds this link, not deleted: its bytes must stay at the
        host (S3 names an object by its bytes, so a deleted image uploaded again, by anyone,
        has its link back)."""
        with self.reading() as conn:
            return conn.execute(self.q(LINK_LIVE), (link,)).fetchone() is not None

    @contextlib.contextmanager
    def links(self, page_size: int, account: str = ""):
        """``with store.links(n) as pages:`` an iterator of pages of an account's links,
        oldest first, deleted ones left out, all from one snapshot however long it takes."""
        with self.reading() as conn:
            cursor = self._stream_cursor(conn)
            cursor.execute(self.q(LIVE_LINKS), (account,))

            def pages():
                while True:
                    rows = cursor.fetchmany(page_size)
                    if not rows:
                        return
                    yield [r[0] for r in rows]

            try:
                yield pages()
            finally:
                cursor.close()

    def queue_depth(self) -> Tuple[int, float]:
        """(URLs waiting for a worker slot, seconds the oldest has waited since its job was
        made; 0 when none waits). Uses the partial index of queued URLs: the oldest is the
        older of the first plain URL and the first suspect."""
        with self.reading() as conn:
            count = conn.execute(QUEUED_COUNT).fetchone()[0]
            firsts = [row[0] for suspect in (0, 1)
                      for row in conn.execute(self.q(QUEUED_FIRST), (suspect, 1))]
            if not firsts:
                return count, 0.0
            oldest = conn.execute(self.q(WAITED), (min(firsts),)).fetchone()
        return count, max(0.0, oldest[0]) if oldest else 0.0

    def link_for(self, sha256: str, host: str, account: str = "") -> Optional[str]:
        """The link these bytes already have on this host for this account, if any and not
        deleted (for dedup: deleted bytes are uploaded afresh)."""
        with self.reading() as conn:
            row = conn.execute(self.q(OLDEST_LINK), (sha256, host, account)).fetchone()
        return row[0] if row else None


# -- the writer's statements ----------------------------------------------------------------
# A URL in flight is changed only by the instance holding it under this lease.
HELD = " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?"
NEW_URL = "INSERT INTO urls (job_id, url, state, account, turn) VALUES (?, ?, ?, ?, ?)"
# A job counts its URLs final, complete and failed as each turn finishes them; it completes
# (and is stamped finished) when none remains.
JOB_COUNTED = ("UPDATE jobs SET remaining = remaining - ?, completed = completed + ?,"
               " failed = failed + ?,"
               " status = CASE WHEN remaining - ? <= 0 THEN ? ELSE ? END,"
               " finished = CASE WHEN remaining - ? <= 0 THEN {now} ELSE finished END"
               " WHERE id = ? RETURNING remaining, callback_url")
CANCEL_JOB = "UPDATE jobs SET cancelled = 1 WHERE id = ? AND account = ? RETURNING id"
FAIL_QUEUED = "UPDATE urls SET state = 'failed', reason = ?, " + CLEARED + " WHERE state = 'queued'"
FAIL_QUEUED_OF_JOB = FAIL_QUEUED + " AND job_id = ? RETURNING job_id"
# URLs handed back to the queue of a job cancelled meanwhile fail at the commit.
FAIL_QUEUED_OF_CANCELLED = (FAIL_QUEUED + " AND job_id IN (SELECT id FROM jobs"
                            " WHERE cancelled = 1 AND remaining > 0) RETURNING job_id")
FINISH_URL = ("UPDATE urls SET state = ?, attempts = {greatest}(attempts, ?), link = ?,"
              " reason = ?, sha256 = ?, reused = ?, owner = NULL, lease = NULL, " + CLEARED
              + HELD + " RETURNING job_id")
REQUEUE = ("UPDATE urls SET state = 'queued', owner = NULL, lease = NULL,"
           " attempts = attempts - ?, suspect = {greatest}(suspect, ?), " + CLEARED + HELD)
SET_ATTEMPTS = "UPDATE urls SET attempts = {greatest}(attempts, ?)" + HELD
SET_PROGRESS = "UPDATE urls SET progress_bytes = ?, progress_total = ?" + HELD
# A link deleted by its account, uploaded afresh: its row goes, a new one (a new image id,
# the newest in the listing) takes its place.
DROP_DELETED_LINK = "DELETE FROM links WHERE link = ? AND account = ? AND deleted IS NOT NULL"


def jobs_begun(count: int) -> str:
    """Jobs (``count`` ids) whose first URL was claimed: pending becomes in progress."""
    return f"UPDATE jobs SET status = ? WHERE id IN ({_marks(range(count))}) AND status = ?"


# The oldest queued URLs, plain (suspect 0) or suspects (1): what every turn with free slots
# asks for. The index urls_queued answers it, order included, however long the queue
# (schema.py, migration 6); with its suspects a filter, each turn read the whole queue.
QUEUED_FIRST = "SELECT id FROM urls WHERE state = 'queued' AND suspect = ? ORDER BY id LIMIT ?"
# Whether anything is queued at all (from the same index): a poll's look (work_queued).
ANY_QUEUED = "SELECT 1 FROM urls WHERE state = 'queued' LIMIT 1"
# A URL in flight waits for the host until a moment, with its reason (None, None: no more).
WAITING = "UPDATE urls SET waiting_until = ?, waiting_reason = ?" + HELD
# A link recorded for an account, once: the same link again (reused, or the same bytes
# uploaded again to a host that names objects by their bytes) keeps the row it has.
NEW_LINK = "INSERT INTO links (link, sha256, host, created, account, image_id, deletehash)"
NEW_LINK_ONCE = " ON CONFLICT (link, account) DO NOTHING"
NEW_LINK_ROW = NEW_LINK + " VALUES (?, ?, ?, {now}, ?, ?, ?)"
TAKEN = (" UPDATE urls SET state = 'in_flight', owner = ?, lease = ?, attempts = attempts + 1, "
         + CLEARED + " WHERE id {picked}"
         " RETURNING id, job_id, url, attempts, suspect, account")
# The claim, fair across API keys and within a key across jobs, in one statement. A key's
# claimable URLs form its rotation (by turn, then id: the jobs of a key take turns, see
# create_job); the n-th of them has the round (what the key has in flight anywhere) + n,
# and the claim takes the lowest rounds (then the oldest): round-robin across keys, and a
# key that arrives behind another's backlog is served at the next free slot. The keys are
# found with their first URLs (heads), one probe of urls_turns each; each dialect then reads
# only what can be taken ({ranked}: rows of id and round), however long the queue:
# SQLite merges the keys' rotations, lowest round first, stopping at the limit; PostgreSQL
# reads and locks each key's first few (FOR UPDATE SKIP LOCKED: instances never wait for
# each other, never take the same URL): none for a key behind ``wanted`` others, at most
# wanted + 1 - (keys as busy or less) for the others. (The lock rechecks that a URL is
# still queued, so the UPDATE need not: one that said so again was planned on urls_queued,
# reading the whole queue, in a young store; PostgreSQL takes them by id = ANY, as a
# generic plan hash-joined the whole table otherwise. SQLite is told the index: without
# statistics it read the whole queue to find the keys.)
FAIR_CLAIM = (
    "WITH RECURSIVE wanted (n) AS (SELECT CAST(? AS INTEGER)),"
    " heads (account, head) AS (SELECT h.account, h.id FROM urls h WHERE h.id = (SELECT id"
    " FROM urls {by_turns} WHERE state = 'queued' AND suspect = 0 ORDER BY account, turn, id"
    " LIMIT 1) UNION ALL SELECT h.account, h.id FROM heads k JOIN urls h ON h.id = (SELECT id"
    " FROM urls {by_turns} WHERE state = 'queued' AND suspect = 0 AND account > k.account"
    " ORDER BY account, turn, id LIMIT 1)),"
    " busy AS (SELECT account, count(*) AS n FROM urls WHERE state = 'in_flight' GROUP BY account),"
    " queues AS (SELECT q.account, q.head, coalesce(b.n, 0) AS busy, w.n AS wanted,"
    " row_number() OVER (ORDER BY coalesce(b.n, 0), q.head) AS place,"
    " count(*) OVER (ORDER BY coalesce(b.n, 0)) AS level"
    " FROM wanted w CROSS JOIN heads q LEFT JOIN busy b ON b.account = q.account),"
    " {ranked},"
    " picked AS MATERIALIZED (SELECT id FROM ranked ORDER BY round, id"
    " LIMIT (SELECT n FROM wanted))"
    + TAKEN)
# The oldest queued suspect (they run alone, oldest first).
SUSPECT_CLAIM = ("WITH picked AS MATERIALIZED (SELECT id FROM urls WHERE state = 'queued'"
                 " AND suspect = 1 ORDER BY id LIMIT 1 {skip_locked})" + TAKEN)
# Where a new job of an account joins its rotation: the turn of its head (the first
# claimable URL), read from urls_turns (create_job).
ROTATION_HEAD = ("SELECT coalesce(min(turn), 0) FROM urls {by_turns} WHERE state = 'queued'"
                 " AND suspect = 0 AND account = ?")
# An account's queued URLs, a per-key cap's measure, counted up to the cap: its claimable
# ones in rotation order (so from urls_turns, and no further than the cap: a generic plan
# counted them on urls_queued, reading the whole queue), and its suspects (a handful at
# most) from urls_queued.
KEY_QUEUED = ("SELECT (SELECT count(*) FROM (SELECT id FROM urls {by_turns} WHERE state = 'queued'"
              " AND suspect = 0 AND account = ? ORDER BY turn, id LIMIT ?) AS q)"
              " + (SELECT count(*) FROM urls {by_queued} WHERE state = 'queued' AND suspect = 1"
              " AND account = ?)")
# A job and, from the same statement, the head of its account's rotation (and, with a cap,
# what the account has queued).
_NEW_JOB = ("INSERT INTO jobs (id, created, status, remaining, account, retry_of, callback_url)"
            f" VALUES (?, {{now}}, ?, ?, ?, ?, ?) RETURNING ({ROTATION_HEAD}), ")
NEW_JOB = _NEW_JOB + "0"
NEW_JOB_CAPPED = _NEW_JOB + f"({KEY_QUEUED})"
# The oldest live link of some bytes on a host for an account: what dedup reuses. The index
# links_for_dedup answers it, order included (schema.py, migration 5).
def oldest_link(sha256: str = "?", account: str = "?") -> str:
    """OLDEST_LINK with the bytes and the account given as SQL (a batch's columns)."""
    return (f"SELECT link FROM links WHERE sha256 = {sha256} AND host = ? AND account = {account}"
            " AND deleted IS NULL ORDER BY id LIMIT 1")


OLDEST_LINK = oldest_link()
# A job (of an account), its URLs with their links, and its callback's delivery: the job
# document's rows (``render``), read from one snapshot.
JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
JOB_OF_ACCOUNT = JOB + " AND account = ?"
JOB_URLS = (f"SELECT {URL_COLUMNS} FROM urls u JOIN jobs j ON j.id = u.job_id"
            " LEFT JOIN links l ON l.link = u.link AND l.account = j.account"
            " WHERE u.job_id = ? ORDER BY u.id")
JOB_CALLBACK = ("SELECT state, attempts, last_error FROM outbox WHERE job_id = ?"
                " AND kind = 'webhook'")
# An account's jobs, newest first, from a cursor on.
JOBS_LISTED = (f"SELECT {LISTED_COLUMNS} FROM jobs WHERE account = ? AND {{seq}} < ?"
               " ORDER BY {seq} DESC LIMIT ?")
# The queue's length, and how long the job of its oldest URL (by id) has waited.
QUEUED_COUNT = "SELECT COUNT(*) FROM urls WHERE state = 'queued'"
WAITED = "SELECT {now} - j.created FROM urls u JOIN jobs j ON j.id = u.job_id WHERE u.id = ?"
# An account's image, live; whether anyone holds a link live; an image deleted (its link,
# host and delete hash returned), whether another account holds its link, and a link live
# again (the host refused to delete it).
IMAGE = ("SELECT link, host, deletehash, sha256 FROM links WHERE image_id = ?"
         " AND account = ? AND deleted IS NULL")
LINK_LIVE = "SELECT 1 FROM links WHERE link = ? AND deleted IS NULL LIMIT 1"
DELETE_IMAGE = ("UPDATE links SET deleted = {now} WHERE image_id = ? AND account = ?"
                " AND deleted IS NULL RETURNING link, host, deletehash")
HELD_ELSEWHERE = "SELECT 1 FROM links WHERE link = ? AND account <> ? AND deleted IS NULL LIMIT 1"
RESTORE_LINK = "UPDATE links SET deleted = NULL WHERE link = ? AND account = ?"
# An account's live links, oldest first, from links_listed; "id > 0" (always true) is that
# index's mark, so that no other query can be planned onto it (schema.py, migration 5).
LIVE_LINKS = ("SELECT link FROM links WHERE account = ? AND deleted IS NULL AND id > 0"
              " ORDER BY id")


def new_image_id() -> str:
    """An image's public id: 12 URL-safe characters, unguessable."""
    return secrets.token_urlsafe(9)


def _marks(values: Iterable) -> str:
    return ", ".join("?" for _ in values)
