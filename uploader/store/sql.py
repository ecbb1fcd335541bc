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
import secrets
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import jobs
from ..jobs import Task
from .outbox import OutboxQueries
from .prune import PruneQueries

URL_COLUMNS = ("u.id, u.url, u.state, u.link, u.reason, u.attempts, u.reused, u.waiting_until,"
               " u.waiting_reason, u.progress_bytes, u.progress_total, l.image_id, l.deleted")
JOB_COLUMNS = "id, created, finished, status, retry_of, callback_url"
LISTED_COLUMNS = "{seq}, id, created, finished, status, remaining, completed, failed"
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
    listings_at_once = None  # how many ``links`` listings may stream at once (None: any)

    def __init__(self, instance: str):
        self.instance = instance
        self._queries: Dict[str, str] = {}
        self._job_deltas: Dict[str, List[int]] = {}  # job id -> [final, complete, failed]
        self._work_added = False  # queued URLs appeared (other instances may want to know)
        self._requeued = False  # URLs went back to the queue (those of cancelled jobs fail)
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

    def _insert_urls(self, job_id: str, urls: Sequence[str]) -> None:
        self._executemany("INSERT INTO urls (job_id, url, state) VALUES (?, ?, ?)",
                          [(job_id, url, jobs.QUEUED) for url in urls])

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
                              skip_locked=self.SKIP_LOCKED, seq=self.SEQ)
            done = self._queries[sql] = self._placeholders(done)
        return done

    def _placeholders(self, sql: str) -> str:
        return sql

    def _before_commit(self) -> None:
        """Apply what the transaction accumulated: job counters, in one order for everyone
        (so two instances finishing URLs of the same jobs never deadlock); a job that
        completes with a callback gets its delivery in the outbox, in the same commit."""
        if self._requeued:
            self._fail_queued("job_id IN (SELECT id FROM jobs WHERE cancelled = 1"
                              " AND remaining > 0)", ())
            self._requeued = False
        deltas, self._job_deltas = self._job_deltas, {}
        for job_id in sorted(deltas):
            done, completed, failed = deltas[job_id]
            row = self._execute(
                "UPDATE jobs SET remaining = remaining - ?, completed = completed + ?,"
                " failed = failed + ?,"
                " status = CASE WHEN remaining - ? <= 0 THEN ? ELSE ? END,"
                " finished = CASE WHEN remaining - ? <= 0 THEN {now} ELSE finished END"
                " WHERE id = ? RETURNING remaining, callback_url",
                (done, completed, failed, done, jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS, done,
                 job_id)).fetchone()
            if row is not None and row[0] <= 0 and row[1]:
                self.add_effect("webhook", row[1], job_id=job_id)

    def _after_rollback(self) -> None:
        self._job_deltas.clear()
        self._work_added = self._requeued = self.outbox_added = False

    def _count(self, job_id: str, state: str) -> None:
        counts = self._job_deltas.setdefault(job_id, [0, 0, 0])
        counts[0] += 1
        counts[1 if state == jobs.COMPLETE else 2] += 1

    # -- the writer: jobs and the queue ------------------------------------------------------
    def create_job(self, job_id: str, urls: Sequence[str], *, account: str = "",
                   retry_of: Optional[str] = None, callback_url: Optional[str] = None) -> None:
        """Insert a job and its URLs; all or nothing, without spoiling the rest of the batch.
        ``account``: who owns it (a digest of the API key, '' when there are no keys)."""
        self._execute("SAVEPOINT create_job")
        try:
            self._execute(
                "INSERT INTO jobs (id, created, status, remaining, account, retry_of, callback_url)"
                " VALUES (?, {now}, ?, ?, ?, ?, ?)",
                (job_id, jobs.JOB_PENDING, len(urls), account, retry_of, callback_url))
            self._insert_urls(job_id, urls)
        except BaseException:
            self._execute("ROLLBACK TO SAVEPOINT create_job")
            raise
        finally:
            self._execute("RELEASE SAVEPOINT create_job")
        self._work_added = True

    def cancel(self, job_id: str, account: str) -> bool:
        """Fail a job's queued URLs (those in flight finish); False: no such job here."""
        found = self._execute("UPDATE jobs SET cancelled = 1 WHERE id = ? AND account = ?"
                              " RETURNING id", (job_id, account)).fetchone()
        if found is None:
            return False
        self._fail_queued("job_id = ?", (job_id,))
        return True

    def _fail_queued(self, condition: str, params: tuple) -> None:
        rows = self._execute(
            "UPDATE urls SET state = 'failed', reason = ?, " + CLEARED +
            f" WHERE state = 'queued' AND {condition} RETURNING job_id",
            (CANCELLED, *params)).fetchall()
        for (job_id,) in rows:
            self._count(job_id, jobs.FAILED)

    def claim(self, limit: int) -> List[Task]:
        """Take up to ``limit`` queued URLs (suspects excepted), oldest first, under a new lease."""
        if limit <= 0:
            return []
        return self._claim(0, limit)

    def claim_suspect(self) -> Optional[Task]:
        """Take the oldest queued suspect, to run alone (see ``quarantine``)."""
        tasks = self._claim(1, 1)
        return tasks[0] if tasks else None

    def _claim(self, suspect: int, limit: int) -> List[Task]:
        lease = secrets.randbits(62)
        rows = self._execute(
            "WITH picked AS MATERIALIZED (" + QUEUED_FIRST + " {skip_locked})"
            " UPDATE urls SET state = 'in_flight', owner = ?, lease = ?,"
            " attempts = attempts + 1, " + CLEARED +
            " WHERE id IN (SELECT id FROM picked) AND state = 'queued'"
            " RETURNING id, job_id, url, attempts, suspect",
            (suspect, limit, self.instance, lease)).fetchall()
        job_ids = sorted({r[1] for r in rows})
        if not job_ids:
            return []
        self._execute(
            f"UPDATE jobs SET status = ? WHERE id IN ({_marks(job_ids)}) AND status = ?",
            (jobs.JOB_IN_PROGRESS, *job_ids, jobs.JOB_PENDING))
        accounts = dict(self._execute(f"SELECT id, account FROM jobs WHERE id IN ({_marks(job_ids)})",
                                      job_ids).fetchall())
        return [Task(url_id=r[0], job_id=r[1], url=r[2], attempt=r[3], lease=lease,
                     suspect=bool(r[4]), account=accounts[r[1]]) for r in sorted(rows)]

    def suspects_waiting(self) -> bool:
        """True while a suspect waits for its solitary run (on any instance's queue)."""
        return self._execute(QUEUED_FIRST, (1, 1)).fetchone() is not None

    def finish(self, task: Task, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None,
               deletehash: Optional[str] = None) -> bool:
        """Record a URL's final state while this instance still holds its lease.

        Returns False, changing nothing, when the lease is gone (the URL was reaped and
        maybe finished elsewhere) or the URL was final already. A new link is recorded
        for the job's account, with an image id of its own and the host's delete hash."""
        row = self._execute(
            "UPDATE urls SET state = ?, attempts = {greatest}(attempts, ?), link = ?,"
            " reason = ?, sha256 = ?, reused = ?, owner = NULL, lease = NULL, " + CLEARED +
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ? RETURNING job_id",
            (state, attempts, link, reason, sha256, int(reused), task.url_id, self.instance,
             task.lease)).fetchone()
        if row is None:
            return False
        if state == jobs.COMPLETE and link:
            self._execute(
                "INSERT INTO links (link, sha256, host, created, account, image_id, deletehash)"
                " VALUES (?, ?, ?, {now}, ?, ?, ?) ON CONFLICT (link) DO NOTHING",
                (link, sha256, host, task.account, new_image_id(), deletehash))
            self._link_recorded(sha256, host, task.account)
        self._count(row[0], state)
        return True

    def finish_many(self, finishes: Sequence[Tuple[Task, str, dict]]) -> List[bool]:
        """``finish(task, state, **fields)`` for each, in order: what each returned."""
        return [self.finish(task, state, **fields) for task, state, fields in finishes]

    def _link_recorded(self, sha256: Optional[str], host: Optional[str], account: str) -> None:
        """A link is committed with this transaction (the shared dedup claim can go)."""

    def requeue(self, task: Task, *, refund: bool = False, suspect: bool = False) -> bool:
        """Hand an in-flight URL back to the queue.

        Its attempt stays counted when a crash cut it short (the URL may be the cause);
        ``refund`` gives it back when we interrupted it ourselves (a stop). ``suspect``
        marks it to run alone next."""
        done = self._execute(
            "UPDATE urls SET state = 'queued', owner = NULL, lease = NULL,"
            " attempts = attempts - ?, suspect = {greatest}(suspect, ?), " + CLEARED +
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?",
            (int(refund), int(suspect), task.url_id, self.instance, task.lease)).rowcount == 1
        self._work_added = self._requeued = self._work_added or done
        return done

    def set_attempts(self, task: Task, attempts: int) -> None:
        self._execute(
            "UPDATE urls SET attempts = {greatest}(attempts, ?)"
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?",
            (attempts, task.url_id, self.instance, task.lease))

    def set_waiting(self, task: Task, until: Optional[float], reason: Optional[str]) -> None:
        """Note (or clear, with None) that a URL waits for the host's limits until a moment."""
        self._execute(
            "UPDATE urls SET waiting_until = ?, waiting_reason = ?"
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?",
            (until, reason, task.url_id, self.instance, task.lease))

    def set_progress(self, task: Task, received: int, total: Optional[int]) -> None:
        """Bytes of the image fetched so far (visible from every instance)."""
        self._execute(
            "UPDATE urls SET progress_bytes = ?, progress_total = ?"
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?",
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
    def mark_deleted(self, image_id: str, account: str) -> bool:
        """The image is gone from its host: its link leaves the listing and dedup. False: no
        such image for this account, or deleted already."""
        return self._execute(
            "UPDATE links SET deleted = {now} WHERE image_id = ? AND account = ? AND deleted IS NULL",
            (image_id, account)).rowcount == 1

    # -- readers -----------------------------------------------------------------------------
    def read_job(self, job_id: str, account: Optional[str] = None):
        """(job row, URL rows in submission order, callback row or None) from one snapshot,
        or None; with ``account``, only a job of that account."""
        mine = "" if account is None else " AND account = ?"
        with self.reading() as conn:
            job = conn.execute(self.q(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{mine}"),
                               (job_id,) if account is None else (job_id, account)).fetchone()
            if job is None:
                return None
            rows = conn.execute(self.q(
                f"SELECT {URL_COLUMNS} FROM urls u LEFT JOIN links l ON l.link = u.link"
                " WHERE u.job_id = ? ORDER BY u.id"), (job_id,)).fetchall()
            callback = conn.execute(self.q(
                "SELECT state, attempts, last_error FROM outbox WHERE job_id = ?"
                " AND kind = 'webhook'"), (job_id,)).fetchone()
        return tuple(job), [tuple(r) for r in rows], None if callback is None else tuple(callback)

    def list_jobs(self, account: str, limit: int, before: Optional[int] = None):
        """(rows of an account's jobs, newest first, the cursor after them or None)."""
        with self.reading() as conn:
            rows = conn.execute(self.q(
                f"SELECT {LISTED_COLUMNS} FROM jobs WHERE account = ? AND {{seq}} < ?"
                " ORDER BY {seq} DESC LIMIT ?"),
                (account, NO_CURSOR if before is None else before, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = [tuple(r) for r in rows[:limit]]
        return [r[1:] for r in rows], (str(rows[-1][0]) if more else None)

    def image(self, image_id: str, account: str) -> Optional[tuple]:
        """(link, host, delete hash, SHA-256) of an image of this account not deleted yet,
        or None."""
        with self.reading() as conn:
            row = conn.execute(self.q(
                "SELECT link, host, deletehash, sha256 FROM links WHERE image_id = ?"
                " AND account = ? AND deleted IS NULL"), (image_id, account)).fetchone()
        return None if row is None else tuple(row)

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
            count = conn.execute("SELECT COUNT(*) FROM urls WHERE state = 'queued'").fetchone()[0]
            firsts = [row[0] for suspect in (0, 1)
                      for row in conn.execute(self.q(QUEUED_FIRST), (suspect, 1))]
            if not firsts:
                return count, 0.0
            oldest = conn.execute(self.q(
                "SELECT {now} - j.created FROM urls u JOIN jobs j ON j.id = u.job_id"
                " WHERE u.id = ?"), (min(firsts),)).fetchone()
        return count, max(0.0, oldest[0]) if oldest else 0.0

    def link_for(self, sha256: str, host: str, account: str = "") -> Optional[str]:
        """The link these bytes already have on this host for this account, if any and not
        deleted (for dedup: deleted bytes are uploaded afresh)."""
        with self.reading() as conn:
            row = conn.execute(self.q(OLDEST_LINK), (sha256, host, account)).fetchone()
        return row[0] if row else None


# The oldest queued URLs, plain (suspect 0) or suspects (1): what every turn with free slots
# asks for. The index urls_queued answers it, order included, however long the queue
# (schema.py, migration 6); with its suspects a filter, each turn read the whole queue.
QUEUED_FIRST = "SELECT id FROM urls WHERE state = 'queued' AND suspect = ? ORDER BY id LIMIT ?"
# The oldest live link of some bytes on a host for an account: what dedup reuses. The index
# links_for_dedup answers it, order included (schema.py, migration 5).
OLDEST_LINK = ("SELECT link FROM links WHERE sha256 = ? AND host = ? AND account = ?"
               " AND deleted IS NULL ORDER BY id LIMIT 1")
# An account's live links, oldest first, from links_listed; "id > 0" (always true) is that
# index's mark, so that no other query can be planned onto it (schema.py, migration 5).
LIVE_LINKS = ("SELECT link FROM links WHERE account = ? AND deleted IS NULL AND id > 0"
              " ORDER BY id")


def new_image_id() -> str:
    """An image's public id: 12 URL-safe characters, unguessable."""
    return secrets.token_urlsafe(9)


def _marks(values: Iterable) -> str:
    return ", ".join("?" for _ in values)
