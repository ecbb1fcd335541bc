"""What is measured: the real service in its own process group, the naive baseline, and the
least a pipelined client does (the fresh-service scenarios' reference)."""
import contextlib
import datetime
import logging
import multiprocessing
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import requests
import urllib3
import yaml

from . import REPO, TOKEN
from .fakes import child_env, kill_group
from .measure import Usage, measure_usage

STARTED = re.compile(r"Starting Server on (http://\S+)")
DENIED = "denied.bench.invalid"  # refused by configuration: a URL that costs no network
POLL_SECONDS = 0.1

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One pass of a workload through the service or the baseline."""

    who: str
    urls: int
    seconds: float
    failed: int
    usage: Usage = field(default_factory=Usage)
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.urls / self.seconds if self.seconds > 0 else 0.0


def held(processes: int, slots: int) -> int:
    """The URLs a bench service's workers hold at most: their upload slots' and as many
    fetched ahead (fetch_ahead = uploads_per_process here). A crash can re-upload no more."""
    return 2 * processes * slots


class ServiceUnderTest:
    """``python -m uploader`` with a temporary config, in its own process group."""

    def __init__(self, directory: Path, imgur_url: str, *, processes: int, slots: int,
                 storage: Optional[Path] = None, server: Optional[dict] = None,
                 database: Optional[str] = None, lease_seconds: Optional[float] = None,
                 host: Optional[dict] = None, pace: float = 0.0):
        """``database``: a PostgreSQL URL (instances on one database act as one service);
        ``host``: config sections that choose another image host than the fake Imgur;
        ``pace``: imgur.rate_limit.uploads_per_second (0: unpaced; paced, the default burst)."""
        self.directory = directory
        self.slots = processes * slots
        self.held = held(processes, slots)
        config = {
            "server": {"host": "127.0.0.1", "port": 0, "max_urls_per_job": 1000,
                       **(server or {})},
            "workers": {"processes": processes, "uploads_per_process": slots, "fetch_ahead": slots,
                        "shutdown_grace_seconds": 5},
            "image_host": "imgur",
            "imgur": {"api_url": imgur_url, "access_token": TOKEN, "timeout_seconds": 60,
                      "rate_limit": {"uploads_per_second": pace, "burst": 5 if pace else 1}},
            "fetch": {"allow_private_networks": True, "timeout_seconds": 60,
                      "denied_hosts": [DENIED]},
            "storage": {"path": str(storage or directory / "store.sqlite3"),
                        **({"url": database} if database else {}),
                        **({"lease_seconds": lease_seconds} if lease_seconds else {})},
            "local": {"directory": str(directory / "images")},
            "logging": {"level": "INFO"},
            **(host or {}),
        }
        self.config_path = directory / "service.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "service.log"
        self.proc = self.url = None
        self.http = requests.Session()
        self.companions = []  # other instances on the same database: measured with this one
        self.extra_pids = lambda: []  # more processes serving it (the PostgreSQL server's)

    def start(self, timeout: float = 60) -> "ServiceUnderTest":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uploader", "--config", str(self.config_path)],
            cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.url is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline().decode(errors="replace")
                if not line and self.proc.poll() is not None:
                    break
                if match := STARTED.search(line):
                    self.url = match.group(1)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"service did not start; see {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-3000:])
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        kill_group(self.proc)
        self._log.close()
        self.http.close()

    def post(self, urls) -> str:
        answer = self.http.post(f"{self.url}/v1/images/upload", json={"urls": urls}, timeout=120)
        if answer.status_code != 202:
            raise RuntimeError(f"POST answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()["jobId"]

    def cpu_by_role(self, usage: Usage) -> dict:
        """CPU seconds of a run split into front ends, worker processes, the database (a
        cluster's) and the rest (the multiprocess managers and fork servers)."""
        instances = [self, *self.companions]
        fronts = {s.pid for s in instances}
        workers = {pid for s in instances
                   for pid in s.http.get(f"{s.url}/healthz", timeout=30).json()["workers"]["pids"]}
        database = set(self.extra_pids())
        roles = {"front end": 0.0, "workers": 0.0, "manager and helpers": 0.0, "database": 0.0}
        for pid, seconds in usage.service_by_pid.items():
            role = ("front end" if pid in fronts else "workers" if pid in workers else
                    "database" if pid in database else "manager and helpers")
            roles[role] += seconds
        return roles

    def job(self, job_id) -> dict:
        answer = self.http.get(f"{self.url}/v1/images/upload/{job_id}", timeout=60)
        answer.raise_for_status()
        return answer.json()

    def run(self, urls, per_job: int, fakes, timeout: float = 900) -> Run:
        """Submit ``urls`` in jobs of ``per_job``; time from the first POST to the last
        ``finished`` stamp (the service's own, so polling granularity does not count).
        Progress is polled on the job listing (counts only), as a client watching many
        jobs would: polling whole job documents would charge the service for the bench."""
        pgids = [self.pid, *(other.pid for other in self.companions)]
        with measure_usage(pgids, fakes, self.extra_pids()) as usage:
            started = time.time()
            ids = [self.post(urls[i:i + per_job]) for i in range(0, len(urls), per_job)]
            deadline = time.monotonic() + timeout
            while True:
                mine = self.summaries(ids)
                if all(job is not None and job["status"] == "complete" for job in mine):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jobs not complete after {timeout:.0f} s")
                time.sleep(POLL_SECONDS)
        failed = sum(job["counts"]["failed"] for job in mine)
        if failed and not hasattr(self, "shown_failure"):
            job = self.job(next(j["id"] for j in mine if j["counts"]["failed"]))
            self.shown_failure = next(u for u in job["urls"] if u["state"] == "failed")
            log.warning("service failure: %s", self.shown_failure)
        return Run("service", len(urls), max(_epoch(j["finished"]) for j in mine) - started,
                   failed, usage)

    def summaries(self, ids) -> list:
        """The job listing's entries for ``ids``, paging back past newer jobs (others'
        samples) only when they hide some of ours."""
        found, limit, before = {}, min(500, len(ids)), None
        while len(found) < len(ids):
            page = self.http.get(f"{self.url}/v1/images/upload", timeout=60, params={
                "limit": limit, **({"before": before} if before else {})}).json()
            found.update((job["id"], job) for job in page["jobs"] if job["id"] in ids)
            limit, before = 500, page["next"]
            if before is None:
                break
        return [found.get(job_id) for job_id in ids]


def _epoch(stamp: str) -> float:
    moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


# --- the naive baseline ----------------------------------------------------------------------

class Baseline:
    """One process, ``threads`` threads, each: requests GET, then multipart POST to Imgur."""

    def __init__(self, imgur_url: str, threads: int):
        self.upload_url = imgur_url + "/3/image"
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="baseline")
        self.local = threading.local()
        self.first_error = None

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _one(self, url) -> bool:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        try:
            got = session.get(url, timeout=60)
            if got.status_code != 200:
                raise RuntimeError(f"GET answered {got.status_code}")
            files = {"image": ("image.jpg", got.content, got.headers.get("Content-Type"))}
            sent = session.post(self.upload_url, headers=self.headers, files=files, timeout=60)
            if sent.status_code != 200 or not sent.json()["data"]["link"]:
                raise RuntimeError(f"upload answered {sent.status_code}: {sent.text[:200]}")
            return True
        except Exception as exc:  # counted as a failure, like the service's
            self.first_error = self.first_error or f"{url}: {type(exc).__name__}: {exc}"
            return False

    def run(self, urls, fakes) -> Run:
        with measure_usage(None, fakes) as usage:
            started = time.perf_counter()
            ok = sum(self.pool.map(self._one, urls))
            seconds = time.perf_counter() - started
        return Run("baseline", len(urls), seconds, len(urls) - ok, usage)


