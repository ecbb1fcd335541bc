"""``bin/outage-trial``: take PostgreSQL away under a busy instance, bring it back, and time
how soon the instance serves again.

A measurement, not a test. One instance on a throwaway PostgreSQL runs a job; the server is
stopped like a crash (``pg_ctl stop -m immediate``) for ``--outage`` seconds, then started
again on the same port and data. Beside it, a probe per endpoint asks ``/healthz``,
``/metrics`` and the job's document in a loop, each answer's status and time kept. It prints
what each endpoint answered during the outage, how long after the database's return each
first answered 200 again, and whether the job then finished with nothing lost.
"""
import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from testbed.fakes.image_source import ImageSource
from testbed.fakes.imgur import FakeImgur
from testbed.postgres_server import PostgresServer

from . import TOKEN
from .subjects import ServiceUnderTest

PROBE_SECONDS = 0.2  # between one endpoint's answer and its next question
STORE_UP = re.compile(r"^uploader_store_up (\S+)$", re.M)


class Probe(threading.Thread):
    """Asks one URL again and again; keeps (asked at, status or None, seconds, store up)."""

    def __init__(self, name: str, url: str):
        super().__init__(name=f"probe-{name}", daemon=True)
        self.label, self.url = name, url
        self.answers = []
        self.done = threading.Event()
        self.http = requests.Session()

    def run(self) -> None:
        while not self.done.is_set():
            asked = time.monotonic()
            status, up = None, None
            try:
                answer = self.http.get(self.url, timeout=30)
                status = answer.status_code
                if found := STORE_UP.search(answer.text):
                    up = float(found.group(1)) == 1
            except requests.RequestException:
                pass
            self.answers.append((asked, status, time.monotonic() - asked, up))
            self.done.wait(PROBE_SECONDS)

    def during(self, start: float, end: float) -> list:
        return [a for a in self.answers if start <= a[0] < end]

    def first_ok_after(self, moment: float, store_up: bool = False):
        """Seconds from ``moment`` to the end of the first 200 asked after it (and, for
        /metrics, saying the store is up), or None."""
        for asked, status, seconds, up in self.answers:
            if asked >= moment and status == 200 and (not store_up or up):
                return asked + seconds - moment
        return None


def wait_for(service, job_id, predicate, timeout=600.0) -> dict:
    """The job once ``predicate(job)`` holds; a read the outage refuses (503) is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = service.http.get(f"{service.url}/v1/images/upload/{job_id}", timeout=60)
        if answer.status_code == 200 and predicate(job := answer.json()):
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} not done after {timeout:.0f} s")


def describe(answers) -> str:
    statuses = {}
    for _, status, _, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    slowest = max((seconds for _, _, seconds, _ in answers), default=0.0)
    said = ", ".join(f"{count} x {status or 'no answer'}" for status, count in sorted(
        statuses.items(), key=lambda item: str(item[0])))
    return f"{said}; slowest answer {slowest:.2f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bin/outage-trial", description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=35.0, help="seconds the database is away")
    parser.add_argument("--urls", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="outage-trial-") as work, PostgresServer() as pg, \
            ImageSource() as source, FakeImgur(access_tokens=(TOKEN,), keep_images=False) as imgur:
        imgur.set_budgets(user_limit=10**12, client_limit=10**12, post_limit=10**12)
        source.latency = 0.2  # so that uploads are in flight when the database goes
        service = ServiceUnderTest(Path(work), imgur.url, database=pg.create_database(),
                                   processes=2, slots=4, lease_seconds=15).start()
        probes = []
        try:
            job_id = service.post([source.url_for(f"/img/outage-{n}.png")
                                   for n in range(args.urls)])
            probes = [Probe("healthz", f"{service.url}/healthz"),
                      Probe("metrics", f"{service.url}/metrics"),
                      Probe("job", f"{service.url}/v1/images/upload/{job_id}")]
            for probe in probes:
                probe.start()
            wait_for(service, job_id, lambda j: len(j["uploaded"]["complete"]) >= 10)
            pg.kill()
            gone = time.monotonic()
            print(f"database stopped (pg_ctl stop -m immediate); back in {args.outage:g} s",
                  flush=True)
            time.sleep(args.outage)
            pg.start()
            back = time.monotonic()
            print(f"database started again after {back - gone:.1f} s", flush=True)
            job = wait_for(service, job_id, lambda j: j["status"] == "complete")
            time.sleep(1)  # a last round of probes
        finally:
            for probe in probes:
                probe.done.set()
            service.stop()
    print(f"\nduring the outage ({back - gone:.1f} s):")
    for probe in probes:
        print(f"  {probe.label:8} {describe(probe.during(gone, back))}")
    print("after the database came back, the first 200 (seconds after its start):")
    for probe in probes:
        first = probe.first_ok_after(back)
        print(f"  {probe.label:8} 200: " + ("never" if first is None else f"{first:.1f} s"))
    first = next(p for p in probes if p.label == "metrics").first_ok_after(back, store_up=True)
    print("  metrics  saying uploader_store_up 1: "
          + ("never" if first is None else f"{first:.1f} s"))
    metrics = next(p for p in probes if p.label == "metrics")
    down = [a for a in metrics.during(gone, back) if a[1] == 200]
    print(f"  /metrics said the store was down in {sum(1 for a in down if a[3] is False)} of "
          f"{len(down)} answers during the outage")
    lost = args.urls - len(job["uploaded"]["complete"])
    print(f"job: {len(job['uploaded']['complete'])} of {args.urls} complete, lost {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
