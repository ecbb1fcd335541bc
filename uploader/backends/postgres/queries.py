"""The shared state's queries (the gate, dedup claims, the credential), each named, written
with ``?`` placeholders like every other query of the service and turned into psycopg's
``%s`` once, here (``placeholders``).

The store's queries live in ``backends.sql`` (both dialects) and ``postgres.store`` (its
batches: ``FINISHED``, ``WAITS``, ``TAKEN_AND_BEGUN``); the schema in ``backends.schema``.
"""
from ..sql import oldest_link


def placeholders(sql: str) -> str:
    """A statement written with ``?`` placeholders, as psycopg takes it (``%s``)."""
    return sql.replace("%", "%%").replace("?", "%s")


NOW = "extract(epoch from clock_timestamp())::float8"  # the database's clock, epoch seconds
CLOCK = placeholders(f"SELECT {NOW}")

_LIVE = f"ARRAY(SELECT id FROM instances WHERE heartbeat >= {NOW} - ?)"
# The gate row, the clock and the live instances: a process's first look (``_gate``).
GATE_READ = placeholders(f"SELECT version, state, {NOW}, {_LIVE} FROM gate WHERE id = 1")
# A change written if the row is still the version it changed (the new version, else
# NULL), and the row as the statement found it, the clock and the live instances.
GATE_WRITE = placeholders(
    "WITH written AS (UPDATE gate SET version = version + 1, state = ?"
    " WHERE id = 1 AND version = ? RETURNING version)"
    f" SELECT (SELECT version FROM written), version, state, {NOW}, {_LIVE}"
    " FROM gate WHERE id = 1")
# The same first look with the row locked, and the change written under that lock: the way
# of a change that lost the compare-and-set too often (``_gate_locked``).
GATE_READ_LOCKED = placeholders(
    f"SELECT version, state, {NOW}, {_LIVE} FROM gate WHERE id = 1 FOR UPDATE")
GATE_WRITE_LOCKED = placeholders("UPDATE gate SET version = ?, state = ? WHERE id = 1")
# The gate row made, when there is none (a new database, or one deleted by hand).
GATE_FIRST = placeholders("INSERT INTO gate (id, version, state) VALUES (1, 0, ?)"
                          " ON CONFLICT (id) DO NOTHING")

# Claims of a batch, inserted in the order of their bytes: those returned were won, each
# with the link its bytes have committed already, if any. The lookup is the function
# ``dedup_link`` (schema migration 10, ``sql.OLDEST_LINK``): VOLATILE, it reads with a
# snapshot taken after the claim's row is in, so it sees the link of a result that
# committed (deleting the claim) while the insert waited, as a statement of its own did.
CLAIM = placeholders(
    "WITH won AS (INSERT INTO dedup_claims (sha256, host, account, instance, worker,"
    " generation, thread) SELECT c.sha256, ?, c.account, c.instance, c.worker, c.generation,"
    " c.thread FROM unnest(?::text[], ?::text[], ?::text[], ?::int[], ?::int[],"
    " ?::bigint[]) WITH ORDINALITY AS c(sha256, account, instance, worker, generation,"
    " thread, n) ORDER BY c.sha256, c.account, c.n"
    " ON CONFLICT (sha256, host, account) DO NOTHING"
    " RETURNING sha256, host, account, instance, worker, generation, thread)"
    " SELECT sha256, account, instance, worker, generation, thread,"
    " dedup_link(sha256, host, account) FROM won")
# Who holds the claims a batch did not win, and their links if published.
HOLDERS = placeholders(
    "SELECT sha256, account, instance, worker, generation, thread, link"
    " FROM dedup_claims WHERE host = ? AND (sha256, account) IN"
    " (SELECT * FROM unnest(?::text[], ?::text[]))")
# The committed link of each (sha256, account) of a batch: the dedup lookup
# (``sql.OLDEST_LINK``, the same index lookup) once per row, for claims held already by
# the asker (``CLAIM`` looks up those it wins).
LINKS_OF = placeholders(
    f"SELECT c.sha256, c.account, ({oldest_link('c.sha256', 'c.account')})"
    " FROM unnest(?::text[], ?::text[]) AS c(sha256, account)")
# Links published on their claims; a claim locked by another is being deleted: its link
# is committed already.
PUBLISH = placeholders(
    "WITH mine AS MATERIALIZED (SELECT c.sha256, c.account, p.link"
    " FROM dedup_claims AS c JOIN unnest(?::text[], ?::text[],"
    " ?::text[]) AS p(sha256, account, link) ON c.sha256 = p.sha256"
    " AND c.account = p.account WHERE c.host = ?"
    " FOR UPDATE OF c SKIP LOCKED)"
    " UPDATE dedup_claims AS c SET link = mine.link FROM mine"
    " WHERE c.sha256 = mine.sha256 AND c.host = ?"
    " AND c.account = mine.account")
# This instance's unpublished claim on some bytes, dropped.
RELEASE = placeholders("DELETE FROM dedup_claims WHERE sha256 = ? AND host = ? AND account = ?"
                       " AND instance = ? AND link IS NULL")
# The unpublished claims of a worker process that ended.
RELEASE_OWNER = placeholders("DELETE FROM dedup_claims WHERE instance = ? AND worker = ?"
                             " AND generation = ? AND link IS NULL")

# The credential's row, as read (or locked, to refresh it), made, written and forgiven.
TOKEN = "SELECT access_token, refresh_token, version, rejected FROM credentials WHERE key = ?"
TOKEN_READ = placeholders(TOKEN)
TOKEN_LOCK = placeholders(TOKEN + " FOR UPDATE")
TOKEN_FIRST = placeholders("INSERT INTO credentials (key, access_token, refresh_token, version)"
                           " VALUES (?, ?, ?, 0) ON CONFLICT (key) DO NOTHING")
TOKEN_WRITE = placeholders("UPDATE credentials SET access_token = ?, refresh_token = ?,"
                           " version = ?, rejected = ? WHERE key = ?")
TOKEN_FORGIVE = placeholders("UPDATE credentials SET rejected = NULL WHERE key = ?")