# --- the least a pipelined client does ---------------------------------------------------------

class Pipelined:
    """The service's shape with nothing else: ``processes`` processes, each with fetch
    threads that keep up to its share of ``held`` images in hand and its share of ``slots``
    upload threads (pooled ``urllib3`` connections, opened afresh each run); the URLs split
    among them beforehand. No store, no dedup, no gate, no dispatching: what a fresh
    service could reach on this machine if its bookkeeping cost nothing."""

    def __init__(self, imgur_url: str, *, processes: int, slots: int, held: int):
        self.imgur_url = imgur_url
        self.processes, self.slots, self.held = processes, slots, held
        self.first_error = None

    def run(self, urls, fakes) -> Run:
        context = multiprocessing.get_context("spawn")
        go, reports = context.Event(), context.Queue()
        parts = [context.Process(target=_pipelined_part, daemon=True, args=(
            urls[i::self.processes], self.slots // self.processes,
            self.held // self.processes, self.imgur_url, go, reports))
            for i in range(self.processes)]
        for part in parts:
            part.start()
        try:
            for _ in parts:  # every part's threads are waiting for the start
                _report(reports, 60, "did not start")
            with measure_usage(None, fakes) as usage:
                started = time.time()
                go.set()
                ends = [_report(reports, 900, "did not finish") for _ in parts]
                seconds = max(end for end, *_ in ends) - started
        finally:
            for part in parts:
                part.join(5)
                if part.is_alive():
                    part.kill()
        ok = sum(done for _, done, _, _ in ends)
        self.first_error = self.first_error or next((error for _, _, error, _ in ends if error),
                                                    None)
        usage.bench_cpu = sum(cpu for *_, cpu in ends)  # the reference's processes, not ours
        return Run("pipelined", len(urls), seconds, len(urls) - ok, usage)


def _report(reports, timeout: float, failure: str):
    try:
        return reports.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"a process of the pipelined reference {failure} within "
                           f"{timeout:.0f} s") from None


def _pipelined_part(urls, slots, in_hand, imgur_url, go, reports) -> None:
    """One process of ``Pipelined``: reports once ready, then (end, uploaded, first error,
    CPU seconds it spent)."""
    http = urllib3.PoolManager(maxsize=in_hand)
    todo, ready = queue.SimpleQueue(), queue.SimpleQueue()
    room = threading.Semaphore(in_hand)  # a URL fetched and not yet uploaded holds one
    outcomes, errors = queue.SimpleQueue(), []
    for url in urls:
        todo.put(url)

    def fetch():
        go.wait()
        while True:
            room.acquire()
            try:
                url = todo.get_nowait()
            except queue.Empty:
                return
            try:
                got = http.request("GET", url, timeout=60)
                ready.put(got.data if got.status == 200 else RuntimeError(f"GET {got.status}"))
            except Exception as exc:
                ready.put(exc)

    def upload():
        while True:
            data = ready.get()
            try:
                if isinstance(data, Exception):
                    raise data
                body, content_type = urllib3.encode_multipart_formdata(
                    {"image": ("image.jpg", data, "image/jpeg")})
                sent = http.request("POST", imgur_url + "/3/image", body=body, timeout=60,
                                    headers={"Content-Type": content_type,
                                             "Authorization": f"Bearer {TOKEN}"})
                if sent.status != 200 or not sent.json()["data"]["link"]:
                    raise RuntimeError(f"upload answered {sent.status}")
                outcomes.put(True)
            except Exception as exc:  # counted as a failure, like the service's
                errors.append(f"{type(exc).__name__}: {exc}")
                outcomes.put(False)
            room.release()

    for target, count in ((fetch, in_hand), (upload, slots)):
        for _ in range(count):
            threading.Thread(target=target, daemon=True).start()
    reports.put("ready")
    cpu = time.process_time()
    done = sum(outcomes.get() for _ in urls)
    reports.put((time.time(), done, errors[0] if errors else None, time.process_time() - cpu))
