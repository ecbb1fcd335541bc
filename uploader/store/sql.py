"""Every query of the store, written once for both backends.

``SqlStore`` holds the queries; ``sqlite.SqliteStore`` and ``postgres.PostgresStore``
supply connections, transactions and the few words where the dialects differ (the
clock, ``greatest``, ``FOR UPDATE SKIP LOCKED``, who counts as dead).

The queue lives in ``urls``. A URL is claimed by one instance at a time:

    queued --claim (owner = this instance, lease = a fresh token, attempts + 1)--> in_flight
    in_flight --finish, only while owner and lease still match--> complete | failed
    in_flight --requeue (worker died, stop) or reap (owner died)--> queued

A late result from an instance whose URLs were reaped no longer matches and is refused.
The writer side (``transaction`` and what runs inside it) belongs to one thread, the
dispatcher's; readers come from any thread and each read sees one snapshot.
"""
import contextlib
import secrets
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .. import jobs
from ..jobs import Task

URL_COLUMNS = ("id, url, state, link, reason, attempts, reused, waiting_until, waiting_reason,"
               " progress_bytes, progress_total")
JOB_COLUMNS = "id, created, finished, status"
SERVICE_DIED = "the service died while uploading, on each of {attempts} attempts"
_CLEARED = ("waiting_until = NULL, waiting_reason = NULL, progress_bytes = NULL,"
            " progress_total = NULL")


