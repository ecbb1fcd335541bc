"""``bin/bench``: throughput, CPU, memory and latency of the real service against local fakes.

A script, not a test: it prints one table (scenario, figure, value, target, met?) and,
with ``--json FILE``, the raw numbers of every run.

    bench process                      service (own process group: front end, manager, workers)
      POST jobs, poll them  ---------->  fetch ------> image source (subprocess, loopback)
      /proc: CPU, RSS of the group       upload -----> fake Imgur    (subprocess, loopback)
      baseline: ThreadPoolExecutor ----> GET + POST -> the same two fakes

Each fake runs in its own process, so it does not share a GIL with the baseline's threads
or with the bench's samplers. The baseline is the naive design the service must beat:
one process, as many threads as the service has upload slots, each doing a ``requests``
GET of the image and a multipart POST of the bytes. Service and baseline runs alternate;
every figure is the median over ``--repeat`` runs and every ratio is the median of
ratios of side-by-side pairs.

The package: ``fakes`` runs each fake in a child process; ``measure`` reads CPU and
memory from /proc and holds the statistics; ``subjects`` drives the service and the
baseline through one workload; ``scenarios`` holds the workloads and the figures
they yield; ``__main__`` parses the command line and prints the table.
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TOKEN = "bench-token"  # the access token the fake Imgur accepts and everyone sends
MiB = 1024 * 1024
