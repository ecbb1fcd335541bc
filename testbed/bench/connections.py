"""``python -m testbed.bench.connections``: what N instances cost a PostgreSQL server.

A drill, not a test. A throwaway server with ``--max-connections`` (a stock server's 100
by default, 3 of them kept for superusers), N instances with the default pool and worker
settings connecting as an ordinary role, an operator's psql session (the sampler's own
connection, a superuser's) held open throughout, and one job per instance. It prints the
most connections the instances held at once (``pg_stat_activity``, by role of the
connection), the refusals their logs report, the URLs completed and how long it took,
and PostgreSQL's statements per URL (``pg_stat_statements``, the instances' role only).

    python -m testbed.bench.connections                        # 8 instances, max_connections 100
    python -m testbed.bench.connections --instances 1 --urls 200
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

from .fakes import FakeProcess
from .subjects import ServiceUnderTest

ROLE = "uploader"
SAMPLE_SECONDS = 0.05


class Sampler:
    """The operator's session: samples the instances' connections until stopped."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url, autocommit=True)
        self.most = 0
        self.most_by_role = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(SAMPLE_SECONDS):
            rows = self.conn.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity WHERE usename = %s"
                " GROUP BY 1", (ROLE,)).fetchall()
            self.most = max(self.most, sum(n for _, n in rows))
            for name, n in rows:
                self.most_by_role[name] = max(self.most_by_role[name], n)

    def stop(self):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--max-connections", type=int, default=100)
    parser.add_argument("--urls", type=int, default=400, help="in all, split among instances")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120, help="seconds given to the jobs")
    parser.add_argument("--imgur-latency", type=float, default=0.0, help="seconds per upload")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="uploader-connections-"))
    with PostgresServer(max_connections=args.max_connections,
                        extensions=("pg_stat_statements",)) as server:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN")
            admin.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
        with psycopg.connect(server.url(ROLE), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
        database = server.url(ROLE).replace("postgres@", f"{ROLE}@")
        source = FakeProcess("source").start()
        imgur = FakeProcess("imgur", args.imgur_latency).start()
        sampler = Sampler(server.url(ROLE)).start()
        instances = []
        try:
            started = time.monotonic()
            for n in range(args.instances):
                directory = work / f"instance-{n}"
                directory.mkdir()
                instances.append(ServiceUnderTest(directory, imgur.url, database=database,
                                                  processes=args.processes, slots=8))
            threads = [threading.Thread(target=i.start) for i in instances]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(f"{args.instances} instances up in {time.monotonic() - started:.1f} s")
            sampler.conn.execute("SELECT pg_stat_statements_reset()")
            share = args.urls // args.instances
            began = time.monotonic()
            for n, instance in enumerate(instances):
                instance.post([f"{source.url}/img/budget-{n}-{k}.png" for k in range(share)])
            deadline = began + args.timeout
            while True:  # watched in the database as the operator (not counted as theirs)
                complete, finished = sampler.conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'complete'), count(*) FILTER"
                    " (WHERE state IN ('complete', 'failed')) FROM urls").fetchone()
                if finished == args.instances * share or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            took = time.monotonic() - began
            statements = sampler.conn.execute(
                "SELECT sum(calls) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                " WHERE r.rolname = %s", (ROLE,)).fetchone()[0]
            top = sampler.conn.execute(
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
                " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                " WHERE r.rolname = %s ORDER BY calls DESC LIMIT 12", (ROLE,)).fetchall()
            time.sleep(1)  # a last sample after the jobs
        finally:
            sampler.stop()
            for instance in instances:
                instance.stop()
            source.stop()
            imgur.stop()
        refused = sum(len(re.findall(r"too many (?:clients|connections)", i.log_path.read_text(
            errors="replace"))) for i in instances)
        total = args.instances * share
        print(f"max_connections {args.max_connections}: at most {sampler.most} connections of"
              f" the instances at once ({sampler.most / args.instances:.1f} per instance),"
              f" plus this operator session")
        for name, n in sorted(sampler.most_by_role.items()):
            print(f"  {name or '(no application_name)'}: at most {n}")
        print(f"log lines reporting refused connections: {refused}")
        print(f"URLs complete: {complete} of {total} in {took:.1f} s ({complete / took:.0f}/s)")
        print(f"statements: {statements} in all, {statements / total:.1f} per URL; the most run:")
        for calls, query in top:
            print(f"  {calls:7d}  {query}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
