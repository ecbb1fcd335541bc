"""``python -m testbed.bench`` (``bin/bench``): run the scenarios, print one table."""
import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import List

from . import __doc__ as package_doc
from .scenarios import ON_REQUEST, SCENARIOS, Bench, Figure

log = logging.getLogger("testbed.bench")


def print_table(figures: List[Figure], notes: List[str]) -> None:
    rows = [("scenario", "figure", "value", "target", "met?")]
    for f in figures:
        rows.append((f.scenario, f.name, f.shown_value(), f.target,
                     "" if f.met is None else ("yes" if f.met else "NO")))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print(line)
    for note in notes:
        print(f"note: {note}")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bin/bench", description=package_doc.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable; default: all but soak, "
                             "which runs small with --quick)")
    parser.add_argument("--quick", action="store_true", help="about 10x smaller: a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--uploads-per-process", type=int, default=16,
                        help="upload slots per worker process (default 16)")
    parser.add_argument("--soak-urls", type=int, metavar="N",
                        help="URLs through the soak (default 100,000; 10,000 with --quick)")
    parser.add_argument("--soak-autovacuum", choices=("default", "advised"), default="default",
                        help="the soak's autovacuum: the server's defaults, or the settings "
                             "docs/operating-postgresql.md advises for the hot tables")
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (service logs)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups below
    default = [s for s in SCENARIOS if args.quick or s not in ON_REQUEST]
    selected = [s for s in SCENARIOS if s in (args.scenario or default)]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="uploader-bench-"))
        if args.keep:
            print(f"work directory: {workdir}")
        else:
            stack.callback(_remove_tree, workdir)
        bench = Bench(args, workdir, stack)
        for scenario in selected:
            with contextlib.ExitStack() as scoped:  # each scenario's processes end with it
                bench.stack = scoped
                try:
                    getattr(bench, scenario)()
                except Exception as exc:
                    log.exception("scenario %s failed", scenario)
                    bench.notes.append(f"{scenario}: FAILED: {type(exc).__name__}: {exc}")
        print_table(bench.figures, bench.notes)
        print(f"({time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs; "
              f"{'quick, ' if args.quick else ''}{args.repeat} runs per figure)")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "args": vars(args), "cpus": os.cpu_count(),
                "figures": [asdict(f) for f in bench.figures], "notes": bench.notes,
                "raw": bench.raw}, indent=2, default=str))
    failed = [f for f in bench.figures if f.met is False]
    return 1 if failed or any("FAILED" in note for note in bench.notes) else 0


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
