"""The claim's cost on a large queue: the store alone, no service, both backends.

Each shape puts ``count`` URLs in the queue (128 of them claimed first, so some are in
flight, as under load), then times ``store.claim(n)`` in transactions that are rolled
back, so every claim sees the same queue: the median of ``repeat`` claims, in ms. On
PostgreSQL twice: in a young store (its indexes without statistics yet, as right after
a big POST) and after ANALYZE.

    python -m testbed.bench.queue [--count 100000] [--repeat 30] [--backend sqlite|postgresql]
"""
import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from uploader.config import StorageConfig
from uploader.backends import open_store

IN_FLIGHT = 128
CLAIMS = (1, 16, 128)


class _Undo(Exception):
    """Raised inside a transaction to roll it back."""


def shapes(count: int) -> dict:
    """name -> [(account, URL count of one job)], the jobs in order of creation."""
    per_key = count // 100
    return {
        "one key, one job": [("a", count)],
        "two keys, B's one-URL job last": [("a", count - 1), ("b", 1)],
        "100 keys x 10 jobs": [(f"k{k:03}", per_key // 10) for _ in range(10) for k in range(100)],
        "one key, jobs of 10": [("a", 10)] * (count // 10),
    }


def fill(store, jobs) -> None:
    with store.transaction():
        for n, (account, size) in enumerate(jobs):
            store.create_job(f"job-{n}", [f"https://src.example/{n}/{i}.png" for i in range(size)],
                             account=account)
    with store.transaction():
        store.claim(IN_FLIGHT)


def timed_claims(store, limit: int, repeat: int) -> float:
    """Median seconds of one claim of ``limit`` URLs (each rolled back)."""
    times = []
    for _ in range(repeat):
        with contextlib.suppress(_Undo), store.transaction():
            started = time.perf_counter()
            store.claim(limit)
            times.append(time.perf_counter() - started)
            raise _Undo
    return statistics.median(times)


def measure(storage: StorageConfig, jobs, repeat: int, analyze=None) -> dict:
    store = open_store(storage, "bench")
    try:
        fill(store, jobs)
        figures = {f"claim({n})": timed_claims(store, n, repeat) for n in CLAIMS}
        if analyze is not None:
            analyze()
            figures.update({f"claim({n}), analyzed": timed_claims(store, n, repeat)
                            for n in CLAIMS})
        return figures
    finally:
        store.close()


def run(count: int, repeat: int, backends) -> list:
    """[(backend, shape, figure, seconds)]"""
    rows = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="queue-bench-")))
        server = None
        if "postgresql" in backends:
            from testbed.postgres_server import PostgresServer
            server = stack.enter_context(PostgresServer())
        for n, (shape, jobs) in enumerate(shapes(count).items()):
            for backend in backends:
                if backend == "sqlite":
                    figures = measure(StorageConfig(path=str(work / f"{n}.sqlite3")), jobs, repeat)
                else:
                    url = server.create_database()

                    def analyze(url=url):
                        import psycopg
                        with psycopg.connect(url, autocommit=True) as conn:
                            conn.execute("ANALYZE")

                    figures = measure(StorageConfig(url=url), jobs, repeat, analyze)
                for figure, seconds in figures.items():
                    rows.append((backend, shape, figure, seconds))
                    print(f"  {backend:10} {shape:32} {figure:20} {seconds * 1000:8.2f} ms",
                          flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.bench.queue",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="URLs queued (default 100,000)")
    parser.add_argument("--repeat", type=int, default=30, help="claims timed per figure (median)")
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgresql"),
                        help="only this backend (repeatable; default both)")
    args = parser.parse_args(argv)
    print(f"claims with {args.count:,} URLs queued, {IN_FLIGHT} in flight; median of "
          f"{args.repeat}, each rolled back")
    run(args.count, args.repeat, args.backend or ("sqlite", "postgresql"))


if __name__ == "__main__":
    main()
