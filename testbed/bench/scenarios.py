"""The scenarios: workloads run through the service and the baseline, and their figures."""
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import requests

from . import REPO, MiB
from .fakes import FakeProcess, child_env, kill_group, sized_urls
from .measure import RssSampler, Usage, group_pids, median, percentile, rss_bytes
from .soak import SoakScenario
from .subjects import DENIED, POLL_SECONDS, Baseline, Run, ServiceUnderTest
from .throughput import ThroughputScenarios

SCENARIOS = ("latency", "cpu", "cluster", "s3", "large", "frontend", "scale", "soak")
ON_REQUEST = ("soak",)  # run when named, or small with --quick: the full one takes minutes
BUSY_FAKE = 0.85  # a fake using this much of one core is (close to) the bottleneck


def denied_urls(count: int, tag: str) -> List[str]:
    return [f"http://{DENIED}/{tag}/{i}.jpg" for i in range(count)]


@dataclass
class Figure:
    scenario: str
    name: str
    value: float
    unit: str = ""
    target: str = "-"
    met: Optional[bool] = None

    def shown_value(self) -> str:
        v = self.value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if self.unit == "x":  # three places: a ratio a little short of its target shows it
            return f"{v:.3f} x"
        if self.unit == "%":
            return f"{v * 100:.0f} %"
        if self.unit == "ms":
            return f"{v * 1000:.1f} ms"
        if self.unit == "MiB":  # a small one (a database) with a decimal
            return f"{v / MiB:.{1 if v < 100 * MiB else 0}f} MiB"
        if isinstance(v, int) or abs(v) >= 100:
            return f"{v:,.0f} {self.unit}".strip()
        return f"{v:.3g} {self.unit}".strip()


