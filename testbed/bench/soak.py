"""The soak (``bin/bench --scenario soak``): does a cluster stay the same size and speed
while retention deletes what it finished?

Two instances on one throwaway PostgreSQL (autovacuum at the server's defaults), retention
on with a short window (``WINDOW``: finished jobs older than it are pruned every
``CHECK`` seconds), the fake Imgur at +50 ms and the image source. ``--soak-urls`` URLs of
20 KB (100,000; ``--quick``: 10,000 and a shorter window) go in jobs of ``PER_JOB``,
alternately to each instance, ``BACKLOG`` jobs unfinished at a time: a new job for each
one that finishes, as a steady client sends them, until that many URLs are done (so the
last tenth is no drain). At each tenth it prints that tenth's URLs per second and CPU per
URL (both instances and the database) and the database's state: its size, the ``urls``,
``jobs`` and ``links`` tables' (with their indexes), the queue index's, and the live and
dead rows of ``urls`` and ``jobs`` with autovacuum's count. Flat means: the last tenth as
fast and as cheap as the first, and ``urls`` and ``jobs`` no larger at the end than in
the middle (the retention window's worth of rows and the dead rows between two
autovacuums). ``links`` is kept for good, so it and the database grow by each URL's link.
"""
import itertools
import time
from dataclasses import dataclass

import requests
import yaml

from . import MiB
from .fakes import sized_urls
from .measure import cpu_seconds, group_pids
from .subjects import ServiceUnderTest

SOAK_URLS = 100_000
PER_JOB = 250
BACKLOG = 8  # unfinished jobs at a time: 2,000 URLs, about 8 times what both instances hold
NBYTES = 20 * 1024
IMGUR_LATENCY = 0.05
WINDOW, CHECK = 30.0, 5.0  # retention.finished_jobs_seconds, retention.check_seconds
QUICK_WINDOW, QUICK_CHECK = 5.0, 1.0
POLL = 0.25
# Flat, within what a tenth varies on a shared machine (about 10% here): the last tenth's
# URLs/s at least SLOWER x the first's; its CPU per URL at most LARGER x the first's, and
# urls + jobs at the end at most LARGER x their size in the middle.
SLOWER, LARGER = 0.8, 1.25
STALL_SECONDS = 300  # no job finished for this long: the soak fails, saying so

SIZES = ("SELECT pg_database_size(current_database()), pg_total_relation_size('urls'),"
         " pg_total_relation_size('jobs'), pg_total_relation_size('links'),"
         " pg_indexes_size('urls'), pg_relation_size('urls_queued')")
# docs/operating-postgresql.md's advice for the hot tables (--soak-autovacuum advised)
ADVISED = (("ALTER TABLE urls SET (autovacuum_vacuum_scale_factor = 0.01,"
            " autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02,"
            " autovacuum_vacuum_cost_limit = 2000)"),
           ("ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02,"
            " autovacuum_analyze_scale_factor = 0.02)"))
ROWS = ("SELECT relname, n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables"
        " WHERE relname IN ('urls', 'jobs')")
PRUNED = "uploader_pruned_rows_total"


@dataclass
class Sample:
    """The database and the work done at one moment of the soak."""

    seconds: float  # since the first jobs were in
    done: int  # URLs finished
    cpu: float  # CPU seconds of both instances and the database so far
    database: int
    urls: int
    jobs: int
    links: int
    urls_indexes: int
    queued_index: int
    rows: dict[str, tuple]  # table -> (live, dead, autovacuums)

    def line(self) -> str:
        urls, jobs = self.rows.get("urls", (0, 0, 0)), self.rows.get("jobs", (0, 0, 0))
        return (f"database {self.database / MiB:.1f} MiB (urls {self.urls / MiB:.1f}, jobs "
                f"{self.jobs / MiB:.2f}, links {self.links / MiB:.1f}; of urls, indexes "
                f"{self.urls_indexes / MiB:.1f}, urls_queued {self.queued_index / 1024:.0f} KiB);"
                f" urls live/dead {urls[0]:,}/{urls[1]:,}, jobs {jobs[0]:,}/{jobs[1]:,};"
                f" autovacuums urls {urls[2]}, jobs {jobs[2]}")


