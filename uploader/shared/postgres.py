"""The shared state of a cluster: gate, budgets, dedup claims and the token, in PostgreSQL.

Same calls as the embedded ``Coordinator`` and ``Credentials``, same rules (``ratelimit``,
``credentials.renew``), but the state lives in rows every instance reaches, and every
process (each worker, the front end) talks to the database directly through a small
pool of its own, made lazily after the process starts (the objects themselves pickle
as their settings). The database's clock is the gate's clock, so instances on hosts
with skewed clocks keep one pace; answers are turned into this machine's monotonic
clock before they are returned.

- gate: one row (``gate.state``, JSON of ``GateState``), locked ``FOR UPDATE`` by each
  call; uploads in flight are the ``gate_grants`` of live instances, per worker, so a
  dead worker's or a dead instance's grants stop counting;
- dedup: ``dedup_claims`` holds bytes being uploaded (one owner per SHA-256) and, once
  published, their link until the result is committed to ``links``;
- token: one ``credentials`` row per configured credential, locked while one instance
  refreshes it, so the cluster refreshes once.
"""
import hashlib
import json
import logging
import threading
import time
from typing import Optional, Tuple

from ..credentials import RefreshSettings, Token, renew
from ..errors import StoreUnavailable
from ..ratelimit import GateRules, GateState
from ..store.postgres import driver_errors, make_pool

log = logging.getLogger(__name__)

NOW = "extract(epoch from clock_timestamp())::float8"
OUTAGE_RETRY_SECONDS = 1.0
_pools = {}
_pools_lock = threading.Lock()


def pool_for(url: str):
    """This process's pool for the shared state (one per process, made on first use)."""
    with _pools_lock:
        if url not in _pools:
            _pools[url] = make_pool(url, max_size=4, name="shared")
        return _pools[url]


class _Rows:
    """Transactions on the shared rows that outlast an outage: a call made while the
    database is unreachable waits for it (the URL stays in flight; nothing is lost)."""

    def __init__(self, url: str):
        self.url = url

    def run(self, work):
        """``work(conn)`` in a transaction, again and again until the database answers."""
        warned = False
        while True:
            try:
                with driver_errors(), pool_for(self.url).connection() as conn:
                    with conn.transaction():
                        return work(conn)
            except StoreUnavailable as exc:
                if not warned:
                    log.warning("shared state unreachable (%s); waiting for the database", exc)
                    warned = True
                time.sleep(OUTAGE_RETRY_SECONDS)


