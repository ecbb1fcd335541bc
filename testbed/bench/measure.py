"""CPU and memory of process groups, read from /proc, and the statistics of the figures."""
import contextlib
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid) -> List[str]:
    """Fields of /proc/<pid>/stat after the command name: [0] state, [2] pgrp, [11] utime."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def group_pids(pgid: int) -> List[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat_fields(entry)
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                pids.append(int(entry))
    return pids


def cpu_seconds(pids) -> float:
    """user + sys CPU seconds of these processes (a process gone meanwhile counts 0)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(pid) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_cpu() -> tuple:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


class RssSampler:
    """Samples VmRSS of a process group every 50 ms; keeps the peak of the sum and of ``focus``."""

    def __init__(self, pgid: int, focus: Optional[int] = None, interval: float = 0.05):
        self.pgid, self.focus, self.interval = pgid, focus, interval
        self.peak = self.peak_focus = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._sample(group_pids(self.pgid))
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _sample(self, pids):
        sizes = {pid: rss_bytes(pid) for pid in pids}
        self.peak = max(self.peak, sum(sizes.values()))
        if self.focus is not None:
            self.peak_focus = max(self.peak_focus, sizes.get(self.focus) or rss_bytes(self.focus))

    def _run(self):
        pids, n = group_pids(self.pgid), 0
        while not self._stop.wait(self.interval):
            n += 1
            if n % 20 == 0:  # a respawned worker joins the group
                pids = group_pids(self.pgid)
            self._sample(pids)
        self._sample(group_pids(self.pgid))


@dataclass
class Usage:
    """CPU used by the service group, each fake and the whole machine during one run."""

    wall: float = 0.0
    service_cpu: float = 0.0
    bench_cpu: float = 0.0
    imgur_cpu: float = 0.0
    source_cpu: float = 0.0
    s3_cpu: float = 0.0  # moto's, when the run uploads to S3
    machine_busy: float = 0.0  # fraction of all cores
    service_by_pid: dict = field(default_factory=dict)


@contextlib.contextmanager
def measure_usage(service_pgids, fakes, extra_pids=()):
    """``with measure_usage(pgids, fakes) as usage:`` fills ``usage`` when the block ends.
    ``service_pgids``: the service's process groups (one per instance), or None for the
    baseline; ``extra_pids``: more processes that serve it (a PostgreSQL server)."""
    usage = Usage()
    pids = [pid for pgid in (service_pgids or ()) for pid in group_pids(pgid)] + list(extra_pids)
    per_pid = {pid: cpu_seconds([pid]) for pid in pids}
    def fake_cpu(kind):
        return fakes[kind].cpu_seconds() if kind in fakes else 0.0

    before = (time.perf_counter(), cpu_seconds(pids), time.process_time(), fake_cpu("imgur"),
              fake_cpu("source"), fake_cpu("s3"), machine_cpu())
    yield usage
    usage.service_by_pid = {pid: cpu_seconds([pid]) - seconds for pid, seconds in per_pid.items()}
    after = (time.perf_counter(), cpu_seconds(pids), time.process_time(), fake_cpu("imgur"),
             fake_cpu("source"), fake_cpu("s3"), machine_cpu())
    (usage.wall, usage.service_cpu, usage.bench_cpu, usage.imgur_cpu, usage.source_cpu,
     usage.s3_cpu) = (a - b for a, b in zip(after[:6], before[:6]))
    busy, total = (a - b for a, b in zip(after[6], before[6]))
    usage.machine_busy = busy / total if total else 0.0


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def percentile(values, p) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
