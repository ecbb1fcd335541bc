"""``bin/crash-trials``: kill -9 the whole service mid-job, restart it, count what was lost.

A measurement, not a test. Each trial submits a job of distinct images, waits until a
random share of it is done, SIGKILLs the service's whole process group (front end,
manager, workers), restarts it on the same store and waits for the job to finish. It
counts URLs that did not end ``complete`` (lost; must be 0) and uploads the fake Imgur
saw more than once (duplicates; delivery is at-least-once, and bounded by the URLs the
workers hold: a URL leaves a worker only once its result is committed).
"""
import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

from testbed.fakes.image_source import ImageSource, make_image
from testbed.fakes.imgur import FakeImgur

from . import TOKEN
from .fakes import kill_group
from .subjects import ServiceUnderTest, held


def wait_for(service, job_id, predicate, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not predicate(job := service.job(job_id)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} stuck: {job['status']}")
        time.sleep(0.02)
    return job


def trial(number, work: Path, source, imgur, *, urls: int, processes: int, slots: int, rng):
    directory = work / f"trial-{number}"
    directory.mkdir()
    batch = [source.url_for(f"/img/trial{number}-{n}.png") for n in range(urls)]
    kill_after = rng.randint(urls // 10, urls * 3 // 4)
    first = ServiceUnderTest(directory, imgur.url, processes=processes, slots=slots).start()
    try:
        job_id = first.post(batch)
        wait_for(first, job_id, lambda j: len(j["uploaded"]["complete"]) >= kill_after)
    finally:
        kill_group(first.proc)  # SIGKILL to the whole group, like a power cut
        first.stop()
    second = ServiceUnderTest(directory, imgur.url, processes=processes, slots=slots).start()
    try:
        job = wait_for(second, job_id, lambda j: j["status"] == "complete")
    finally:
        second.stop()
    ours = {u["url"] for u in job["urls"]}
    assert len(ours) == urls and all(u.startswith(source.url) for u in ours)
    uploads = [r for r in imgur.uploads if r.sha256 in trial_hashes(number, urls)]
    return {
        "killed after": kill_after,
        "complete": len(job["uploaded"]["complete"]),
        "failed": len(job["uploaded"]["failed"]),
        "lost": urls - len(job["uploaded"]["complete"]),
        "uploads": len(uploads),
        "duplicates": len(uploads) - len({r.sha256 for r in uploads}),
    }


def trial_hashes(number, urls):
    """The SHA-256 of every image a trial serves (they are all distinct)."""
    return {hashlib.sha256(make_image("png", f"trial{number}-{n}")).hexdigest()
            for n in range(urls)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bin/crash-trials", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--urls", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--uploads-per-process", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    bound = held(args.processes, args.uploads_per_process)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crash-trials-") as work, \
            ImageSource() as source, FakeImgur(access_tokens=(TOKEN,), keep_images=False) as imgur:
        imgur.set_budgets(user_limit=10**12, client_limit=10**12, post_limit=10**12)
        source.latency = 0.02  # so the kill lands while uploads are in flight
        for number in range(args.trials):
            row = trial(number, Path(work), source, imgur, urls=args.urls,
                        processes=args.processes, slots=args.uploads_per_process, rng=rng)
            rows.append(row)
            print(f"trial {number + 1:2}: killed after {row['killed after']:3} complete; "
                  f"complete {row['complete']}, failed {row['failed']}, lost {row['lost']}, "
                  f"uploads {row['uploads']}, duplicates {row['duplicates']}", flush=True)
    lost = sum(r["lost"] for r in rows)
    duplicates = [r["duplicates"] for r in rows]
    print(f"\n{len(rows)} trials of {args.urls} URLs, {bound} URLs held by the workers: "
          f"lost {lost} URLs in all; duplicate uploads per trial: min {min(duplicates)}, "
          f"max {max(duplicates)}, total {sum(duplicates)} "
          f"(bound: {bound} per trial)")
    return 0 if lost == 0 and max(duplicates) <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
