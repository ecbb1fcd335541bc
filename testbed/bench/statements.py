"""``python -m testbed.bench.statements``: PostgreSQL's statements per URL in a healthy cluster
run, by kind.

A measurement, not a test. For each case, a fresh database on a throwaway server; N
instances with the default pool and worker settings, connected directly (so statements
are prepared, as a direct connection does) as an ordinary role; a warm-up job on each
(workers started, first claims and the token read made); then the URLs of the case are
posted in jobs of at most 200, spread over the instances, and counted from then until
the last URL is final (watched from a superuser's connection, which is not counted).

Every statement the instances' role runs is counted from the server's log
(``log_statement = 'all'`` for that role), by kind (``KINDS``); ``BEGIN; SET LOCAL ...``
sent at once counts as two. ``pg_stat_statements`` (preloaded) gives its own total
beside it: it misses a utility statement that psycopg runs prepared (the writer's
``COMMIT`` and ``NOTIFY``, its savepoints: psycopg prepares what a connection runs five
times), so it counts a little less.

The image source answers at once, Imgur (fake) in 50 ms; S3 is moto on loopback. The
cases ``2d`` and ``8d`` keep the default pace (``imgur.rate_limit``: 1 upload/s, a burst
of 5): what a healthy run with default settings costs, 100 URLs in about as many seconds;
their warm-up is one URL per worker process (each reads the token once), as 32 per
instance at that pace would take minutes.

    python -m testbed.bench.statements                     # every case
    python -m testbed.bench.statements --case 2 --case 8p  # some
"""
import argparse
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

from testbed.postgres_server import PostgresServer

from .fakes import S3_BUCKET, FakeProcess
from .subjects import ServiceUnderTest

ROLE = "uploader"
PER_JOB = 200
WARM_EACH, WARM_EACH_SLOW = 32, 4  # warm-up URLs per instance; at a slow pace, one per worker
SLOW_PACE = 10.0  # uploads/s: below it, the warm-up is the slow one
START_SECONDS = 180  # many instances starting at once on a busy machine take their time
# name: (instances, URLs in all, imgur.rate_limit.uploads_per_second, image host)
CASES = {
    "2": (2, 2000, 0.0, "imgur"),
    "2p": (2, 2000, 100.0, "imgur"),
    "8": (8, 400, 0.0, "imgur"),
    "8p": (8, 400, 100.0, "imgur"),
    "2s3": (2, 2000, 0.0, "s3"),
    "2d": (2, 100, 1.0, "imgur"),
    "8d": (8, 100, 1.0, "imgur"),
}
# What each statement is, by the start of its text (whitespace collapsed): the first match.
KINDS = [
    ("claim", r"WITH RECURSIVE wanted"),
    ("claim: suspect", r"WITH picked AS MATERIALIZED \(SELECT id FROM urls WHERE state = 'queued' AND suspect = 1"),
    ("suspects waiting?", r"SELECT id FROM urls WHERE state = 'queued' AND suspect ="),
    ("poll: anything queued?", r"SELECT 1 FROM urls WHERE state = 'queued' LIMIT"),
    ("claim: jobs in progress", r"UPDATE jobs SET status = \$1 WHERE id IN"),
    ("finish: job counters", r"(UPDATE jobs SET remaining|WITH d AS \(SELECT \* FROM unnest)"),
    ("finish: results (batch)", r"WITH r AS \(SELECT \* FROM unnest"),
    ("finish: URLs (batch)", r"UPDATE urls AS u SET state = r\.state"),
    ("finish: URL (one)", r"UPDATE urls SET state = \$1, attempts"),
    ("finish: links", r"INSERT INTO links"),
    ("finish: dedup claims done", r"DELETE FROM dedup_claims WHERE \(sha256, host, account\) IN"),
    ("finish: dedup claim done", r"DELETE FROM dedup_claims WHERE sha256 = \$1 AND host = \$2 AND account = \$3$"),
    ("progress, waits, attempts", r"UPDATE urls (AS u )?SET (progress_bytes|waiting_until|attempts)"),
    ("dedup: claim", r"(WITH won AS \()?INSERT INTO dedup_claims"),
    ("dedup: holders", r"SELECT sha256, account, instance, worker, generation, thread, link FROM dedup_claims"),
    ("dedup: committed links", r"SELECT c\.sha256, c\.account, \(SELECT link FROM links"),
    ("dedup: publish", r"WITH mine AS MATERIALIZED"),
    ("dedup: release", r"DELETE FROM dedup_claims WHERE sha256 = .* AND instance ="),
    ("gate: change", r"WITH written AS \(UPDATE gate"),
    ("gate: read", r"SELECT version, state"),
    ("gate: write", r"UPDATE gate SET"),
    ("token read", r"SELECT access_token, refresh_token, version, rejected FROM credentials"),
    ("job: create", r"(INSERT INTO jobs|COPY urls|SAVEPOINT|RELEASE SAVEPOINT)"),
    ("lease: heartbeat", r"UPDATE instances SET heartbeat"),
    ("lease: reap", r"(DELETE FROM instances WHERE heartbeat|WITH gone AS \(DELETE FROM instances"
                    r"|SELECT id, job_id, url, attempts FROM urls"
                    r"|UPDATE urls SET state = 'queued', owner = NULL, lease = NULL, )"),
    ("courier", r"(WITH picked AS MATERIALIZED \(SELECT id FROM outbox|SELECT MIN\(next_at\))"),
    ("transaction: BEGIN", r"BEGIN"),
    ("transaction: SET LOCAL", r"SET LOCAL"),
    ("transaction: COMMIT", r"COMMIT"),
    ("transaction: ROLLBACK", r"ROLLBACK"),
    ("NOTIFY", r"NOTIFY"),
]


