"""The embedded store: one SQLite file (WAL, ``synchronous=FULL``), one instance.

The dispatcher's thread writes through one connection; readers use their own, one per
thread of the reading pool, so WAL lets them run beside the writer. A lock file beside
the store keeps a second instance out (the operating system drops the lock when a
process dies, even by SIGKILL): every URL in flight under another owner was left by a
dead run, so ``reap`` hands it all back at once.
"""
import contextlib
import fcntl
import os
import sqlite3
import threading

from ...errors import StartError, StoreFull, StoreInUse, StoreUnavailable
from .. import schema
from ..sql import LIVE_LINKS, SqlStore

SQLITE_FULL = 13  # the disk (or max_page_count) has no room: sqlite3.SQLITE_FULL from 3.11


def connect(path: str) -> sqlite3.Connection:
    """A connection with the settings every user of the store needs."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a committed result survives power loss
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteStore(SqlStore):
    """The embedded ``protocols.Store``: this instance alone, no leases to renew."""

    dialect = "sqlite"
    clustered = False
    lease_seconds = None  # the file's lock keeps every other instance out
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    GREATEST = "max"
    SEQ = "rowid"  # jobs are a rowid table: the rowid is their order of creation
    PICKED = "IN (SELECT id FROM picked)"
    BY_TURNS, BY_QUEUED = "INDEXED BY urls_turns", "INDEXED BY urls_queued"  # (no statistics)
    RANKED = (  # the keys' rotations merged, lowest round first (a recursive CTE with an
        # ORDER BY takes its rows from a priority queue), each URL bringing in its key's next,
        # until the limit: one probe per key and one per URL taken
        "ranked (account, round, turn, id) AS ("
        " SELECT q.account, q.busy + 1, h.turn, h.id FROM queues q JOIN urls h ON h.id = q.head"
        " UNION ALL SELECT r.account, r.round + 1, h.turn, h.id FROM ranked r JOIN urls h"
        " ON h.id = (SELECT id FROM urls INDEXED BY urls_turns WHERE state = 'queued'"
        " AND suspect = 0 AND account = r.account AND (turn, id) > (r.turn, r.id)"
        " ORDER BY turn, id LIMIT 1)"
        " ORDER BY 2, 4 LIMIT (SELECT n FROM wanted))")
    SCHEMA_WORDS = {"id": "INTEGER PRIMARY KEY", "real": "REAL", "job_seq": "SELECT 1",
                    "account_seq": "account",  # an index entry ends with the rowid anyway
                    "links_ids_go_on": "SELECT 1"}  # a rowid goes on from the largest

    def __init__(self, path: str, instance: str, *, read_only: bool = False):
        """``read_only``: a reader beside the instance that holds the store (no lock, no
        writes), as the dedup index in the multiprocessing manager is."""
        super().__init__(instance)
        self.path = path
        self.where = os.path.abspath(path)
        self._local = threading.local()
        self._lock = self._writer = self._pruner = None
        if read_only:
            return
        try:
            os.makedirs(os.path.dirname(self.where), exist_ok=True)
            self._lock = _lock_store(self.where)
            self._writer = connect(path)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            if self._lock is not None:
                self._lock.close()
            raise StartError(f"the SQLite store {path} cannot be opened: {exc}") from None

    def _migrate(self) -> None:
        with self.transaction():
            schema.migrate(self._execute, self.dialect, self.SCHEMA_WORDS)

    # -- plumbing ----------------------------------------------------------------------------
    def _execute(self, sql, params=()):
        return self._writer.execute(self.q(sql), params)

    def _executemany(self, sql, rows):
        self._writer.executemany(self.q(sql), rows)

    @contextlib.contextmanager
    def _driver_errors(self):
        try:
            yield
        except sqlite3.OperationalError as exc:  # disk full, I/O error
            raise unavailable(self.path, exc) from exc

    @contextlib.contextmanager
    def transaction(self):
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise unavailable(self.path, exc) from exc
        try:
            yield self
            self._before_commit()
            self._writer.execute("COMMIT")
        except BaseException as exc:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            self._after_rollback()
            if isinstance(exc, sqlite3.OperationalError):  # disk full, I/O error
                raise unavailable(self.path, exc) from exc
            raise
        self._work_added = False

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    @contextlib.contextmanager
    def reading(self, dedicated: bool = False):
        conn = connect(self.path) if dedicated else self._reader()
        conn.execute("BEGIN")  # one snapshot for every query inside
        try:
            yield conn
        finally:
            conn.execute("COMMIT")
            if dedicated:
                conn.close()

    @contextlib.contextmanager
    def links(self, page_size: int, account: str = ""):
        # Streamed across threads of the reading pool: a connection of its own.
        with self.reading(dedicated=True) as conn:
            cursor = conn.execute(LIVE_LINKS, (account,))

            def pages():
                while rows := cursor.fetchmany(page_size):
                    yield [r[0] for r in rows]

            yield pages()

    @contextlib.contextmanager
    def _pruning(self):
        """A transaction on the pruner's own connection (``prune``): the writer's lock for
        one batch at a time, so the dispatcher's commits wait a few milliseconds at most."""
        try:
            if self._pruner is None:
                self._pruner = connect(self.path)
            conn = self._pruner
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params=(): conn.execute(self.q(sql), params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # busy past the timeout, disk full, I/O error
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    def end_pruning(self) -> None:
        if self._pruner is not None:
            self._pruner.close()
            self._pruner = None

    def _dead_owners(self, column="owner"):
        # The lock guarantees no other instance runs: every other owner is a dead run.
        return f"({column} IS NULL OR {column} <> ?)", (self.instance,)

    def heartbeat(self) -> bool:
        """No lease to renew: the lock file keeps other instances out."""
        return True

    def listen(self, on_work, on_pause, on_state) -> bool:
        """No other instance adds work or pauses the gate: nothing to hear."""
        return False

    def problem(self):
        """Why the store cannot serve now, or None (for health checks)."""
        try:
            conn = self._reader()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return None
        except sqlite3.Error as exc:
            return f"SQLite store {self.path} is not writable: {exc}"

    def close(self) -> None:
        self.end_pruning()
        for resource in (self._writer, self._lock):
            if resource is not None:
                resource.close()


def unavailable(path: str, exc: sqlite3.OperationalError) -> StoreUnavailable:
    """The store's error for SQLite's: ``StoreFull`` when the disk has no room."""
    if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or str(exc) == "database or disk is full":
        return StoreFull(f"SQLite store {path} is full: {exc}")
    return StoreUnavailable(f"SQLite store {path}: {exc}")


def _lock_store(path: str):
    """Hold ``<store>.lock`` for this process's life, or say who holds it."""
    lock = open(path + ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StoreInUse(
            f"the store {path} is in use by another instance (pid {holder}); the embedded "
            "store runs one instance: set storage.url (env DATABASE_URL) to a PostgreSQL "
            "database to run several") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