class PgCoordinator(_Rows):
    """Gate and dedup for a cluster; see the embedded ``Coordinator`` for each call."""

    def __init__(self, url: str, instance: str, *, lease_seconds: float,
                 gate: Optional[dict] = None, dedup_host: Optional[str] = None):
        super().__init__(url)
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.gate = gate
        self.rules = GateRules(**gate) if gate is not None else None
        self.dedup_host = dedup_host

    def __getstate__(self):
        return {"args": (self.url, self.instance), "lease_seconds": self.lease_seconds,
                "gate": self.gate, "dedup_host": self.dedup_host}

    def __setstate__(self, state):
        self.__init__(*state.pop("args"), **state)

    # -- dedup and gate around one upload ----------------------------------------------------
    def begin(self, sha256: str, owner: tuple) -> Tuple[str, Optional[str], Optional[tuple]]:
        def work(conn):
            if self.dedup_host is not None:
                decision, link = self._claim(conn, sha256, owner)
                if decision != "upload":
                    return decision, link, None
            return "upload", None, self._reserve(conn, owner[:2])
        return self.run(work)

    def end(self, sha256: str, link: Optional[str], report: Optional[dict], owner: tuple, *,
            observe: bool) -> None:
        def work(conn):
            if observe:
                self._observe(conn, report, owner[:2])
            if self.dedup_host is not None:
                if link:
                    conn.execute("UPDATE dedup_claims SET link = %s WHERE sha256 = %s AND host = %s",
                                 (link, sha256, self.dedup_host))
                else:
                    conn.execute("DELETE FROM dedup_claims WHERE sha256 = %s AND host = %s"
                                 " AND instance = %s AND link IS NULL",
                                 (sha256, self.dedup_host, self.instance))
        self.run(work)

    def _claim(self, conn, sha256: str, owner: tuple):
        row = conn.execute("SELECT link FROM links WHERE sha256 = %s AND host = %s"
                           " ORDER BY id LIMIT 1", (sha256, self.dedup_host)).fetchone()
        if row:
            return "reuse", row[0]
        me = (self.instance, *owner)
        taken = conn.execute(
            "INSERT INTO dedup_claims (sha256, host, instance, worker, generation, thread)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sha256, host) DO NOTHING RETURNING 1",
            (sha256, self.dedup_host, *me)).fetchone()
        if taken:
            return "upload", None
        row = conn.execute(
            "SELECT instance, worker, generation, thread, link FROM dedup_claims"
            " WHERE sha256 = %s AND host = %s", (sha256, self.dedup_host)).fetchone()
        if row is None:  # released between our two statements: try again
            return "wait", None
        if row[4]:
            return "reuse", row[4]
        return ("upload", None) if tuple(row[:4]) == me else ("wait", None)

    # -- the gate ----------------------------------------------------------------------------
    def reserve(self, owner: tuple) -> Optional[tuple]:
        if self.rules is None:
            return None
        return self.run(lambda conn: self._reserve(conn, owner))

    def confirm(self, owner: tuple) -> tuple:
        if self.rules is None:
            return True, 0.0, ""

        def work(conn):
            state, now = self._gate_state(conn)
            answer = self.rules.confirm(state, now)
            if not answer[0]:
                self._count(conn, owner, -1)
            return self._local(answer, now)
        return self.run(work)

    def observe(self, report: Optional[dict], owner: tuple) -> None:
        if self.rules is not None:
            self.run(lambda conn: self._observe(conn, report, owner))

    def pause(self, seconds: float, why: str) -> None:
        if self.rules is None:
            return

        def work(conn):
            state, now = self._gate_state(conn)
            self.rules.pause(state, now, seconds, why)
            self._save(conn, state)
        self.run(work)

    def release_owner(self, worker: int, generation: int) -> None:
        """A worker process of this instance ended: its claims and grants are void."""
        def work(conn):
            conn.execute("DELETE FROM dedup_claims WHERE instance = %s AND worker = %s"
                         " AND generation = %s AND link IS NULL",
                         (self.instance, worker, generation))
            conn.execute("DELETE FROM gate_grants WHERE instance = %s AND worker = %s"
                         " AND generation = %s", (self.instance, worker, generation))
        self.run(work)

    def _reserve(self, conn, owner: tuple) -> Optional[tuple]:
        if self.rules is None:
            return None
        state, now = self._gate_state(conn)
        in_flight = conn.execute(
            "SELECT COALESCE(SUM(g.n), 0) FROM gate_grants g JOIN instances i"
            f" ON i.id = g.instance WHERE i.heartbeat >= {NOW} - %s",
            (self.lease_seconds,)).fetchone()[0]
        answer = self.rules.reserve_slot(state, now, int(in_flight))
        self._save(conn, state)
        if answer[0]:
            self._count(conn, owner, +1)
        return self._local(answer, now)

    def _observe(self, conn, report: Optional[dict], owner: tuple) -> None:
        state, now = self._gate_state(conn)
        self.rules.observe(state, now, report)
        self._save(conn, state)
        self._count(conn, owner, -1)

    def _gate_state(self, conn) -> Tuple[GateState, float]:
        row = conn.execute(f"SELECT state, {NOW} FROM gate WHERE id = 1 FOR UPDATE").fetchone()
        if row is None:
            now = conn.execute(f"SELECT {NOW}").fetchone()[0]
            conn.execute("INSERT INTO gate (id, state) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                         (json.dumps(self.rules.new_state(now).to_dict()),))
            row = conn.execute(f"SELECT state, {NOW} FROM gate WHERE id = 1 FOR UPDATE").fetchone()
        return GateState.from_dict(json.loads(row[0])), row[1]

    @staticmethod
    def _save(conn, state: GateState) -> None:
        conn.execute("UPDATE gate SET state = %s WHERE id = 1", (json.dumps(state.to_dict()),))

    def _count(self, conn, owner: tuple, change: int) -> None:
        worker, generation = owner
        conn.execute(
            "INSERT INTO gate_grants (instance, worker, generation, n) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (instance, worker, generation)"
            " DO UPDATE SET n = GREATEST(gate_grants.n + %s, 0)",
            (self.instance, worker, generation, max(change, 0), change))

    @staticmethod
    def _local(answer: tuple, now: float) -> tuple:
        """An answer on the database's clock, as a moment of this machine's monotonic clock."""
        granted, when, why = answer
        return granted, time.monotonic() + (when - now), why


class PgCredentials(_Rows):
    """The cluster's Imgur credential, one row per configured credential."""

    def __init__(self, url: str, *, api_url: str, access_token: str = "", client_id: str = "",
                 client_secret: str = "", refresh_token: str = "", timeout_seconds: float = 30.0):
        super().__init__(url)
        self.args = dict(api_url=api_url, access_token=access_token, client_id=client_id,
                         client_secret=client_secret, refresh_token=refresh_token,
                         timeout_seconds=timeout_seconds)
        self.settings = RefreshSettings(api_url, client_id, client_secret, timeout_seconds)
        self.configured = Token(access_token, refresh_token)
        # The configured credential names its row: configure a new one and it starts afresh.
        self.key = hashlib.sha256("\0".join((access_token, refresh_token, client_id))
                                  .encode()).hexdigest()

    def __getstate__(self):
        return {"url": self.url, "args": self.args}

    def __setstate__(self, state):
        self.__init__(state["url"], **state["args"])

    def current(self) -> tuple:
        return self.run(lambda conn: self._token(conn, lock=False).current())

    def refresh(self, seen_version: int, reason: str) -> tuple:
        def work(conn):
            token = self._token(conn, lock=True)  # the others wait here while we refresh
            renew(token, self.settings, seen_version, reason)
            conn.execute("UPDATE credentials SET access_token = %s, refresh_token = %s,"
                         " version = %s, rejected = %s WHERE key = %s",
                         (token.access_token, token.refresh_token, token.version,
                          token.rejected, self.key))
            return token.current()
        return self.run(work)

    def forgive(self) -> None:
        """At an instance's start: try a credential given up on again (as a restart of the
        embedded service does)."""
        self.run(lambda conn: conn.execute(
            "UPDATE credentials SET rejected = NULL WHERE key = %s", (self.key,)))

    def _token(self, conn, *, lock: bool) -> Token:
        query = ("SELECT access_token, refresh_token, version, rejected FROM credentials"
                 " WHERE key = %s" + (" FOR UPDATE" if lock else ""))
        row = conn.execute(query, (self.key,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO credentials (key, access_token, refresh_token, version)"
                         " VALUES (%s, %s, %s, 0) ON CONFLICT (key) DO NOTHING",
                         (self.key, self.configured.access_token, self.configured.refresh_token))
            row = conn.execute(query, (self.key,)).fetchone()
        return Token(*row)
