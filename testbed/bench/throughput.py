"""Throughput and CPU against three yardsticks: the bound the slots set, a pipelined client
with no bookkeeping (what the bound leaves on this machine), and a naive script.

- Every service here gets a whole round ready: ``workers.fetch_ahead`` = ``uploads_per_process``.
- ``latency``: a freshly started service, one job of 640 URLs of 20 KB, Imgur answering in
  500 ms. The slots bound what any client could do: slots / (0.5 s + 10 ms). Target: 0.95 of it.
  Beside it, run for run, the pipelined reference (``subjects.Pipelined``): the same
  processes, slots and images held, and nothing else.
  Then the same with the source answering in 200 ms, against the same bound.
- ``cpu``: Imgur at 50 ms, 2,000 URLs in jobs of 200, side by side with the naive script
  (as many threads as the service has slots, each a requests GET then a multipart POST).
  Targets: throughput 1.25 x the script's, CPU per URL of all service processes no more.
- ``cluster``: the same on PostgreSQL: one instance, then two on one database (a bound
  twice as high; target: two do 1.6 x what one does), each beside the pipelined reference
  of its size; and two instances side by side with a script of as many threads as both
  have slots (the database's CPU counted as the service's).
- ``s3``: the cpu workload (2,000 URLs of 20 KB in jobs of 200) through the embedded
  service to S3 (moto, in a process of its own on loopback, which the bench starts), run
  for run beside the same service with the ``local`` host: CPU per URL of each. moto is
  the slow side of that wire (a Python server keeping every object): its throughput is
  moto's, not S3's; what the service spends per URL is the figure.
"""
from .fakes import S3_BUCKET, FakeProcess, sized_urls
from .measure import median
from .subjects import Baseline, Pipelined, held

NBYTES = 20 * 1024
SLOW_IMGUR, QUICK_IMGUR = 0.5, 0.05
SLOW_SOURCE = 0.2  # a distant source: fetched ahead, it costs no slot any time
ROUND_TRIP = 0.01  # what a round of fetch and upload takes besides Imgur's latency, here


