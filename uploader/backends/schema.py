"""The SQL schema, the one place it is written, and its migrations for both backends.

Statements use a few words that each dialect fills in (``SCHEMA_WORDS`` of each store:
``{id}``, ``{real}``, ``{job_seq}`` the statement that gives jobs their order of
creation, ``{account_seq}`` the columns that list an account's jobs in it,
``{links_ids_go_on}`` the statement that makes new links' ids follow those copied), so
one text describes the embedded SQLite store and the shared PostgreSQL one. Migrations run
in order at start-up, each once, recorded in ``schema_version``; PostgreSQL instances
starting together serialise on an advisory lock, so none trips over another.

Tables:
- ``jobs`` (with the account, i.e. API key, that owns each), ``urls`` (the queue: a URL is
  queued, in flight under an instance's lease, or final), ``links`` (every link uploaded,
  oldest first, with its image id, the host's delete hash and when it was deleted),
  ``outbox`` (effects to carry out outside, durably: webhook deliveries, host deletions).
  A link has one row per account holding it (S3 gives identical bytes one link);
- PostgreSQL only, the state every instance shares: ``instances`` (who is alive),
  ``gate`` (the upload gate's state with the uploads granted and not yet answered, by
  worker, changed by compare-and-set on ``version``), ``dedup_claims`` (bytes being
  uploaded right now, and by whom), ``credentials`` (the shared Imgur token); one
  function, ``dedup_link`` (the dedup lookup with a snapshot of its own).
"""
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Migration:
    version: int
    statements: Tuple[str, ...]
    only: Optional[str] = None  # a dialect name: the migration applies there alone