PGSS = "(pg_stat_statements)"
LOGGED = re.compile(r" LOG:  (?:statement|execute [^:]+): (.*)$")


def kind_of(query: str) -> str:
    text = re.sub(r"\s+", " ", query).strip()
    for kind, pattern in KINDS:
        if re.match(pattern, text):
            return kind
    return "other: " + text[:60]


def run_case(server, source, imgur, s3, *, instances: int, urls: int, pace: float,
             host: str, tag: str) -> Counter:
    """One case on a fresh database: statements by kind, for ``urls`` URLs."""
    name = f"stmts_{tag}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
    with psycopg.connect(server.url(name), autocommit=True) as admin:
        admin.execute("CREATE EXTENSION pg_stat_statements")
    database = server.url(name).replace("postgres@", f"{ROLE}@")
    hosts = {"s3": {"image_host": "s3", "s3": {
        "bucket": S3_BUCKET, "endpoint_url": s3.url if s3 else "", "prefix": f"{tag}/",
        "access_key_id": "bench", "secret_access_key": "bench-secret"}}}
    work = Path(tempfile.mkdtemp(prefix=f"uploader-statements-{tag}-"))
    services = []
    with psycopg.connect(server.url(name), autocommit=True) as watcher:
        try:
            for n in range(instances):
                (work / str(n)).mkdir()
                services.append(ServiceUnderTest(work / str(n), imgur.url, database=database,
                                                 processes=4, slots=8, pace=pace,
                                                 host=hosts.get(host)))
            starting = [threading.Thread(target=s.start, kwargs={"timeout": START_SECONDS})
                        for s in services]
            for thread in starting:
                thread.start()
            for thread in starting:
                thread.join()
            if not all(s.url for s in services):
                raise RuntimeError("an instance did not start")
            each = WARM_EACH_SLOW if 0 < pace < SLOW_PACE else WARM_EACH
            warm = [f"{source.url}/img/{tag}-warm-{n}-{k}.png" for n in range(instances)
                    for k in range(each)]
            for n, service in enumerate(services):
                service.post(warm[n * each:(n + 1) * each])
            _wait_final(watcher, len(warm))
            time.sleep(1)  # the warm-up's last answers told, its tickets given back
            watcher.execute("SELECT pg_stat_statements_reset()")
            log_start = server.log.stat().st_size
            batch = [f"{source.url}/img/{tag}-{k}.png" for k in range(urls)]
            size = min(PER_JOB, urls // instances)
            jobs = [batch[i:i + size] for i in range(0, urls, size)]
            began = time.monotonic()
            for n, job in enumerate(jobs):
                services[n % instances].post(job)
            complete = _wait_final(watcher, len(warm) + urls) - len(warm)
            took = time.monotonic() - began
            log_end = server.log.stat().st_size
            counted = watcher.execute(
                "SELECT sum(calls) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                " JOIN pg_database d ON d.oid = s.dbid WHERE r.rolname = %s AND d.datname = %s",
                (ROLE, name)).fetchone()[0]
        finally:
            for service in services:
                service.stop()
    counts = Counter(kind_of(statement) for statement in logged(server.log, log_start, log_end))
    counts[PGSS] = counted
    print(f"  case {tag}: {complete} of {urls} URLs complete in {took:.1f} s, "
          f"{(sum(counts.values()) - counted) / urls:.2f} statements per URL "
          f"({counted / urls:.2f} in pg_stat_statements)", flush=True)
    return counts


def logged(path: Path, start: int, end: int):
    """The statements the server logged between two offsets of its log, one by one."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    for line in text.splitlines():
        found = LOGGED.search(line)
        if found:
            yield from (part.strip() for part in found.group(1).split(";") if part.strip())


def _wait_final(watcher, total: int, timeout: float = 300) -> int:
    """Until ``total`` URLs are final; returns how many are complete."""
    deadline = time.monotonic() + timeout
    while True:
        complete, final = watcher.execute(
            "SELECT count(*) FILTER (WHERE state = 'complete'), count(*) FILTER"
            " (WHERE state IN ('complete', 'failed')) FROM urls").fetchone()
        if final >= total:
            return complete
        if time.monotonic() > deadline:
            raise RuntimeError(f"{final} of {total} URLs final after {timeout:.0f} s")
        time.sleep(0.05)


def print_table(results: dict) -> None:
    kinds = sorted({k for counts in results.values() for k in counts if k != PGSS},
                   key=lambda k: -max(c[k] / CASES[t][1] for t, c in results.items()))
    tags = list(results)
    width = max(len(k) for k in kinds + ["kind"])
    print("\nstatements per URL, by kind; cases: " + "; ".join(
        f"{t} = {CASES[t][0]} instances, {CASES[t][1]} URLs, "
        + (f"{CASES[t][3]}" if CASES[t][3] != "imgur" else
           f"Imgur {'paced ' + format(CASES[t][2], 'g') + '/s' if CASES[t][2] else 'unpaced'}")
        for t in tags))
    print("kind".ljust(width) + "".join(t.rjust(8) for t in tags))
    for kind in kinds:
        print(kind.ljust(width) + "".join(
            f"{results[t][kind] / CASES[t][1]:8.2f}" for t in tags))
    print("all".ljust(width) + "".join(
        f"{(sum(results[t].values()) - results[t][PGSS]) / CASES[t][1]:8.2f}" for t in tags))
    print(PGSS.ljust(width) + "".join(f"{results[t][PGSS] / CASES[t][1]:8.2f}" for t in tags))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only this case (repeatable; default: all)")
    args = parser.parse_args(argv)
    tags = args.case or list(CASES)
    results = {}
    with PostgresServer(extensions=("pg_stat_statements",)) as server:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN")
            admin.execute(f"ALTER ROLE {ROLE} SET log_statement = 'all'")
        source = FakeProcess("source").start()
        imgur = FakeProcess("imgur", 0.05).start()
        s3 = FakeProcess("s3").start() if any(CASES[t][3] == "s3" for t in tags) else None
        try:
            for tag in tags:
                instances, urls, pace, host = CASES[tag]
                results[tag] = run_case(server, source, imgur, s3, instances=instances,
                                        urls=urls, pace=pace, host=host, tag=tag)
        finally:
            for fake in (source, imgur, s3):
                if fake is not None:
                    fake.stop()
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
