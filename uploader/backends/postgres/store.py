"""The shared store: PostgreSQL, where any number of instances meet and act as one service.

Each instance registers a row in ``instances`` and renews it (``heartbeat``) every few
seconds: that row is the lease on every URL the instance holds in flight, on its dedup
claims and its upload grants. An instance whose heartbeat is older than
``storage.lease_seconds`` is dead: any live instance deletes its row, its claims and
grants, and hands its URLs back to the queue (``reap``).

Claims use ``FOR UPDATE SKIP LOCKED`` in a materialised CTE, so instances never wait for
each other's rows and a claim never takes more than it asked for. A transaction that
adds work sends ``NOTIFY uploader_work``; idle instances ``LISTEN`` for it (and poll as a
fallback). Time comes from the database's clock, so hosts with skewed clocks agree.

Connections (``docs/operating-postgresql.md`` counts them): the dispatcher's thread
writes through a connection of its own, re-made after a failure; readers take one from a
small pool (checked on checkout once idle for a second: a database restart fails at most
reads on connections used within that second); one connection listens. Nothing lives in
a session beyond its transaction, so ``storage.url`` may name a transaction pooler
(PgBouncer's ``pool_mode = transaction``): a check at start (``sessions_last``) finds
one, and then nothing is prepared on the server and, unless ``storage.listen_url`` names
a connection that keeps its session, nobody listens: instances poll. Every driver error
of an unreachable database becomes ``StoreUnavailable``; a deadlock or serialization
failure becomes ``StoreConflict``; a refused connection is noted (``refusals``).
"""
import contextlib
import logging
import os
import re
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict

import psycopg
import psycopg_pool
from psycopg import IsolationLevel
from psycopg_pool.base import AttemptWithBackoff

from ... import jobs
from ...errors import StoreConflict, StoreFull, StoreUnavailable
from .. import schema
from . import CHANNEL
from ..prune import PRUNE_LOCK
from . import queries, tickets
from .queries import placeholders
from .refusals import refusals
from ..sql import CLEARED, NEW_LINK, NEW_LINK_ONCE, TAKEN, SqlStore, new_image_id

log = logging.getLogger(__name__)

MIGRATION_LOCK = 4_771_020_001  # pg_advisory_xact_lock key: one migrating instance at a time
CONNECT_TIMEOUT = 5
LISTEN_RETRY_SECONDS = 1.0
CHECK_AFTER_IDLE = 1.0  # seconds: a pooled connection idle this long is checked when taken
RECONNECT_MAX_SECONDS = 2.0  # a pool tries to reconnect at least this often during an outage
NOTICE_SECONDS = 1.0  # how long the check at start waits for its notification
APPLICATION = "image-service"  # application_name, with the connection's role after it


def connection_kwargs(role: str, sessions: bool = True) -> dict:
    """Settings of every connection: fail fast when the server is gone, say who we are
    (in ``pg_stat_activity``), and prepare the hot statements only where a session
    outlives its transaction (not behind a transaction pooler: another client's
    connection would get them, or lack them)."""
    return {"connect_timeout": CONNECT_TIMEOUT, "application_name": f"{APPLICATION} {role}",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3, "prepare_threshold": 5 if sessions else None}