MIGRATIONS = (
    Migration(1, (  # the schema of the first release (kept as it was, for existing stores)
        """CREATE TABLE IF NOT EXISTS jobs (
            id        TEXT PRIMARY KEY,
            created   {real} NOT NULL,
            finished  {real},
            status    TEXT NOT NULL,
            remaining INTEGER NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS urls (
            id       {id},
            job_id   TEXT NOT NULL REFERENCES jobs(id),
            url      TEXT NOT NULL,
            state    TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            link     TEXT,
            reason   TEXT,
            sha256   TEXT,
            reused   INTEGER NOT NULL DEFAULT 0,
            waiting_until  {real},
            waiting_reason TEXT)""",
        "CREATE INDEX IF NOT EXISTS urls_by_job ON urls(job_id, id)",
        "CREATE INDEX IF NOT EXISTS urls_queued ON urls(id) WHERE state = 'queued'",
        """CREATE TABLE IF NOT EXISTS links (
            id      {id},
            link    TEXT NOT NULL UNIQUE,
            sha256  TEXT,
            host    TEXT,
            created {real} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS links_by_sha ON links(sha256, host)",
    )),
    Migration(2, (  # leases: who holds an in-flight URL, under which claim; suspects; progress
        "ALTER TABLE urls ADD COLUMN owner TEXT",
        "ALTER TABLE urls ADD COLUMN lease BIGINT",
        "ALTER TABLE urls ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE urls ADD COLUMN progress_bytes BIGINT",
        "ALTER TABLE urls ADD COLUMN progress_total BIGINT",
        "CREATE INDEX urls_in_flight ON urls(owner) WHERE state = 'in_flight'",
    )),
    Migration(4, (  # job control: accounts (API keys), retries, callbacks, cancels, deletes
        "ALTER TABLE jobs ADD COLUMN account TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN retry_of TEXT",
        "ALTER TABLE jobs ADD COLUMN callback_url TEXT",
        "ALTER TABLE jobs ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN completed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN failed INTEGER NOT NULL DEFAULT 0",
        "{job_seq}",
        "UPDATE jobs SET completed = (SELECT COUNT(*) FROM urls WHERE urls.job_id = jobs.id"
        " AND urls.state = 'complete'), failed = (SELECT COUNT(*) FROM urls"
        " WHERE urls.job_id = jobs.id AND urls.state = 'failed')",
        "CREATE INDEX jobs_by_account ON jobs({account_seq})",
        "CREATE INDEX jobs_cancelled ON jobs(id) WHERE cancelled = 1 AND remaining > 0",
        "ALTER TABLE links ADD COLUMN account TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE links ADD COLUMN image_id TEXT",
        "ALTER TABLE links ADD COLUMN deletehash TEXT",
        "ALTER TABLE links ADD COLUMN deleted {real}",
        "UPDATE links SET image_id = 'L' || CAST(id AS TEXT)",  # earlier links: ids of their own
        "CREATE UNIQUE INDEX links_by_image ON links(image_id)",
        "DROP INDEX IF EXISTS links_by_sha",
        "CREATE INDEX links_for_dedup ON links(sha256, host, account) WHERE deleted IS NULL",
        "CREATE INDEX links_listed ON links(account, id) WHERE deleted IS NULL",
        """CREATE TABLE outbox (
            id         TEXT PRIMARY KEY,
            kind       TEXT NOT NULL,
            job_id     TEXT,
            target     TEXT NOT NULL,
            state      TEXT NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0,
            next_at    {real} NOT NULL,
            last_error TEXT,
            body       TEXT,
            holder     TEXT,
            held_until {real},
            created    {real} NOT NULL,
            done       {real})""",
        "CREATE INDEX outbox_due ON outbox(next_at) WHERE state = 'pending'",
        "CREATE INDEX outbox_by_job ON outbox(job_id)",
    )),
    Migration(3, (  # what every instance shares, kept where every instance can reach it
        """CREATE TABLE instances (
            id        TEXT PRIMARY KEY,
            host      TEXT NOT NULL,
            pid       INTEGER NOT NULL,
            started   {real} NOT NULL,
            heartbeat {real} NOT NULL)""",
        """CREATE TABLE gate (
            id      INTEGER PRIMARY KEY,
            version BIGINT NOT NULL,
            state   TEXT NOT NULL)""",
        """CREATE TABLE dedup_claims (
            sha256     TEXT NOT NULL,
            host       TEXT NOT NULL,
            account    TEXT NOT NULL,
            instance   TEXT NOT NULL,
            worker     INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            thread     BIGINT NOT NULL,
            link       TEXT,
            PRIMARY KEY (sha256, host, account))""",
        "CREATE INDEX dedup_claims_by_owner ON dedup_claims(instance, worker, generation)",
        """CREATE TABLE credentials (
            key           TEXT PRIMARY KEY,
            access_token  TEXT NOT NULL,
            refresh_token TEXT NOT NULL,
            version       INTEGER NOT NULL,
            rejected      TEXT)""",
    ), only="postgresql"),
    Migration(5, (  # the dedup lookup (sql.OLDEST_LINK) on its own index, order and all.
        # PostgreSQL took links_listed for it whenever the indexes had no statistics yet (a
        # young store): every upload of new bytes read every link of the account. That index
        # now also requires id > 0, which only the listing (sql.LIVE_LINKS) says. (It was
        # numbered 4 like job control's, so a store made between the two never got it; a
        # store that did runs it again, rebuilding the same two indexes.)
        "DROP INDEX links_for_dedup",
        "CREATE INDEX links_for_dedup ON links(sha256, host, account, id) WHERE deleted IS NULL",
        "DROP INDEX links_listed",
        "CREATE INDEX links_listed ON links(account, id) WHERE deleted IS NULL AND id > 0",
    )),
    Migration(6, (  # the queue by (suspect, id) (sql.QUEUED_FIRST): a turn's look for a
        # waiting suspect read every queued URL (20 ms a turn with 100,000 queued), and a
        # young PostgreSQL store sorted the whole queue for each claim (45 ms).
        "DROP INDEX urls_queued",
        "CREATE INDEX urls_queued ON urls(suspect, id) WHERE state = 'queued'",
    )),
    Migration(7, (  # a link is unique per account, not overall: S3 names an object by its
        # bytes, so two accounts uploading one image get one link, and each must own a row
        # of its own (its image id, its deletion). A column's UNIQUE cannot be dropped in
        # SQLite: the table is made anew, ids and all, on both backends.
        """CREATE TABLE links_new (
            id         {id},
            link       TEXT NOT NULL,
            sha256     TEXT,
            host       TEXT,
            created    {real} NOT NULL,
            account    TEXT NOT NULL DEFAULT '',
            image_id   TEXT,
            deletehash TEXT,
            deleted    {real})""",
        "INSERT INTO links_new (id, link, sha256, host, created, account, image_id, deletehash,"
        " deleted) SELECT id, link, sha256, host, created, account, image_id, deletehash,"
        " deleted FROM links ORDER BY id",
        "DROP TABLE links",
        "ALTER TABLE links_new RENAME TO links",
        "{links_ids_go_on}",
        "CREATE UNIQUE INDEX links_by_link ON links(link, account)",
        "CREATE UNIQUE INDEX links_by_image ON links(image_id)",
        "CREATE INDEX links_for_dedup ON links(sha256, host, account, id) WHERE deleted IS NULL",
        "CREATE INDEX links_listed ON links(account, id) WHERE deleted IS NULL AND id > 0",
    )),
    Migration(8, (  # fairness (sql.FAIR_CLAIM): each URL carries its job's account and its
        # turn in that account's rotation; the claim reads the first few of each account
        # from urls_turns instead of the oldest of the whole queue. URLs queued before keep
        # their order: turn = their place in their job.
        "ALTER TABLE urls ADD COLUMN account TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE urls ADD COLUMN turn BIGINT NOT NULL DEFAULT 0",
        "UPDATE urls SET account = (SELECT account FROM jobs WHERE jobs.id = urls.job_id)"
        " WHERE job_id IN (SELECT id FROM jobs WHERE account <> '')",
        "UPDATE urls SET turn = r.n FROM (SELECT id, row_number() OVER (PARTITION BY job_id"
        " ORDER BY id) - 1 AS n FROM urls WHERE state = 'queued') AS r WHERE urls.id = r.id",
        "CREATE INDEX urls_turns ON urls(account, turn, id) WHERE state = 'queued' AND suspect = 0",
    )),
    Migration(9, (  # retention (backends.prune): finished jobs, oldest first, from an index
        "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished) WHERE finished IS NOT NULL",
    )),
    Migration(10, (  # a batch's dedup claims and their link lookups in one statement
        # (postgres.queries.CLAIM): the lookup (sql.OLDEST_LINK) as a VOLATILE function,
        # which reads with a snapshot of its own, taken after the claim's row is in: it
        # sees the link of a result that committed while the claim waited for its row.
        """CREATE OR REPLACE FUNCTION dedup_link(of_sha256 TEXT, of_host TEXT, of_account TEXT)
            RETURNS TEXT LANGUAGE sql VOLATILE AS
            'SELECT link FROM links WHERE sha256 = of_sha256 AND host = of_host
             AND account = of_account AND deleted IS NULL ORDER BY id LIMIT 1'""",
    ), only="postgresql"),
)

LATEST = max(m.version for m in MIGRATIONS)


def pending(dialect: str, current: int):
    """The migrations a store at ``current`` still needs, in order."""
    return sorted((m for m in MIGRATIONS if m.version > current and m.only in (None, dialect)),
                  key=lambda m: m.version)


def migrate(run, dialect: str, words: dict) -> None:
    """Bring a store to ``LATEST``, each migration once, and record its version: the one
    runner of both backends. ``run(sql, params=())`` executes one statement (``?``
    placeholders) in the caller's transaction and returns its cursor; ``words``: the
    dialect's ``SCHEMA_WORDS``."""
    run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    current = run("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    for migration in pending(dialect, current):
        for statement in migration.statements:
            run(statement.format(**words))
    run("DELETE FROM schema_version")  # at LATEST: what is left is another dialect's
    run("INSERT INTO schema_version (version) VALUES (?)", (max(current, LATEST),))