class SoakScenario:
    """Mixed into ``scenarios.Bench`` (its plumbing: fakes, figures, the exit stack)."""

    def soak(self) -> None:
        import psycopg

        from testbed.postgres_server import PostgresServer

        name = "soak"
        count = self.args.soak_urls or (SOAK_URLS // 10 if self.quick else SOAK_URLS)
        window, check = (QUICK_WINDOW, QUICK_CHECK) if self.quick else (WINDOW, CHECK)
        server = PostgresServer().start()
        self.stack.callback(server.destroy)
        fakes = self.fakes(imgur_latency=IMGUR_LATENCY)
        database = server.create_database()
        instances = [self.retaining_service(f"{name}-{i}", fakes, database, window, check)
                     for i in range(2)]
        admin = psycopg.connect(database, autocommit=True)
        self.stack.callback(admin.close)
        advised = self.args.soak_autovacuum == "advised"
        for statement in ADVISED if advised else ():
            admin.execute(statement)
        print(f"{name}: {count:,} URLs of 20 KB in jobs of {PER_JOB}, {BACKLOG} jobs "
              f"unfinished at a time, through two instances of {instances[0].slots} slots on one "
              f"PostgreSQL (autovacuum {'as advised' if advised else 'at its defaults'}), "
              f"Imgur +{IMGUR_LATENCY * 1000:.0f} ms; "
              f"retention.finished_jobs_seconds {window:g}, retention.check_seconds {check:g}",
              flush=True)
        soak = Soak(instances, fakes["source"].url, admin, server.pids)
        samples, failed = soak.run(count)
        self.soak_figures(name, count, samples, failed, instances)

    def flat_target(self, target: str, met: bool) -> tuple:
        """(target, met) of a full soak; a quick one is too short to judge."""
        return (target, met) if not self.quick else ("-", None)

    def retaining_service(self, name, fakes, database, window, check) -> ServiceUnderTest:
        """A bench service on ``database`` with retention ``window`` and ``check``."""
        directory = self.workdir / name
        directory.mkdir(exist_ok=True)
        service = ServiceUnderTest(directory, fakes["imgur"].url, database=database,
                                   processes=self.args.processes,
                                   slots=self.args.uploads_per_process)
        config = yaml.safe_load(service.config_path.read_text())
        config["retention"] = {"finished_jobs_seconds": window, "check_seconds": check}
        service.config_path.write_text(yaml.safe_dump(config))
        self.stack.callback(service.stop)
        return service.start()

    def soak_figures(self, name, count, samples, failed, instances) -> None:
        start, middle, end = samples[0], samples[len(samples) // 2], samples[-1]
        tenths = tenth_rates(samples)
        (first_rate, first_cpu), (last_rate, last_cpu) = tenths[0], tenths[-1]
        self.add(name, "URLs/s, first tenth", first_rate, "URLs/s")
        self.add(name, "URLs/s, last tenth", last_rate, "URLs/s")
        judge = self.flat_target
        self.add(name, "  last / first tenth", last_rate / first_rate, "x",
                 *judge(f">= {SLOWER:g}", last_rate >= SLOWER * first_rate))
        self.add(name, "CPU per URL, first tenth (instances + database)", first_cpu, "ms")
        self.add(name, "CPU per URL, last tenth", last_cpu, "ms")
        self.add(name, "  last / first tenth", last_cpu / first_cpu, "x",
                 *judge(f"<= {LARGER:g}", last_cpu <= LARGER * first_cpu))
        self.add(name, f"{count:,} URLs: total time", end.seconds, "s")
        for label, sample in (("start", start), ("middle", middle), ("end", end)):
            self.add(name, f"database size, {label}", sample.database, "MiB")
            self.add(name, "  urls + jobs (with indexes)", sample.urls + sample.jobs, "MiB")
            self.add(name, "  links (with indexes)", sample.links, "MiB")
            self.add(name, "  urls dead rows", sample.rows.get("urls", (0, 0, 0))[1])
        held, kept = middle.urls + middle.jobs, end.urls + end.jobs
        self.add(name, "urls + jobs, end / middle", kept / held, "x",
                 *judge(f"<= {LARGER:g}", kept <= LARGER * held))
        pruned = pruned_rows(instances)
        self.add(name, "URL rows pruned (uploader_pruned_rows_total)", pruned.get("urls", 0))
        self.add(name, "job rows pruned", pruned.get("jobs", 0))
        if failed:
            self.notes.append(f"{name}: {failed} URLs failed")
        if self.quick:
            self.notes.append(f"{name}: quick, so not judged: tenths of {count // 10:,} URLs are "
                              "noise here, and it ends before autovacuum's first minute")
        self.record(name, count=count, samples=[vars(s) for s in samples],
                    tenths=tenths, pruned=pruned, failed=failed)


class Soak:
    """Feeds the instances a steady stream of jobs and samples the database at each tenth."""

    def __init__(self, instances: list[ServiceUnderTest], source: str, admin, database_pids):
        self.instances = instances
        self.source = source
        self.admin = admin
        self.database_pids = database_pids
        self.cpu_seen: dict[int, float] = {}
        self.cpu_total = 0.0
        self.submitted = self.finished = self.failed = 0
        self.progressed = time.monotonic()

    def warm_up(self) -> None:
        """Workers started, connections open, before anything is measured: one job of
        twice its slots through each instance."""
        for n, service in enumerate(self.instances):
            job_id = service.post(sized_urls(self.source, NBYTES, 2 * service.slots, f"warm{n}"))
            deadline = time.monotonic() + STALL_SECONDS
            while service.job(job_id)["status"] != "complete":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the warm-up job did not finish in {STALL_SECONDS} s")
                time.sleep(POLL)

    def run(self, count: int):
        """Returns (a sample once the first jobs are in and one at each tenth of ``count``
        URLs done, URLs failed). Done counts finished jobs' URLs and unfinished jobs'
        finished ones, on the bench's clock. Jobs go on coming until ``count`` are done, so
        the last tenth is not a drain; the few unfinished then are waited for, unmeasured."""
        self.warm_up()
        unfinished: dict[str, int] = {}
        self.top_up(unfinished)  # as many URLs waiting at the start as at any time after
        done = self.poll(unfinished)
        self.cpu()  # the baseline of every process's CPU
        samples = [self.sample(0.0, done)]
        started = time.monotonic()
        while done < count:
            time.sleep(POLL)
            before, done = done, max(done, self.poll(unfinished))
            self.top_up(unfinished)
            if done * 10 // count > before * 10 // count:
                samples.append(self.sample(time.monotonic() - started, done))
                print(f"    {done * 100 // count:3}%: {done:,} URLs in {samples[-1].seconds:.0f} s"
                      f", this tenth {_tenth(samples)}; {samples[-1].line()}", flush=True)
        while unfinished:
            time.sleep(POLL)
            self.poll(unfinished)
        return samples, self.failed

    def top_up(self, unfinished: dict) -> None:
        """New jobs, alternately to each instance, until ``BACKLOG`` are unfinished."""
        while len(unfinished) < BACKLOG:
            target = self.instances[self.submitted % len(self.instances)]
            urls = sized_urls(self.source, NBYTES, PER_JOB, f"soak{self.submitted}")
            unfinished[target.post(urls)] = PER_JOB
            self.submitted += 1

    def poll(self, unfinished: dict) -> int:
        """Takes finished jobs out of ``unfinished``; returns the URLs finished so far (in
        jobs finished or not)."""
        in_progress, head = 0, self.instances[0]
        ids = list(unfinished)
        for job_id, job in zip(ids, head.summaries(ids)):
            if job is None:  # not listed: pruned already (the poll came late) or not yet listed
                gone = head.http.get(f"{head.url}/v1/images/upload/{job_id}", timeout=60)
                if gone.status_code == 404:
                    self.finished += unfinished.pop(job_id)
                continue
            if job["status"] == "complete":
                self.finished += unfinished.pop(job["id"])
                self.failed += job["counts"]["failed"]
                self.progressed = time.monotonic()
            else:
                in_progress += job["counts"]["complete"] + job["counts"]["failed"]
        if time.monotonic() - self.progressed > STALL_SECONDS:
            raise RuntimeError(f"no job finished for {STALL_SECONDS} s ({self.finished:,} URLs "
                               "done); see the services' logs")
        return self.finished + in_progress

    def cpu(self) -> float:
        """CPU seconds of both instances and the database since the first call. A process
        gone since the last look keeps what it had then (pooled connections live long)."""
        pids = [pid for s in self.instances for pid in group_pids(s.pid)] + self.database_pids()
        first = not self.cpu_seen
        for pid in pids:
            now = cpu_seconds([pid])
            seen = self.cpu_seen.get(pid, 0.0)
            if not first:  # a smaller figure than seen: a new process under a reused pid
                self.cpu_total += now - seen if now >= seen else now
            self.cpu_seen[pid] = now
        return self.cpu_total

    def sample(self, seconds: float, done: int) -> Sample:
        sizes = self.admin.execute(SIZES).fetchone()
        rows = {table: (live, dead, vacuums)
                for table, live, dead, vacuums in self.admin.execute(ROWS).fetchall()}
        return Sample(seconds, done, self.cpu(), *sizes, rows)


def tenth_rates(samples: list[Sample]) -> list[tuple]:
    """(URLs/s, CPU seconds per URL) between consecutive samples."""
    return [((b.done - a.done) / (b.seconds - a.seconds) if b.seconds > a.seconds else 0.0,
             (b.cpu - a.cpu) / (b.done - a.done) if b.done > a.done else 0.0)
            for a, b in itertools.pairwise(samples)]


def _tenth(samples: list[Sample]) -> str:
    rate, cpu = tenth_rates(samples[-2:])[0]
    return f"{rate:.0f} URLs/s, CPU {cpu * 1000:.2f} ms a URL"


def pruned_rows(instances: list[ServiceUnderTest]) -> dict[str, float]:
    """``uploader_pruned_rows_total`` by table, summed over the instances' /metrics."""
    pruned: dict[str, float] = {}
    for service in instances:
        text = requests.get(f"{service.url}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith(PRUNED + "{"):
                table = line.split('table="', 1)[1].split('"', 1)[0]
                pruned[table] = pruned.get(table, 0) + float(line.rsplit(" ", 1)[1])
    return pruned