class ThroughputScenarios:
    """Mixed into ``scenarios.Bench`` (its plumbing: fakes, services, figures)."""

    def slots(self, instances=1) -> int:
        return instances * self.args.processes * self.args.uploads_per_process

    def fresh_run(self, name, fakes, count, r, *, instances=1, database=None):
        """Start ``instances`` services (on ``database`` if given), ``count`` URLs through
        the first in jobs of 640 at most, stop them: a fresh service's figure."""
        services = [self.service(f"{name}-{instances}-{r}-{i}", fakes, database=database)
                    for i in range(instances)]
        head = services[0]
        head.companions = services[1:]
        try:
            run = head.run(sized_urls(fakes["source"].url, NBYTES, count, f"{name}{instances}-{r}"),
                           min(count, 640), fakes)
        finally:
            for service in services:
                service.stop()
        print(f"    {instances} instance(s), run {r + 1}: {count} URLs in {run.seconds:.2f} s = "
              f"{run.rate:.0f}/s, {run.failed} failed", flush=True)
        return run

    def against_the_bound(self, name, runs, instances, label, target=True):
        bound = self.slots(instances) / (SLOW_IMGUR + ROUND_TRIP)
        rate = median(run.rate for run in runs)
        self.add(name, f"{label} URLs/s (bound {self.slots(instances)} slots / "
                       f"{SLOW_IMGUR + ROUND_TRIP:.2f} s = {bound:.0f})", rate, "URLs/s")
        if target:
            self.add(name, f"{label} / bound", rate / bound, "x", ">= 0.95", rate / bound >= 0.95)
        else:
            self.add(name, f"{label} / bound", rate / bound, "x")
        return rate

    def latency(self) -> None:
        """A fresh service against the slot bound, beside the pipelined reference; then the
        same with a source answering in 200 ms, against the same bound: what fetching ahead
        hides."""
        name, count = "latency", self.scaled(640)
        runs = {}
        for source_latency, label, tag in ((0.0, "embedded", name),
                                           (SLOW_SOURCE, "embedded, source +200 ms", "slow-source")):
            fakes = self.fakes(imgur_latency=SLOW_IMGUR, source_latency=source_latency)
            print(f"{name}: a fresh service, one job of {count} URLs of 20 KB, Imgur +500 ms, "
                  f"source +{source_latency * 1000:.0f} ms, {self.slots()} slots")
            if source_latency:
                runs[label] = [self.fresh_run(tag, fakes, count, r) for r in range(self.repeat)]
                self.against_the_bound(name, runs[label], 1, label, target=False)
            else:
                _, ours, theirs = self.beside_the_reference(
                    name, label, fakes, count, 1, lambda r: self.fresh_run(tag, fakes, count, r))
                self.add(name, f"{label} CPU per URL (all its processes)",
                         median(r.usage.service_cpu / r.urls for r in ours), "ms")
                self.add(name, "pipelined reference CPU per URL (all its processes)",
                         median(r.usage.bench_cpu / r.urls for r in theirs), "ms")
                runs[label], runs["reference"] = ours, theirs
        self.record(name, runs=runs)

    def beside_the_reference(self, name, label, fakes, count, instances, fresh_run):
        """``fresh_run(r)`` runs alternating with the pipelined reference's, each against the
        bound; and the service's share of the reference (median of pairs): what its own
        work costs, measured at the same hour, where the bound also counts the machine's."""
        processes, slots = self.args.processes, self.args.uploads_per_process
        reference = Pipelined(fakes["imgur"].url, processes=instances * processes,
                              slots=self.slots(instances), held=instances * held(processes, slots))
        ours, theirs = [], []
        for r in range(self.repeat):
            for who in ("service", "reference") if r % 2 == 0 else ("reference", "service"):
                if who == "service":
                    ours.append(fresh_run(r))
                    continue
                run = reference.run(sized_urls(fakes["source"].url, NBYTES, count,
                                               f"{name}-reference{instances}-{r}"), fakes)
                print(f"    pipelined reference, run {r + 1}: {count} URLs in {run.seconds:.2f} s"
                      f" = {run.rate:.0f}/s, {run.failed} failed", flush=True)
                theirs.append(run)
        rate = self.against_the_bound(name, ours, instances, label)
        self.against_the_bound(name, theirs, instances, f"{label}: pipelined reference",
                               target=False)
        ratio = median(a.rate / b.rate for a, b in zip(ours, theirs))
        self.add(name, f"{label} / pipelined reference", ratio, "x")
        if reference.first_error:
            self.notes.append(f"pipelined reference first error: {reference.first_error}")
        return rate, ours, theirs

    def versus_naive(self, name, label, service, baseline, fakes, count):
        """Side by side at Imgur +50 ms: throughput and CPU per URL, with their targets."""
        ours, theirs = self.side_by_side(service, baseline, lambda tag: sized_urls(
            fakes["source"].url, NBYTES, count, tag), 200, fakes)
        self.add(name, f"{label} URLs/s", median(r.rate for r in ours), "URLs/s")
        self.add(name, "naive script URLs/s", median(r.rate for r in theirs), "URLs/s")
        ratio = median(a.rate / b.rate for a, b in zip(ours, theirs))
        self.add(name, f"{label} / naive script, throughput", ratio, "x", ">= 1.25", ratio >= 1.25)
        cpu = median(r.usage.service_cpu / r.urls for r in ours)
        naive = median(r.usage.bench_cpu / r.urls for r in theirs)
        self.add(name, f"{label} CPU per URL (all its processes)", cpu, "ms",
                 f"<= naive ({naive * 1000:.2f} ms)", cpu <= naive)
        for role, seconds in service.cpu_by_role(ours[-1].usage).items():
            if seconds:
                self.add(name, f"  of which {role} (last run)", seconds / ours[-1].urls, "ms")
        self.add(name, "naive script CPU per URL", naive, "ms")
        self.add(name, "machine CPU busy during service runs",
                 median(r.usage.machine_busy for r in ours), "%")
        self.check_fakes(name, ours + theirs)
        return ours, theirs

    def cpu(self) -> None:
        name, count = "cpu", self.scaled(2000)
        fakes, service, baseline = self.contenders(
            name, f"{name}: {count} URLs of 20 KB in jobs of 200, Imgur +50 ms, {{slots}} slots "
                  "(embedded), side by side with the naive script", imgur_latency=QUICK_IMGUR)
        ours, theirs = self.versus_naive(name, "embedded", service, baseline, fakes, count)
        self.record(name, service=ours, baseline=theirs)

    def cluster(self) -> None:
        """One instance on PostgreSQL, then two on one database."""
        from testbed.postgres_server import PostgresServer

        name, count = "cluster", self.scaled(640)
        server = PostgresServer().start()
        self.stack.callback(server.destroy)
        slow = self.fakes(imgur_latency=SLOW_IMGUR)
        print(f"{name}: fresh instances on PostgreSQL, one job of {count} URLs of 20 KB, "
              f"Imgur +500 ms, {self.slots()} slots an instance")
        rates = {}
        for instances in (1, 2):
            rates[instances], *_ = self.beside_the_reference(
                name, f"{instances} instance{'s' if instances > 1 else ''}", slow,
                count * instances, instances,
                lambda r: self.fresh_run(name, slow, count * instances, r, instances=instances,
                                         database=server.create_database()))
        ratio = rates[2] / rates[1]
        self.add(name, "two instances / one", ratio, "x", ">= 1.6", ratio >= 1.6)

        quick = self.fakes(imgur_latency=QUICK_IMGUR)
        database = server.create_database()
        head, other = (self.service(f"{name}-cpu-{i}", quick, database=database) for i in range(2))
        head.companions, head.extra_pids = [other], server.pids
        baseline = Baseline(quick["imgur"].url, self.slots(2))
        self.stack.callback(baseline.close)
        print(f"{name}: two instances on PostgreSQL, {self.scaled(2000)} URLs in jobs of 200, "
              f"Imgur +50 ms, side by side with a naive script of {self.slots(2)} threads")
        self.warm_up(head, baseline, NBYTES, quick)
        ours, theirs = self.versus_naive(name, "two instances", head, baseline, quick,
                                         self.scaled(2000))
        self.record(name, rates=rates, service=ours, baseline=theirs)

    def s3(self) -> None:
        name, count = "s3", self.scaled(2000)
        fakes = self.fakes()
        fakes["s3"] = FakeProcess("s3").start()
        self.stack.callback(fakes["s3"].stop)
        hosts = {
            "local": {"image_host": "local"},
            "S3": {"image_host": "s3", "s3": {
                "bucket": S3_BUCKET, "endpoint_url": fakes["s3"].url, "prefix": "bench/",
                "access_key_id": "bench", "secret_access_key": "bench-secret"}},
        }
        services = {label: self.service(f"{name}-{label}", fakes, host=host)
                    for label, host in hosts.items()}
        slots = services["S3"].slots
        print(f"{name}: {count} URLs of 20 KB in jobs of 200, {slots} slots (embedded), to S3"
              " (moto on loopback), run for run beside the local host")
        for label, service in services.items():  # workers started, code paths hot
            service.run(sized_urls(fakes["source"].url, NBYTES, 2 * slots, f"warm-{label}"),
                        2 * slots, fakes)
        runs = {label: [] for label in services}
        for r in range(self.repeat):
            for label in (("local", "S3") if r % 2 == 0 else ("S3", "local")):
                run = services[label].run(sized_urls(fakes["source"].url, NBYTES, count,
                                                     f"{name}-{label}-{r}"), 200, fakes)
                runs[label].append(run)
                print(f"    {label:5} run {r + 1}: {run.urls} URLs in {run.seconds:.2f} s = "
                      f"{run.rate:.0f}/s, {run.failed} failed, machine CPU busy "
                      f"{run.usage.machine_busy:.0%}", flush=True)
                if run.failed:
                    self.notes.append(f"{name}: {label}: {run.failed} URLs failed in run {r + 1}")
        for label, host_runs in runs.items():
            self.add(name, f"{label} URLs/s", median(r.rate for r in host_runs), "URLs/s")
            self.add(name, f"{label} CPU per URL (all its processes)",
                     median(r.usage.service_cpu / r.urls for r in host_runs), "ms")
            for role, seconds in services[label].cpu_by_role(host_runs[-1].usage).items():
                if seconds:
                    self.add(name, f"  of which {role} (last run)", seconds / host_runs[-1].urls,
                             "ms")
        self.add(name, "S3 / local CPU per URL", median(
            s.usage.service_cpu / l.usage.service_cpu for s, l in zip(runs["S3"], runs["local"])),
            "x")
        self.add(name, "moto CPU per URL (not the service's)",
                 median(r.usage.s3_cpu / r.urls for r in runs["S3"]), "ms")
        self.add(name, "moto busy (max over runs, of 1 core)",
                 max(r.usage.s3_cpu / r.usage.wall for r in runs["S3"] if r.usage.wall), "%")
        self.record(name, runs=runs)
