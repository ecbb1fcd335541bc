"""The SQLite store: jobs, per-URL state and every uploaded link.

One thread (the dispatcher's) writes, through ``StoreWriter``; Tornado handlers read
through their own connections on a small thread pool, so a slow read never blocks the
event loop and WAL lets readers run beside the writer. Every change the writer makes is
committed before anyone can see it: the API only ever answers from committed rows.
"""
import os
import sqlite3
import threading
from typing import Iterable, List, Optional, Sequence, Tuple

from . import jobs
from .jobs import Task

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    created   REAL NOT NULL,
    finished  REAL,
    status    TEXT NOT NULL,
    remaining INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS urls (
    id       INTEGER PRIMARY KEY,
    job_id   TEXT NOT NULL REFERENCES jobs(id),
    url      TEXT NOT NULL,
    state    TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    link     TEXT,
    reason   TEXT,
    sha256   TEXT,
    reused   INTEGER NOT NULL DEFAULT 0,
    waiting_until  REAL,
    waiting_reason TEXT
);
CREATE INDEX IF NOT EXISTS urls_by_job ON urls(job_id, id);
CREATE INDEX IF NOT EXISTS urls_queued ON urls(id) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS links (
    id      INTEGER PRIMARY KEY,
    link    TEXT NOT NULL UNIQUE,
    sha256  TEXT,
    host    TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS links_by_sha ON links(sha256, host);
"""


def connect(path: str) -> sqlite3.Connection:
    """A connection with the settings every user of the store needs."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a committed result survives power loss
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def open_store(path: str) -> "StoreWriter":
    """Create the file and schema if needed and return the (only) writer."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    conn = connect(path)
    conn.executescript(SCHEMA)
    return StoreWriter(conn)


class StoreWriter:
    """All writes. Callers group them with ``transaction()`` so a batch commits once."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def transaction(self):
        """``with writer.transaction():`` commits on success, rolls back on error."""
        return _Transaction(self.conn)

    def create_job(self, job_id: str, urls: Sequence[str], created: float) -> None:
        """Insert a job and its URLs; all or nothing, without spoiling the rest of the batch."""
        self.conn.execute("SAVEPOINT create_job")
        try:
            self.conn.execute(
                "INSERT INTO jobs (id, created, status, remaining) VALUES (?, ?, ?, ?)",
                (job_id, created, jobs.JOB_PENDING, len(urls)),
            )
            self.conn.executemany(
                "INSERT INTO urls (job_id, url, state) VALUES (?, ?, ?)",
                ((job_id, url, jobs.QUEUED) for url in urls),
            )
        except BaseException:
            self.conn.execute("ROLLBACK TO create_job")
            raise
        finally:
            self.conn.execute("RELEASE create_job")

    def hand_back_in_flight(self, *, max_attempts: int, when: float) -> Tuple[int, List[tuple]]:
        """At start-up: URLs a dead process left in flight are queued again.

        One that already used every attempt (each cut short by a crash) fails instead, so
        a URL that kills the whole service cannot loop forever. Returns (how many were
        queued again, [(url id, job id, url, attempts, reason)] of those that failed).
        """
        rows = self.conn.execute(
            "SELECT id, job_id, url, attempts FROM urls WHERE state = ? AND attempts >= ?",
            (jobs.IN_FLIGHT, max_attempts)).fetchall()
        failed = []
        for url_id, job_id, url, attempts in rows:
            reason = f"the service died while uploading, on each of {attempts} attempts"
            self.finish(url_id, jobs.FAILED, attempts=attempts, reason=reason, when=when)
            failed.append((url_id, job_id, url, attempts, reason))
        cursor = self.conn.execute(
            "UPDATE urls SET state = ?, waiting_until = NULL, waiting_reason = NULL WHERE state = ?",
            (jobs.QUEUED, jobs.IN_FLIGHT))
        return cursor.rowcount, failed

    def take_queued(self, limit: int, exclude: Iterable[int] = ()) -> List[Task]:
        """Mark up to ``limit`` queued URLs in flight, oldest first, and return them as tasks.

        ``exclude``: a few URL ids to leave queued (suspects waiting for a solitary run)."""
        exclude = list(exclude)
        if limit <= 0:
            return []
        rows = self.conn.execute(
            "SELECT id, job_id, url, attempts FROM urls WHERE state = ?"
            f" AND id NOT IN ({','.join('?' * len(exclude))}) ORDER BY id LIMIT ?",
            (jobs.QUEUED, *exclude, limit),
        ).fetchall()
        return self._dispatch(rows)

    def take_url(self, url_id: int) -> Optional[Task]:
        """Mark one queued URL in flight and return it as a task (None if it is not queued)."""
        rows = self.conn.execute(
            "SELECT id, job_id, url, attempts FROM urls WHERE id = ? AND state = ?",
            (url_id, jobs.QUEUED)).fetchall()
        tasks = self._dispatch(rows)
        return tasks[0] if tasks else None

    def _dispatch(self, rows) -> List[Task]:
        tasks = [Task(url_id=r[0], job_id=r[1], url=r[2], attempt=r[3] + 1) for r in rows]
        self.conn.executemany(
            "UPDATE urls SET state = ?, attempts = ? WHERE id = ?",
            ((jobs.IN_FLIGHT, t.attempt, t.url_id) for t in tasks),
        )
        job_ids = {t.job_id for t in tasks}
        self.conn.executemany(
            "UPDATE jobs SET status = ? WHERE id = ? AND status = ?",
            ((jobs.JOB_IN_PROGRESS, job_id, jobs.JOB_PENDING) for job_id in job_ids),
        )
        return tasks

    def set_attempts(self, url_id: int, attempts: int) -> None:
        self.conn.execute(
            "UPDATE urls SET attempts = MAX(attempts, ?) WHERE id = ?", (attempts, url_id)
        )

    def requeue(self, url_id: int, *, refund: bool = False) -> None:
        """Hand an in-flight URL back to the queue.

        Its attempt stays counted when a crash cut it short (the URL may be the cause);
        ``refund`` gives it back when we interrupted it ourselves (a stop).
        """
        self.conn.execute(
            "UPDATE urls SET state = ?, attempts = attempts - ?, waiting_until = NULL,"
            " waiting_reason = NULL WHERE id = ? AND state = ?",
            (jobs.QUEUED, int(refund), url_id, jobs.IN_FLIGHT),
        )

    def set_waiting(self, url_id: int, until: Optional[float], reason: Optional[str]) -> None:
        """Note (or clear, with None) that a URL waits for the host's limits until a moment."""
        self.conn.execute(
            "UPDATE urls SET waiting_until = ?, waiting_reason = ? WHERE id = ? AND state = ?",
            (until, reason, url_id, jobs.IN_FLIGHT))

    def finish(self, url_id: int, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None, when: float) -> bool:
        """Record a URL's final state. Returns False (and changes nothing) if it was final already."""
        row = self.conn.execute("SELECT job_id, state FROM urls WHERE id = ?", (url_id,)).fetchone()
        if row is None or row[1] in jobs.FINAL_STATES:
            return False
        job_id = row[0]
        self.conn.execute(
            "UPDATE urls SET state = ?, attempts = MAX(attempts, ?), link = ?, reason = ?,"
            " sha256 = ?, reused = ?, waiting_until = NULL, waiting_reason = NULL WHERE id = ?",
            (state, attempts, link, reason, sha256, int(reused), url_id),
        )
        if state == jobs.COMPLETE and link:
            self.conn.execute(
                "INSERT OR IGNORE INTO links (link, sha256, host, created) VALUES (?, ?, ?, ?)",
                (link, sha256, host, when),
            )
        self.conn.execute(
            "UPDATE jobs SET remaining = remaining - 1,"
            " status = CASE WHEN remaining = 1 THEN ? ELSE ? END,"
            " finished = CASE WHEN remaining = 1 THEN ? ELSE finished END"
            " WHERE id = ?",
            (jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS, when, job_id),
        )
        return True


class _Transaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


class StoreReader:
    """Read-only queries, one connection per thread of the reading pool."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def job(self, job_id: str, progress: Optional[dict] = None) -> Optional[dict]:
        """The job as the API shows it, or None if there is no such job.

        ``progress`` maps URL ids to (bytes fetched, total) for URLs in flight; it lives in
        the dispatcher's memory, not in the store."""
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot, so the job row and its URLs agree
        try:
            job = conn.execute(
                "SELECT id, created, finished, status FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if job is None:
                return None
            rows = conn.execute(
                "SELECT id, url, state, link, reason, attempts, reused, waiting_until,"
                " waiting_reason FROM urls"
                " WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return render_job(job, rows, progress or {})

    def links_after(self, after_id: int, limit: int) -> List[tuple]:
        """A page of (id, link) in upload order, for streaming the full listing."""
        return self._conn().execute(
            "SELECT id, link FROM links WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()

    def queued_count(self) -> int:
        """URLs waiting for a worker slot (uses the partial index of queued URLs)."""
        return self._conn().execute("SELECT COUNT(*) FROM urls WHERE state = 'queued'").fetchone()[0]

    def writable(self) -> bool:
        """True when the store accepts a write (for health checks)."""
        try:
            self._conn().execute("BEGIN IMMEDIATE")
            self._conn().execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False


def render_job(job: tuple, rows: Iterable[tuple], progress: dict) -> dict:
    """The job body: the seed's keys plus ``urls``: each URL's state, link or reason, attempts,
    whether its link was reused from identical bytes, what it is waiting for, if anything,
    and how much of its image has been fetched while it is in flight."""
    job_id, created, finished, status = job
    pending, complete, failed, details = [], [], [], []
    for url_id, url, state, link, reason, attempts, reused, waiting_until, waiting_reason in rows:
        if state == jobs.COMPLETE:
            complete.append(link)
        elif state == jobs.FAILED:
            failed.append(url)
        else:
            pending.append(url)
        details.append({
            "url": url, "state": state, "link": link, "reason": reason,
            "attempts": attempts, "reused": bool(reused),
            "waiting": None if waiting_until is None else {
                "until": jobs.format_timestamp(waiting_until), "reason": waiting_reason},
            "progress": _progress(progress.get(url_id)) if state == jobs.IN_FLIGHT else None,
        })
    return {
        "id": job_id,
        "created": jobs.format_timestamp(created),
        "finished": jobs.format_timestamp(finished) if status == jobs.JOB_COMPLETE else None,
        "status": status,
        "uploaded": {"pending": pending, "complete": complete, "failed": failed},
        "urls": details,
    }



def _progress(entry) -> dict:
    received, total = entry or (0, None)
    return {"bytes": received, "total": total}