class _Noted(psycopg.Connection):
    """A connection whose refusals for want of room are noted (``refusals``), under the
    role its ``application_name`` names."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs):
        role = kwargs.get("application_name", "").removeprefix(APPLICATION).strip()
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            refusals.failed(role, exc)
            raise
        refusals.connected(role)
        return conn


def connect(url: str, *, role: str, sessions: bool = True, **settings) -> psycopg.Connection:
    with driver_errors():
        return _Noted.connect(url, **{**connection_kwargs(role, sessions), **settings})


def make_pool(url: str, *, max_size: int, name: str, read_only: bool = False,
              sessions: bool = True):
    """A small pool. A connection idle for ``CHECK_AFTER_IDLE`` seconds is checked when
    taken, so a server restarted meanwhile costs no failed call; one given back in good
    order less than that ago is not: on the hot path (a worker takes one several times
    per URL) the check was a round trip, 0.3 of a cluster's 5.8 ms of CPU per URL. A
    restart within that second costs a call that fails as ``StoreUnavailable`` and is
    made again (``postgres.coordinator.Rows``, the dispatcher's store retry). An unreachable
    server gives ``StoreUnavailable`` after a few seconds."""
    returned = weakref.WeakKeyDictionary()  # connection -> when it was given back

    def configure(conn):
        if read_only:  # one snapshot for every query of a read
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        else:
            conn.autocommit = True

    def note_return(conn):  # called for connections given back idle, before they rejoin
        returned[conn] = time.monotonic()

    def check(conn):
        given_back = returned.get(conn)
        if given_back is None or time.monotonic() - given_back >= CHECK_AFTER_IDLE:
            psycopg_pool.ConnectionPool.check_connection(conn)

    return Pool(
        url, kwargs=connection_kwargs(name, sessions), min_size=1, max_size=max_size,
        name=name, connection_class=_Noted,
        configure=configure, reset=note_return, check=check,
        timeout=CONNECT_TIMEOUT, reconnect_timeout=3600, open=True)


class CappedBackoff(AttemptWithBackoff):
    """psycopg_pool's reconnection backoff (1 s, doubling, with jitter), capped: uncapped,
    a 35 s outage had grown it to 16-32 s, and the pool came back that long after the
    database did."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_SECONDS)


class Pool(psycopg_pool.ConnectionPool):
    """psycopg_pool's pool, reconnecting at least every ``RECONNECT_MAX_SECONDS`` while the
    server is away. The pool makes its attempt state in ``_add_connection`` (it takes no
    setting for a cap); a test checks that this still holds for the installed version."""

    def _add_connection(self, attempt, growing=False):
        if attempt is None:
            attempt = CappedBackoff(timeout=self.reconnect_timeout)
        return super()._add_connection(attempt, growing=growing)


@dataclass(frozen=True)
class Database:
    """How this instance's processes reach PostgreSQL (it pickles: each worker gets it).
    ``sessions``: whether a session outlives its transaction at ``url`` (False behind a
    transaction pooler, as ``sessions_last`` found at start); ``shared_connections``: the
    size of each process's pool for the shared state (``pool``)."""

    url: str
    sessions: bool = True
    shared_connections: int = 1

    def connect(self, *, role: str, **settings) -> psycopg.Connection:
        return connect(self.url, role=role, sessions=self.sessions, **settings)

    def pool(self):
        """This process's pool for the shared state (and, in the front end, for pruning):
        one per process, made on first use (after the fork, in a worker)."""
        with _pools_lock:
            if self not in _pools:
                _pools[self] = make_pool(self.url, max_size=self.shared_connections,
                                         name="shared", sessions=self.sessions)
            return _pools[self]


_pools: Dict[Database, object] = {}
_pools_lock = threading.Lock()


def sessions_last(url: str, timeout: float = NOTICE_SECONDS) -> bool:
    """Does a session outlive its transaction at ``url``, so that LISTEN is delivered and
    a statement prepared stays where it was prepared? Not behind a transaction pooler.

    LISTEN on a channel of our own and commit; the channel must be listed in the next
    transaction, and a NOTIFY from another connection must reach us, not that connection:
    a pooler that hands its server connections out last in, first out gives the next
    transaction (ours, or the notifier's) the very connection that listened, so the list
    alone proves nothing."""
    channel = f"uploader_check_{secrets.token_hex(6)}"
    with contextlib.closing(connect(url, role="check", sessions=False)) as listener, \
            contextlib.closing(connect(url, role="check", sessions=False,
                                       autocommit=True)) as notifier, driver_errors():
        listener.execute(f"LISTEN {channel}")
        listener.commit()
        listed = listener.execute("SELECT %s IN (SELECT pg_listening_channels())",
                                  (channel,)).fetchone()[0]
        listener.commit()
        if not listed:
            return False
        heard_elsewhere = []
        notifier.add_notify_handler(heard_elsewhere.append)
        notifier.execute(f"NOTIFY {channel}")
        if heard_elsewhere:  # the notifier was given our session: a transaction pooler
            return False
        return any(True for _ in listener.notifies(timeout=timeout, stop_after=1))


@contextlib.contextmanager
def driver_errors():
    """Translate the driver's errors into the store's: unavailable, full, or a lost race."""
    try:
        yield
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
        raise StoreConflict(f"PostgreSQL: {exc}".strip()) from exc
    except psycopg.errors.DiskFull as exc:  # SQLSTATE 53100: the server's disk has no room
        raise StoreFull(f"PostgreSQL is full: {exc}".strip()) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError,
            psycopg.errors.IdleInTransactionSessionTimeout) as exc:  # the server hung up
        raise StoreUnavailable(login_refused(exc) or f"PostgreSQL unreachable: {exc}".strip()) \
            from exc