class SqlStore:
    """Queries shared by the backends; see the module docstring for the queue's rules."""

    dialect = ""
    NOW = ""  # SQL for the database's clock, in epoch seconds
    GREATEST = ""  # the two-argument maximum
    SKIP_LOCKED = ""  # appended to a claim's SELECT

    def __init__(self, instance: str):
        self.instance = instance
        self._queries: Dict[str, str] = {}
        self._job_deltas: Dict[str, int] = {}
        self._work_added = False

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

    def _dead_owners(self) -> Tuple[str, tuple]:
        """SQL condition (and its parameters) true of an in-flight row whose owner is dead."""
        raise NotImplementedError

    def _stream_cursor(self, conn):
        return conn.cursor()

    def close(self) -> None:
        """Release connections (and, for a backend that has them, locks and threads)."""

    # -- plumbing ------------------------------------------------------------------------------
    def q(self, sql: str) -> str:
        """``sql`` in this backend's dialect: macros filled in, placeholders converted."""
        done = self._queries.get(sql)
        if done is None:
            done = sql.format(now=self.NOW, greatest=self.GREATEST,
                              skip_locked=self.SKIP_LOCKED)
            done = self._queries[sql] = self._placeholders(done)
        return done

    def _placeholders(self, sql: str) -> str:
        return sql

    def _before_commit(self) -> None:
        """Apply what the transaction accumulated: job counters, in one order for everyone
        (so two instances finishing URLs of the same jobs never deadlock)."""
        deltas, self._job_deltas = self._job_deltas, {}
        for job_id in sorted(deltas):
            done = deltas[job_id]
            self._execute(
                "UPDATE jobs SET remaining = remaining - ?,"
                " status = CASE WHEN remaining - ? <= 0 THEN ? ELSE ? END,"
                " finished = CASE WHEN remaining - ? <= 0 THEN {now} ELSE finished END"
                " WHERE id = ?",
                (done, done, jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS, done, job_id))

    def _after_rollback(self) -> None:
        self._job_deltas.clear()
        self._work_added = False

    # -- the writer: jobs and the queue ------------------------------------------------------
    def create_job(self, job_id: str, urls: Sequence[str]) -> None:
        """Insert a job and its URLs; all or nothing, without spoiling the rest of the batch."""
        self._execute("SAVEPOINT create_job")
        try:
            self._execute(
                "INSERT INTO jobs (id, created, status, remaining) VALUES (?, {now}, ?, ?)",
                (job_id, jobs.JOB_PENDING, len(urls)))
            self._insert_urls(job_id, urls)
        except BaseException:
            self._execute("ROLLBACK TO SAVEPOINT create_job")
            raise
        finally:
            self._execute("RELEASE SAVEPOINT create_job")
        self._work_added = True

    def claim(self, limit: int) -> List[Task]:
        """Take up to ``limit`` queued URLs (suspects excepted), oldest first, under a new lease."""
        if limit <= 0:
            return []
        return self._claim("suspect = 0", limit)

    def claim_suspect(self) -> Optional[Task]:
        """Take the oldest queued suspect, to run alone (see ``quarantine``)."""
        tasks = self._claim("suspect = 1", 1)
        return tasks[0] if tasks else None

    def _claim(self, condition: str, limit: int) -> List[Task]:
        lease = secrets.randbits(62)
        rows = self._execute(
            "WITH picked AS MATERIALIZED (SELECT id FROM urls WHERE state = 'queued' AND "
            + condition + " ORDER BY id LIMIT ? {skip_locked})"
            " UPDATE urls SET state = 'in_flight', owner = ?, lease = ?,"
            " attempts = attempts + 1, " + _CLEARED +
            " WHERE id IN (SELECT id FROM picked) AND state = 'queued'"
            " RETURNING id, job_id, url, attempts, suspect",
            (limit, self.instance, lease)).fetchall()
        tasks = [Task(url_id=r[0], job_id=r[1], url=r[2], attempt=r[3], lease=lease,
                      suspect=bool(r[4])) for r in sorted(rows)]
        job_ids = sorted({t.job_id for t in tasks})
        if job_ids:
            self._execute(
                f"UPDATE jobs SET status = ? WHERE id IN ({_marks(job_ids)}) AND status = ?",
                (jobs.JOB_IN_PROGRESS, *job_ids, jobs.JOB_PENDING))
        return tasks

    def suspects_waiting(self) -> bool:
        """True while a suspect waits for its solitary run (on any instance's queue)."""
        return self._execute(
            "SELECT 1 FROM urls WHERE state = 'queued' AND suspect = 1 LIMIT 1").fetchone() is not None

    def finish(self, task: Task, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None) -> bool:
        """Record a URL's final state while this instance still holds its lease.

        Returns False, changing nothing, when the lease is gone (the URL was reaped and
        maybe finished elsewhere) or the URL was final already."""
        row = self._execute(
            "UPDATE urls SET state = ?, attempts = {greatest}(attempts, ?), link = ?,"
            " reason = ?, sha256 = ?, reused = ?, owner = NULL, lease = NULL, " + _CLEARED +
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ? RETURNING job_id",
            (state, attempts, link, reason, sha256, int(reused), task.url_id, self.instance,
             task.lease)).fetchone()
        if row is None:
            return False
        if state == jobs.COMPLETE and link:
            self._execute(
                "INSERT INTO links (link, sha256, host, created) VALUES (?, ?, ?, {now})"
                " ON CONFLICT (link) DO NOTHING", (link, sha256, host))
            self._link_recorded(sha256, host)
        self._job_deltas[row[0]] = self._job_deltas.get(row[0], 0) + 1
        return True

    def _link_recorded(self, sha256: Optional[str], host: Optional[str]) -> None:
        """A link is committed with this transaction (the shared dedup claim can go)."""

    def requeue(self, task: Task, *, refund: bool = False, suspect: bool = False) -> bool:
        """Hand an in-flight URL back to the queue.

        Its attempt stays counted when a crash cut it short (the URL may be the cause);
        ``refund`` gives it back when we interrupted it ourselves (a stop). ``suspect``
        marks it to run alone next."""
        done = self._execute(
            "UPDATE urls SET state = 'queued', owner = NULL, lease = NULL,"
            " attempts = attempts - ?, suspect = {greatest}(suspect, ?), " + _CLEARED +
            " WHERE id = ? AND state = 'in_flight' AND owner = ? AND lease = ?",
            (int(refund), int(suspect), task.url_id, self.instance, task.lease)).rowcount == 1
        self._work_added = self._work_added or done
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
                "UPDATE urls SET state = ?, reason = ?, owner = NULL, lease = NULL, " + _CLEARED +
                " WHERE id = ? AND state = 'in_flight'", (jobs.FAILED, reason, url_id))
            self._job_deltas[job_id] = self._job_deltas.get(job_id, 0) + 1
            failed.append((url_id, job_id, url, attempts, reason))
        requeued = self._execute(
            "UPDATE urls SET state = 'queued', owner = NULL, lease = NULL, " + _CLEARED +
            f" WHERE state = 'in_flight' AND {dead}", params).rowcount
        self._work_added = self._work_added or requeued > 0
        return requeued, failed

    # -- readers -----------------------------------------------------------------------------
    def read_job(self, job_id: str) -> Optional[Tuple[tuple, List[tuple]]]:
        """(job row, URL rows in submission order) from one snapshot, or None."""
        with self.reading() as conn:
            job = conn.execute(self.q(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"),
                               (job_id,)).fetchone()
            if job is None:
                return None
            rows = conn.execute(self.q(f"SELECT {URL_COLUMNS} FROM urls WHERE job_id = ?"
                                       " ORDER BY id"), (job_id,)).fetchall()
        return tuple(job), [tuple(r) for r in rows]

    @contextlib.contextmanager
    def links(self, page_size: int):
        """``with store.links(n) as pages:`` an iterator of pages of links, oldest first,
        all from one snapshot however long the reading takes."""
        with self.reading() as conn:
            cursor = self._stream_cursor(conn)
            cursor.execute(self.q("SELECT link FROM links ORDER BY id"))

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

    def queued_count(self) -> int:
        """URLs waiting for a worker slot (uses the partial index of queued URLs)."""
        with self.reading() as conn:
            return conn.execute("SELECT COUNT(*) FROM urls WHERE state = 'queued'").fetchone()[0]

    def link_for(self, sha256: str, host: str) -> Optional[str]:
        """The link these bytes already have on this host, if any (for dedup)."""
        with self.reading() as conn:
            row = conn.execute(self.q("SELECT link FROM links WHERE sha256 = ? AND host = ?"
                                      " ORDER BY id LIMIT 1"), (sha256, host)).fetchone()
        return row[0] if row else None


def _marks(values: Iterable) -> str:
    return ", ".join("?" for _ in values)