class Bench(ThroughputScenarios, SoakScenario):
    """Runs the selected scenarios; collects figures and raw runs."""

    def __init__(self, args, workdir: Path, stack: contextlib.ExitStack):
        self.args = args
        self.quick = args.quick
        self.repeat = args.repeat
        self.workdir = workdir
        self.stack = stack
        self.figures: List[Figure] = []
        self.notes: List[str] = []
        self.raw: dict = {}

    def scaled(self, n: int) -> int:
        return max(1, n // 10) if self.quick else n

    def add(self, *args, **kwargs) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        print(f"  {figure.scenario:9} {figure.name:46} {figure.shown_value()}", flush=True)
        return figure

    # -- plumbing --
    def fakes(self, imgur_latency=0.0, source_latency=0.0) -> dict:
        fakes = {"imgur": FakeProcess("imgur", imgur_latency).start(),
                 "source": FakeProcess("source", source_latency).start()}
        for fake in fakes.values():
            self.stack.callback(fake.stop)
        return fakes

    def service(self, name, fakes, *, processes=None, slots=None, **kwargs) -> ServiceUnderTest:
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        service = ServiceUnderTest(directory, fakes["imgur"].url,
                                   processes=processes or self.args.processes,
                                   slots=slots or self.args.uploads_per_process, **kwargs)
        self.stack.callback(service.stop)
        return service.start()

    def check_fakes(self, scenario, runs) -> None:
        """Say so when a fake is (nearly) saturating the one core its GIL allows."""
        for kind in ("imgur", "source"):
            busiest = max(getattr(r.usage, f"{kind}_cpu") / r.usage.wall for r in runs if r.usage.wall)
            self.add(scenario, f"fake {kind} busy (max over runs, of 1 core)", busiest, "%")
            if busiest >= BUSY_FAKE:
                self.notes.append(f"{scenario}: the fake {kind} used {busiest:.0%} of a core in a run;"
                                  " it is probably the bottleneck there")

    def side_by_side(self, service, baseline, make_urls, per_job, fakes, rss=False):
        """``repeat`` pairs of runs, order alternating; returns (service runs, baseline runs)."""
        service_runs, baseline_runs = [], []
        for r in range(self.repeat):
            for who in (("service", "baseline") if r % 2 == 0 else ("baseline", "service")):
                urls = make_urls(f"{who}{r}")
                if who == "service":
                    with RssSampler(service.pid) as sampler:
                        run = service.run(urls, per_job, fakes)
                    run.extra["peak_rss"] = sampler.peak
                    service_runs.append(run)
                else:
                    with RssSampler(os.getpgid(0), focus=os.getpid()) as sampler:
                        run = baseline.run(urls, fakes)
                    run.extra["peak_rss"] = sampler.peak_focus
                    baseline_runs.append(run)
                print(f"    {run.who:8} run {r + 1}: {run.urls} URLs in {run.seconds:.2f} s "
                      f"= {run.rate:.0f}/s, {run.failed} failed, machine CPU busy "
                      f"{run.usage.machine_busy:.0%}", flush=True)
        for runs in (service_runs, baseline_runs):
            failed = sum(r.failed for r in runs)
            if failed:
                self.notes.append(f"{runs[0].who}: {failed} URLs failed in the runs above")
        if baseline.first_error:
            self.notes.append(f"baseline first error: {baseline.first_error}")
        return service_runs, baseline_runs

    def warm_up(self, service, baseline, nbytes, fakes) -> None:
        """Workers started, connections open, code paths hot, before anything is timed."""
        urls = sized_urls(fakes["source"].url, nbytes, 2 * service.slots, "warm")
        service.run(urls, len(urls), fakes)
        run = baseline.run(sized_urls(fakes["source"].url, nbytes, 2 * service.slots, "warm-b"), fakes)
        if run.failed:
            self.notes.append(f"baseline warm-up (not measured): {run.failed} failed, first: "
                              f"{baseline.first_error}")
        baseline.first_error = None

    def record(self, scenario, **raw) -> None:
        self.raw[scenario] = _plain(raw)

    def contenders(self, name, description, **fake_latencies):
        """The fakes, the service and the baseline for a side-by-side scenario, warmed up."""
        fakes = self.fakes(**fake_latencies)
        service = self.service(name, fakes)
        baseline = Baseline(fakes["imgur"].url, service.slots)
        self.stack.callback(baseline.close)
        print(description.replace("{slots}", str(service.slots)))
        self.warm_up(service, baseline, 20480, fakes)
        return fakes, service, baseline

    # -- scenarios --
    def large(self) -> None:
        name, count, nbytes = "large", self.scaled(200), 5 * MiB
        fakes, service, baseline = self.contenders(
            name, f"{name}: {count} URLs of 5 MiB, {{slots}} slots")
        time.sleep(1)
        idle = sum(rss_bytes(pid) for pid in group_pids(service.pid))
        ours, theirs = self.side_by_side(
            service, baseline, lambda tag: sized_urls(fakes["source"].url, nbytes, count, tag),
            max(1, count // 4), fakes)
        rate = median(r.urls * nbytes / MiB / r.seconds for r in ours)
        self.add(name, "service MiB/s", rate, "MiB/s")
        self.add(name, "baseline MiB/s", median(r.urls * nbytes / MiB / r.seconds for r in theirs), "MiB/s")
        self.add(name, "service / baseline (side by side)",
                 median(a.rate / b.rate for a, b in zip(ours, theirs)), "x")
        self.add(name, "service RSS, all processes, idle", idle, "MiB")
        peak = median(r.extra["peak_rss"] for r in ours)
        # Bounded = set by the work the workers hold, not by the job: each URL held may
        # hold its fetched bytes, the upload body and a transient copy of one image.
        limit = idle + 4 * service.held * nbytes
        self.add(name, "service RSS, all processes, peak", peak, "MiB",
                 f"<= idle + 4 x {service.held} URLs held x 5 MiB = {limit / MiB:.0f} MiB",
                 peak <= limit)
        self.add(name, "baseline RSS peak (bench process)", median(r.extra["peak_rss"] for r in theirs), "MiB")
        self.check_fakes(name, ours + theirs)
        self.record(name, idle_rss=idle, service=ours, baseline=theirs)

    def frontend(self) -> None:
        """API latency while the service is loaded, beside a bare Tornado process (canned
        answers, no store, no workers) sampled the same way at the same time."""
        name, count, jobs = "frontend", self.scaled(3000), 6
        fakes = self.fakes(imgur_latency=0.05, source_latency=0.01)
        service = self.service(name, fakes)
        bare = BareTornado().start()
        self.stack.callback(bare.stop)
        print(f"{name}: API latency idle, then while {count} URLs run (Imgur +50 ms), beside a "
              "bare Tornado process")
        sampler, reference = ApiSampler(service.url), ApiSampler(bare.url)
        self.stack.callback(sampler.close)
        self.stack.callback(reference.close)
        runs = []
        for r in range(self.repeat):
            sampler.wait_quiet(service)
            idle = sampler.sample_for(1.5 if self.quick else 3.0)
            urls = sized_urls(fakes["source"].url, 20480, count, f"front{r}")
            with sampler.sampling() as loaded, reference.sampling() as bare_loaded:
                run = service.run(urls, math.ceil(count / jobs), fakes)
            run.extra.update(idle=idle, loaded=loaded, bare=bare_loaded)
            runs.append(run)
            print(f"    run {r + 1}: load {run.rate:.0f} URLs/s; GET p50/p99 idle "
                  f"{_ms(idle['get'], 50)}/{_ms(idle['get'], 99)} loaded {_ms(loaded['get'], 50)}/"
                  f"{_ms(loaded['get'], 99)} ms, bare Tornado {_ms(bare_loaded['get'], 50)}/"
                  f"{_ms(bare_loaded['get'], 99)} ms; POST loaded {_ms(loaded['post'], 50)}/"
                  f"{_ms(loaded['post'], 99)} ms, bare {_ms(bare_loaded['post'], 50)}/"
                  f"{_ms(bare_loaded['post'], 99)} ms", flush=True)
        for kind, label in (("get", "GET /v1/images/upload/<id>"), ("post", "POST 10-URL job")):
            self.add(name, f"{label} p50 idle", median(percentile(r.extra["idle"][kind], 50) for r in runs), "ms")
            self.add(name, f"{label} p50 loaded", median(percentile(r.extra["loaded"][kind], 50) for r in runs), "ms")
            bare99 = median(percentile(r.extra["bare"][kind], 99) for r in runs)
            self.add(name, "  bare Tornado beside it, p99 loaded", bare99, "ms")
            loaded99 = median(percentile(r.extra["loaded"][kind], 99) for r in runs)
            self.add(name, f"{label} p99 loaded", loaded99, "ms",
                     f"<= 2 x bare p99 = {bare99 * 2000:.1f} ms", loaded99 <= 2 * bare99)
        self.add(name, "load URLs/s while sampled", median(r.rate for r in runs), "URLs/s")
        self.record(name, runs=runs)

    def scale(self) -> None:
        name = "scale"
        count, nlinks = self.scaled(100_000), self.scaled(1_000_000)
        # The source answers slowly, so the one worker barely competes with what is measured.
        fakes = self.fakes(source_latency=0.5)
        service = self.service(name, fakes, processes=1, slots=1,
                               server={"max_urls_per_job": 2 * count, "max_body_bytes": 256 * MiB})
        print(f"{name}: one POST of {count:,} URLs; GET /v1/images of {nlinks:,} links")
        posts = []
        for r in range(self.repeat):
            urls = [f"{fakes['source'].url}/status/404?scale={r}-{i}" for i in range(count)]
            body = json.dumps({"urls": urls}).encode()
            time.sleep(0.5)
            before = rss_bytes(service.pid)
            with RssSampler(service.pid, focus=service.pid) as sampler:
                started = time.perf_counter()
                answer = service.http.post(f"{service.url}/v1/images/upload", data=body, timeout=120,
                                           headers={"Content-Type": "application/json"})
                accepted = time.perf_counter() - started
                time.sleep(1.0)  # the job's first dispatch turn, too
            if answer.status_code != 202:
                raise RuntimeError(f"big POST answered {answer.status_code}: {answer.text[:300]}")
            posts.append({"seconds": accepted, "body_bytes": len(body), "rss_before": before,
                          "growth": sampler.peak_focus - before, "group_peak": sampler.peak})
            print(f"    POST {count:,} URLs ({len(body) / MiB:.1f} MiB): accepted in {accepted:.2f} s, "
                  f"front-end RSS +{(sampler.peak_focus - before) / MiB:.0f} MiB", flush=True)
        service.stop()
        accept = median(p["seconds"] for p in posts)
        self.add(name, f"POST of {count:,} URLs: time to 202", accept, "ms", "< 2 s", accept < 2.0)
        growth = median(p["growth"] for p in posts)
        self.add(name, "  front-end RSS growth", growth, "MiB", "< 64 MiB", growth < 64 * MiB)
        self.add(name, "  peak RSS, all processes", median(p["group_peak"] for p in posts), "MiB")

        store_path = self.workdir / "links.sqlite3"
        inserted = fill_links(store_path, nlinks)
        service = self.service(name + "-links", fakes, processes=1, slots=1, storage=store_path)
        gets = []
        for r in range(self.repeat):
            time.sleep(0.5)
            before = rss_bytes(service.pid)
            with RssSampler(service.pid, focus=service.pid) as sampler:
                got = timed_get(f"{service.url}/v1/images", check_count=nlinks if r == 0 else None)
            got.update(rss_before=before, growth=sampler.peak_focus - before)
            gets.append(got)
            print(f"    GET /v1/images: first byte {got['ttfb'] * 1000:.0f} ms, all "
                  f"{got['total']:.2f} s ({got['bytes'] / MiB:.0f} MiB), front-end RSS "
                  f"+{got['growth'] / MiB:.0f} MiB", flush=True)
        self.add(name, f"GET /v1/images ({nlinks:,} links): first byte", median(g["ttfb"] for g in gets), "ms")
        self.add(name, "  total time", median(g["total"] for g in gets), "s")
        growth = median(g["growth"] for g in gets)
        self.add(name, "  front-end RSS growth", growth, "MiB", "< 64 MiB", growth < 64 * MiB)
        self.record(name, posts=posts, gets=gets, links_insert_seconds=inserted)


class BareTornado:
    """``testbed.bench.bare`` in a child process of its own (its own GIL, like the service)."""

    def start(self) -> "BareTornado":
        self.proc = subprocess.Popen([sys.executable, "-m", "testbed.bench.bare"], cwd=REPO,
                                     env=child_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError("the bare Tornado reference did not start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        kill_group(self.proc)


class ApiSampler:
    """Times ``GET /v1/images/upload/<id>`` (a small job) and ``POST`` of 10-URL jobs,
    from its own thread: four GETs, then one POST, 20 ms apart."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()
        self.posted = 0
        self.job_id = self._post()[1]

    def close(self) -> None:
        self.http.close()

    def _post(self):
        self.posted += 1
        urls = denied_urls(10, f"sample{self.posted}")
        started = time.perf_counter()
        answer = self.http.post(f"{self.url}/v1/images/upload", json={"urls": urls}, timeout=60)
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        self.last_job = answer.json()["jobId"]
        return elapsed, self.last_job

    def wait_quiet(self, service, timeout: float = 120) -> None:
        """Idle means idle: the sample jobs queued behind a load are done, then a pause."""
        deadline = time.monotonic() + timeout
        while service.job(self.last_job)["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        time.sleep(0.5)

    def _get(self) -> float:
        started = time.perf_counter()
        self.http.get(f"{self.url}/v1/images/upload/{self.job_id}", timeout=60).raise_for_status()
        return time.perf_counter() - started

    def _loop(self, stop: threading.Event, into: dict) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 5 == 0:
                into["post"].append(self._post()[0])
            else:
                into["get"].append(self._get())
            stop.wait(0.02)

    @contextlib.contextmanager
    def sampling(self):
        samples, stop = {"get": [], "post": []}, threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop, samples), name="api-sampler")
        thread.start()
        try:
            yield samples
        finally:
            stop.set()
            thread.join()

    def sample_for(self, seconds: float) -> dict:
        with self.sampling() as samples:
            time.sleep(seconds)
        return samples


def fill_links(path: Path, n: int) -> float:
    """Insert ``n`` links straight into a new store file; returns the seconds it took."""
    import sqlite3

    from uploader.config import StorageConfig
    from uploader.backends import open_store

    started = time.perf_counter()
    open_store(StorageConfig(path=str(path)), "bench").close()  # the schema
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO links (link, sha256, created) VALUES (?, ?, ?)",
            ((f"https://i.imgur.example/b{i:07d}.jpg", f"{i:064x}", now) for i in range(n)))
    return time.perf_counter() - started


def timed_get(url: str, check_count: Optional[int] = None) -> dict:
    """Time to first body byte and to the end of a streamed GET."""
    started = time.perf_counter()
    first, size, chunks = None, 0, []
    with requests.get(url, stream=True, timeout=300) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(256 * 1024):
            if first is None:
                first = time.perf_counter() - started
            size += len(chunk)
            if check_count is not None:
                chunks.append(chunk)
    total = time.perf_counter() - started
    if check_count is not None:
        got = len(json.loads(b"".join(chunks))["uploaded"])
        if got != check_count:
            raise RuntimeError(f"GET /v1/images listed {got} links, expected {check_count}")
    return {"ttfb": first, "total": total, "bytes": size}


def _ms(values, p) -> str:
    return f"{percentile(values, p) * 1000:.1f}"


def _plain(value):
    """Raw numbers for --json: dataclasses as dicts, sample lists summarised."""
    if isinstance(value, (Run, Usage)):
        out = asdict(value)
        if isinstance(value, Run):
            out["rate"] = value.rate
            out["extra"] = _plain(value.extra)
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, float) for v in value):
            return {"n": len(value), "p50": percentile(value, 50), "p90": percentile(value, 90),
                    "p99": percentile(value, 99), "max": max(value)}
        return [_plain(v) for v in value]
    return value