# How the server words a refused login (libpq gives it no SQLSTATE): the password, an
# unknown role, no password at all, or another method (ident, peer, cert) failing.
_LOGIN_REFUSED = re.compile(r'password authentication failed|role "[^"]*" does not exist'
                            r'|no password supplied|\w+ authentication failed')


def login_refused(exc: Exception):
    """Why the server refused our login, naming the user, or None if it was not that."""
    found = _LOGIN_REFUSED.search(str(exc))
    if found is None:
        return None
    user = getattr(getattr(exc, "pgconn", None), "user", None) or b"?"
    reason = {"password authentication failed": "the password was refused",
              "no password supplied": "no password was given"}.get(found.group(0), found.group(0))
    return (f'PostgreSQL authentication failed for user "{user.decode(errors="replace")}": '
            f"{reason}; check the user and password of storage.url (or env DATABASE_URL)")


def migrate(conn: psycopg.Connection) -> None:
    """Create or migrate the schema; instances starting together take turns."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        schema.migrate(lambda sql, params=(): conn.execute(
            placeholders(sql) if params else sql, params or None),
            PostgresStore.dialect, PostgresStore.SCHEMA_WORDS)


class PostgresStore(SqlStore):
    """The shared ``protocols.Store``: any number of instances, each under a lease."""

    dialect = "postgresql"
    clustered = True
    lease_seconds: float  # this instance's, from the configuration (set in __init__)
    NOW = queries.NOW
    GREATEST = "greatest"
    SKIP_LOCKED = "FOR UPDATE SKIP LOCKED"
    SEQ = "seq"
    PICKED = "= ANY(ARRAY(SELECT id FROM picked))"  # an index lookup each, whatever the estimates
    RANKED = (  # each key's first few, locked as they are read (what another claim
        # holds is skipped): none for a key behind ``wanted`` others, at most
        # wanted + 1 - (keys as busy or less) for the others; nothing else can be taken.
        # The outer LIMIT never binds (see _fair_claim_params): it tells the planner how
        # few rows come (it took LIMIT q.most for a tenth of a key's queue, costed a claim
        # of 16 from one key's 100,000 at 437,000 and compiled it with JIT: 150 ms)
        "ranked AS (SELECT id, busy + row_number() OVER (PARTITION BY account"
        " ORDER BY turn, id) AS round FROM (SELECT q.account, q.busy, h.id, h.turn"
        " FROM queues q CROSS JOIN LATERAL (SELECT id, turn FROM urls WHERE state = 'queued'"
        " AND suspect = 0 AND account = q.account ORDER BY turn, id"
        " LIMIT CASE WHEN q.place > q.wanted THEN 0 ELSE greatest(1, q.wanted + 1 - q.level) END"
        " FOR UPDATE SKIP LOCKED) h LIMIT ?) AS c)")
    SCHEMA_WORDS = {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                    "real": "DOUBLE PRECISION",
                    "job_seq": "ALTER TABLE jobs ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY",
                    "account_seq": "account, seq",
                    "links_ids_go_on": "SELECT setval(pg_get_serial_sequence('links', 'id'),"
                                       " (SELECT COALESCE(MAX(id), 0) + 1 FROM links), false)"}

    def __init__(self, url: str, instance: str, *, lease_seconds: float, listen_url: str = "",
                 read_connections: int = 2, shared_connections: int = 1):
        super().__init__(instance)
        self.url = url
        self.lease_seconds = lease_seconds
        self._waits = []  # (URL id, lease, until, reason): see set_waiting_many
        self._writer = None
        self._listener = None
        self._closing = threading.Event()
        with contextlib.closing(connect(url, role="start", sessions=False,
                                        autocommit=True)) as conn, driver_errors():
            migrate(conn)
        self.database = Database(url, sessions_last(url), shared_connections)
        self.listen_url = self._listen_url(listen_url)
        # Whatever the server may hold on to once our transaction ends: a transaction it
        # finds idle for longer than a lease is ended (see _conn).
        self._idle_timeout = ("idle_in_transaction_session_timeout ="
                              f" {max(1, round(lease_seconds * 1000))}")
        self._begin = ("BEGIN" if self.database.sessions
                       else f"BEGIN; SET LOCAL {self._idle_timeout}")
        self._pool = make_pool(url, max_size=read_connections, name="readers", read_only=True,
                               sessions=self.database.sessions)
        # A listing holds a reader's connection from its first page to its last, and takes
        # a reader thread for each page: were every connection held so, threads waiting for
        # one would keep the listings from going on. One is always left for the rest.
        self.listings_at_once = read_connections - 1
        with self.transaction():
            self._register()

    def _listen_url(self, configured: str) -> str:
        """Where to LISTEN ("": nowhere, poll): ``storage.listen_url`` if it delivers,
        else ``storage.url`` if that does. Said once when it is nowhere."""
        if configured and sessions_last(configured):
            return configured
        if configured:
            log.error("storage.listen_url does not deliver LISTEN (it ends a session with "
                      "each transaction: a transaction pooler?); looking for work every "
                      "storage.poll_seconds instead. Point it at PostgreSQL itself or at a "
                      "session-pooled port")
            return ""
        if self.database.sessions:
            return self.url
        log.warning("storage.url ends a session with each transaction (a transaction pooler "
                    "such as PgBouncer's pool_mode = transaction): nothing is prepared on the "
                    "server, and LISTEN is not delivered there, so this instance looks for "
                    "work every storage.poll_seconds and, unpaced, takes no upload grants "
                    "ahead. Set storage.listen_url to a direct or session-pooled connection "
                    "for both")
        return ""

    # -- plumbing ----------------------------------------------------------------------------
    def _placeholders(self, sql):
        return placeholders(sql)

    def _driver_errors(self):
        return driver_errors()

    def _taking(self, sql):
        """The claim, and its URLs' pending jobs marked begun, in one statement (it took two
        for each claim that took anything: one a URL, with a pace)."""
        return sql.replace(TAKEN, TAKEN_AND_BEGUN)

    @staticmethod
    def _fair_claim_params(limit):
        # the claim's size, then the most its keys' shares come to: at most n keys, the
        # p-th by busy at most n + 1 - p URLs, so under n (n + 2) (RANKED's outer LIMIT)
        return limit, limit * (limit + 2)

    def _conn(self) -> psycopg.Connection:
        """The writer's connection. A transaction it leaves open (this process frozen by
        SIGSTOP or a stalled VM) would hold its rows from every other instance's reaper:
        the server ends it after a lease, when the others count this instance dead. Set
        once for the session where sessions last; behind a transaction pooler with ``SET
        LOCAL`` in each transaction's first round trip (a session setting would stay on
        the pooler's server connection, or be missing from the next one), a statement
        more per transaction."""
        if self._writer is None or self._writer.closed:
            self._writer = self.database.connect(role="writer", autocommit=True)
            if self.database.sessions:
                self._writer.execute(f"SET {self._idle_timeout}")
        return self._writer

    def _execute(self, sql, params=()):
        return self._conn().execute(self.q(sql), params)

    def _executemany(self, sql, rows):
        with self._conn().cursor() as cursor:
            cursor.executemany(self.q(sql), rows)

    def _insert_urls(self, job_id, urls, account, turn):
        with self._conn().cursor() as cursor:
            with cursor.copy("COPY urls (job_id, url, state, account, turn) FROM STDIN") as copy:
                for n, url in enumerate(urls):
                    copy.write_row((job_id, url, "queued", account, turn + n))

    @contextlib.contextmanager
    def transaction(self):
        with driver_errors():
            conn = self._conn()
            try:
                conn.execute(self._begin)
            except psycopg.OperationalError:  # a connection the server dropped (a restart)
                conn.close()
                conn = self._conn()
                conn.execute(self._begin)
            try:
                yield self
                self._before_commit()
                if self._work_added:
                    conn.execute(f"NOTIFY {CHANNEL}")  # delivered when we commit
                conn.execute("COMMIT")
            except BaseException:
                self._after_rollback()
                with contextlib.suppress(psycopg.Error):
                    if not conn.closed:
                        conn.execute("ROLLBACK")
                if conn.broken:
                    conn.close()
                raise
            self._work_added = False

    @contextlib.contextmanager
    def reading(self):
        with driver_errors(), self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _pruning(self):
        """A transaction on a connection of this process's shared pool (``prune``), or
        None while another instance prunes: one of a cluster at a time, by a lock that
        ends with the transaction."""
        with driver_errors(), self.database.pool().connection() as conn, conn.transaction():
            if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                (PRUNE_LOCK,)).fetchone()[0]:
                yield None
            else:
                yield lambda sql, params=(): conn.execute(self.q(sql), params)

    def _stream_cursor(self, conn):
        return conn.cursor(name="links")  # server-side: pages come as they are read

    def _dead_owners(self, column="owner"):
        return (f"({column} IS NULL OR {column} NOT IN"
                " (SELECT id FROM instances WHERE heartbeat >= {now} - ?))",
                (self.lease_seconds,))

    def finish_many(self, finishes):
        """The same as finishing each in turn, in one statement for the whole batch (URLs,
        new links, claims done with) instead of three per URL: the front end's share of a
        cluster's statements per URL, each a round trip and the server's work. A URL listed
        twice is finished once, by its first result, as one by one.

        Where no other statement of this transaction counts jobs (no counters pending, no
        URL handed back, which may fail those of cancelled jobs at commit, no batch
        counted before), the same statement counts the batch's jobs (``COUNTING``), locking
        them in the order of their ids as ``JOB_COUNTERS`` does: a turn's results and their
        counters in one statement (the dispatcher records a turn's results in one call).
        Else they are counted at commit. The waits noted since the last batch are written
        with it (``WAITED``)."""
        if not finishes:
            return []
        rows, new_links = [], []
        for task, state, fields in finishes:
            link = fields.get("link") if state == jobs.COMPLETE else None
            new = (link, fields.get("sha256"), fields.get("host"), task.account, new_image_id(),
                   fields.get("deletehash")) if link else None  # as _link_again takes them
            new_links.append(new)
            rows.append((task.url_id, task.lease, state, fields["attempts"], fields.get("link"),
                         fields.get("reason"), fields.get("sha256"),
                         int(fields.get("reused", False)), fields.get("host"), task.account,
                         new[4] if new else None, fields.get("deletehash")))
        counting = not (self._job_deltas or self._requeued or self._jobs_counted)
        waits, self._waits = self._waits, []
        sql = FINISHED + (WAITED if waits else "") + (COUNTING if counting else "") + (
            COUNTED_ANSWERS if counting else FINISHED_ANSWERS)
        params = (*as_columns(rows), self.instance,
                  *((*as_columns(waits), self.instance) if waits else ()),
                  *((jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS) if counting else ()))
        recorded, added, completed = {}, set(), []
        for kind, key, value in self._execute(sql, params):
            if kind == 0:
                recorded[int(key)] = value  # URL id: job id
            elif kind == 1:
                added.add((key, value))  # (link, account)
            else:
                completed.append((key, value))  # a job completed: (job id, callback URL)
        answers, again = [], {}
        for (task, state, fields), new in zip(finishes, new_links):
            job_id = recorded.pop(task.url_id, None)  # a URL listed twice is finished once
            answers.append(job_id is not None)
            if job_id is None:
                continue
            if not counting:
                self._count(job_id, state)
            if new and not fields.get("reused") and (new[0], new[3]) not in added:
                again[(new[0], new[3])] = new
        if again:  # rare: the same bytes' link, back after a deletion (S3)
            self._link_again(list(again.values()))
        if counting:
            self._jobs_counted = True
            for job_id, callback_url in sorted(completed):
                self.add_effect("webhook", callback_url, job_id=job_id)
        return answers

    def set_waiting_many(self, waits):
        """Every URL's note in one statement, not one each (a paced cluster's slots start
        waiting in waves): the transaction's next batch of results (``finish_many``, the
        dispatcher's comes after) writes them too, else they are written at the commit
        (``WAITS``). Nothing the writer reads in between shows them."""
        self._waits += [(task.url_id, task.lease, until, reason)
                        for task, until, reason in waits]

    def _before_commit(self):
        waits, self._waits = self._waits, []
        if waits:
            self._execute(WAITS, (*as_columns(waits), self.instance))
        super()._before_commit()

    def _after_rollback(self):
        self._waits = []
        super()._after_rollback()

    def _apply_job_deltas(self, deltas):
        """Every job's counters in one statement (``JOB_COUNTERS``), not one each: a turn
        finishes URLs of several jobs (the claim takes them in turns across jobs)."""
        if not deltas:
            return []
        rows = [(job_id, *deltas[job_id]) for job_id in sorted(deltas)]
        return [(job_id, callback_url) for job_id, callback_url in self._execute(
            JOB_COUNTERS, (*as_columns(rows), jobs.JOB_COMPLETE, jobs.JOB_IN_PROGRESS))
            if callback_url]

    def _link_recorded(self, sha256, host, account):
        if sha256:  # committed in links now: the in-flight claim has done its work
            self._execute("DELETE FROM dedup_claims WHERE sha256 = ? AND host = ? AND account = ?",
                          (sha256, host or "", account))

    # -- instances and leases ----------------------------------------------------------------
    def _register(self) -> None:
        self._execute(
            "INSERT INTO instances (id, host, pid, started, heartbeat) VALUES (?, ?, ?, {now}, {now})"
            " ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
            (self.instance, socket.gethostname(), os.getpid()))

    def heartbeat(self) -> bool:
        """Renew this instance's lease. False when it had expired and another instance took
        our URLs back (we register again; results for what we held will be refused)."""
        renewed = self._execute("UPDATE instances SET heartbeat = {now} WHERE id = ?",
                                (self.instance,)).rowcount == 1
        if not renewed:
            self._register()
        return renewed

    @contextlib.contextmanager
    def kept_alive(self):
        """Renew the lease from a thread of its own while the caller is busy with something
        else (starting the worker processes, which on a loaded machine can take longer
        than a lease): a peer would take a live instance for dead, and say so. The
        dispatcher renews it from its first turn on."""
        done = threading.Event()

        def renew():
            while not done.wait(self.lease_seconds / 3):
                try:
                    with driver_errors():
                        self.heartbeat()
                except StoreUnavailable as exc:
                    log.warning("could not renew this instance's lease while it starts: %s", exc)

        keeper = threading.Thread(target=renew, name="lease-while-starting", daemon=True)
        keeper.start()
        try:
            yield self
        finally:
            done.set()
            keeper.join()

    def reap(self, max_attempts):
        """Forget dead instances with their unpublished dedup claims and upload grants,
        then take back the URLs they held. A published claim stays: its upload went
        through, and whoever takes its URL back reuses the link instead of uploading the
        bytes again (the result that commits it deletes the claim). In a healthy cluster
        there is nothing to take back, and one statement says so (``DEAD``: the dead
        instances deleted, and whether a dead owner holds any URL); the rest is done only
        when there is (it was three statements every reap)."""
        found = self._execute(DEAD, (self.lease_seconds, self.instance,
                                     self.lease_seconds)).fetchall()
        gone = [row[1:] for row in found if row[0] == 0]
        for instance, host, pid in gone:
            log.warning("instance %s (pid %s on %s) stopped renewing its lease; taking back "
                        "what it held", instance, pid, host)
        if gone:  # (their gate grants stop counting by themselves: see postgres.coordinator)
            self._execute("DELETE FROM dedup_claims WHERE instance NOT IN (SELECT id FROM instances)"
                          " AND link IS NULL")
        if not found:
            return 0, []  # nobody died, and no URL in flight has a dead owner
        return super().reap(max_attempts)

    # -- waiting for work --------------------------------------------------------------------
    def listen(self, on_work: Callable[[], None], on_pause: Callable[[], None],
               on_state: Callable[[bool], None]) -> bool:
        """Call ``on_work()`` for each notification of work added (``CHANNEL``),
        ``on_pause()`` for each pause of the gate (``tickets.CHANNEL``), and
        ``on_state(True)`` / ``on_state(False)`` as listening begins and ends (a lost
        connection: then again a second later), from a thread of our own. False, starting
        nothing, when no connection delivers LISTEN (``listen_url``): the caller polls."""
        if not self.listen_url:
            return False
        channels = {CHANNEL: on_work, tickets.CHANNEL: on_pause}
        self._listener = threading.Thread(target=self._listen, args=(channels, on_state),
                                          name="store-listen", daemon=True)
        self._listener.start()
        return True

    def _listen(self, channels, on_state) -> None:
        while not self._closing.is_set():
            listening = False
            try:
                with contextlib.closing(connect(self.listen_url, role="listener", sessions=False,
                                                autocommit=True)) as conn:
                    for channel in channels:
                        conn.execute(f"LISTEN {channel}")
                    listening = True
                    on_state(True)
                    while not self._closing.is_set():
                        for notice in conn.notifies(timeout=1.0, stop_after=1):
                            channels[notice.channel]()
            except (StoreUnavailable, psycopg.Error) as exc:
                if not self._closing.is_set():
                    log.debug("LISTEN connection lost (%s); again in %.0f s", exc,
                              LISTEN_RETRY_SECONDS)
            if listening:
                on_state(False)
            self._closing.wait(LISTEN_RETRY_SECONDS)

    # -- health and end ----------------------------------------------------------------------
    def problem(self):
        """Why the store cannot serve now, or None (for health checks)."""
        try:
            with driver_errors(), self._pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            return None
        except StoreUnavailable as exc:
            return f"database unreachable: {exc}"

    def close(self) -> None:
        """Leave the cluster: drop our instance row (nothing of ours is in flight by now)."""
        self._closing.set()
        with contextlib.suppress(Exception):
            with self.transaction():
                self._execute("DELETE FROM instances WHERE id = ?", (self.instance,))
        if self._writer is not None:
            self._writer.close()
        self._pool.close()
        if self._listener is not None:
            self._listener.join(timeout=3)


def as_columns(rows) -> list:
    """Rows (at least one) as column lists: what ``unnest`` takes, a batch in a statement."""
    return [list(column) for column in zip(*rows)]


# finish_many's statement: FINISHED, then WAITED and COUNTING as needed, then its answers.
# The batch's rows (``r``; ``once``: each URL's first): the URLs this instance still
# holds are finished (``done``), their new links recorded once per account (``added``),
# the dedup claims of those links' bytes deleted (their links are committed with this
# transaction). FINISHED_ANSWERS: (0, URL id, job id) for each URL finished, (1, link,
# account) for each link added.
FINISHED = (
    "WITH r AS (SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::text[], ?::int[],"
    " ?::text[], ?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[],"
    " ?::text[]) WITH ORDINALITY AS r(id, lease, state, attempts, link, reason, sha256,"
    " reused, host, account, image_id, deletehash, n)),"
    " once AS (SELECT DISTINCT ON (id) * FROM r ORDER BY id, n),"
    " done AS (UPDATE urls AS u SET state = f.state,"
    " attempts = greatest(u.attempts, f.attempts), link = f.link, reason = f.reason,"
    " sha256 = f.sha256, reused = f.reused, owner = NULL, lease = NULL, " + CLEARED +
    " FROM once AS f WHERE u.id = f.id AND u.state = 'in_flight' AND u.owner = ?"
    " AND u.lease = f.lease RETURNING u.id, u.job_id, u.state),"
    " linked AS (SELECT f.* FROM once AS f JOIN done ON done.id = f.id"
    " WHERE f.image_id IS NOT NULL),"
    " added AS (" + NEW_LINK + " SELECT link, sha256, host, {now}, account, image_id,"
    " deletehash FROM linked ORDER BY n" + NEW_LINK_ONCE + " RETURNING link, account),"
    " claims_done AS (DELETE FROM dedup_claims WHERE (sha256, host, account) IN"
    " (SELECT sha256, coalesce(host, ''), account FROM linked WHERE sha256 IS NOT NULL))")
FINISHED_ANSWERS = (" SELECT 0, id::text, job_id FROM done"
                    " UNION ALL SELECT 1, link, account FROM added")
# Waits of URLs in flight here (``sql.WAITING``), a batch in one statement: one row per URL.
WAITS = (
    "UPDATE urls AS u SET waiting_until = w.until, waiting_reason = w.reason"
    " FROM unnest(?::bigint[], ?::bigint[], ?::float8[], ?::text[])"
    " AS w(id, lease, until, reason) WHERE u.id = w.id AND u.state = 'in_flight'"
    " AND u.owner = ? AND u.lease = w.lease")
# The same, written with a batch of results (none of the batch's own URLs: its finish
# clears their waits).
WAITED = (
    ", waited AS (UPDATE urls AS u SET waiting_until = w.until, waiting_reason = w.reason"
    " FROM unnest(?::bigint[], ?::bigint[], ?::float8[], ?::text[])"
    " AS w(id, lease, until, reason) WHERE u.id = w.id AND u.state = 'in_flight'"
    " AND u.owner = ? AND u.lease = w.lease AND w.id NOT IN (SELECT id FROM once))")

# Instances whose heartbeat is older than a lease (but ours) deleted: (0, id, host, pid)
# each; and (1, ...) once if some URL in flight has a dead owner (none, or one of those).
DEAD = ("WITH gone AS (DELETE FROM instances WHERE heartbeat < {now} - ? AND id <> ?"
        " RETURNING id, host, pid) SELECT 0, id, host, pid FROM gone"
        " UNION ALL SELECT 1, NULL, NULL, NULL WHERE EXISTS (SELECT 1 FROM urls"
        " WHERE state = 'in_flight' AND (owner IS NULL OR owner NOT IN"
        " (SELECT id FROM instances WHERE heartbeat >= {now} - ?)))")

# The job counters of ``d`` (id, done, completed, failed), every job in one statement. The
# rows are locked in the order of their ids first (as one statement each, in that order,
# did), so two instances finishing URLs of the same jobs never wait for each other in a
# cycle. ``counted``: each job's row after.
COUNTED = (
    " locked AS (SELECT id FROM jobs WHERE id IN (SELECT id FROM d) ORDER BY id FOR UPDATE),"
    " counted AS (UPDATE jobs AS j SET remaining = j.remaining - d.done,"
    " completed = j.completed + d.completed, failed = j.failed + d.failed,"
    " status = CASE WHEN j.remaining - d.done <= 0 THEN ? ELSE ? END,"
    " finished = CASE WHEN j.remaining - d.done <= 0 THEN {now} ELSE j.finished END"
    " FROM d WHERE j.id = d.id AND j.id IN (SELECT id FROM locked)"
    " RETURNING j.id, j.remaining, j.callback_url)")
# The job counters of a transaction. Answers: (job id, callback URL) of each job completed.
JOB_COUNTERS = (
    "WITH d AS (SELECT * FROM unnest(?::text[], ?::int[], ?::int[], ?::int[])"
    " AS d(id, done, completed, failed))," + COUNTED +
    " SELECT id, callback_url FROM counted WHERE remaining <= 0 ORDER BY id")
# A batch of results with the jobs of the URLs finished counted too (FINISHED, WAITED
# maybe, COUNTING, COUNTED_ANSWERS). Answers: FINISHED_ANSWERS's, and (2, job id,
# callback URL) of each job completed that has a callback.
COUNTING = (
    ", d AS (SELECT job_id AS id, count(*) AS done,"
    " count(*) FILTER (WHERE state = '" + jobs.COMPLETE + "') AS completed,"
    " count(*) FILTER (WHERE state <> '" + jobs.COMPLETE + "') AS failed"
    " FROM done GROUP BY job_id)," + COUNTED)
COUNTED_ANSWERS = (FINISHED_ANSWERS + " UNION ALL SELECT 2, id, callback_url FROM counted"
                   " WHERE remaining <= 0 AND callback_url IS NOT NULL")

# A claim's UPDATE (``TAKEN``) as a data-modifying CTE, with its URLs' pending jobs marked
# begun (only pending rows are locked: no job whose URLs are being finished).
TAKEN_AND_BEGUN = (", taken AS (" + TAKEN + "), begun AS (UPDATE jobs SET status = '"
                   + jobs.JOB_IN_PROGRESS + "' WHERE id IN (SELECT job_id FROM taken)"
                   " AND status = '" + jobs.JOB_PENDING + "') SELECT * FROM taken")
