"""``bin/cluster-trials``: N instances on one PostgreSQL, kill -9 one at random, round after round.

A measurement, not a test. Each round submits a job of distinct images to a random live
instance, waits until a random share of it is done, SIGKILLs a random instance (its whole
process group: front end, manager, workers), starts a replacement, and waits for the job
through the survivors. It counts URLs that did not end ``complete`` (lost; must be 0),
uploads the fake Imgur saw more than once (duplicates; at-least-once delivery bounds them
by the URLs the killed instance's workers held) and how long the job took to finish after the
kill (the dead instance's URLs come back when its lease runs out: storage.lease_seconds).
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
from testbed.postgres_server import PostgresServer

from . import TOKEN
from .crash import wait_for
from .fakes import kill_group
from .subjects import ServiceUnderTest, held


class Cluster:
    def __init__(self, work: Path, database: str, imgur_url: str, *, processes: int, slots: int,
                 lease: float):
        self.work, self.database, self.imgur_url = work, database, imgur_url
        self.options = {"processes": processes, "slots": slots, "lease_seconds": lease}
        self.instances = []
        self.started = 0

    def start_one(self) -> ServiceUnderTest:
        directory = self.work / f"instance-{self.started}"
        directory.mkdir()
        self.started += 1
        instance = ServiceUnderTest(directory, self.imgur_url, database=self.database,
                                    **self.options).start()
        self.instances.append(instance)
        return instance

    def kill(self, instance: ServiceUnderTest) -> None:
        kill_group(instance.proc)  # SIGKILL to the whole group, like a power cut of that host
        instance.stop()
        self.instances.remove(instance)

    def stop(self) -> None:
        for instance in list(self.instances):
            instance.stop()


def trial(number, cluster: Cluster, source, imgur, *, urls: int, rng) -> dict:
    tag = f"round{number}"
    batch = [source.url_for(f"/img/{tag}-{n}.png") for n in range(urls)]
    submit_to = rng.choice(cluster.instances)
    job_id = submit_to.post(batch)
    kill_after = rng.randint(urls // 10, urls * 3 // 4)
    wait_for(submit_to, job_id, lambda j: len(j["uploaded"]["complete"]) >= kill_after)
    victim = rng.choice(cluster.instances)
    cluster.kill(victim)
    killed_at = time.monotonic()
    survivor = rng.choice(cluster.instances)
    job = wait_for(survivor, job_id, lambda j: j["status"] == "complete")
    finished_after = time.monotonic() - killed_at
    cluster.start_one()  # the cluster is whole again for the next round
    hashes = {hashlib.sha256(make_image("png", f"{tag}-{n}")).hexdigest() for n in range(urls)}
    uploads = [r for r in imgur.uploads if r.sha256 in hashes]
    return {"killed after": kill_after, "complete": len(job["uploaded"]["complete"]),
            "lost": urls - len(job["uploaded"]["complete"]), "uploads": len(uploads),
            "duplicates": len(uploads) - len({r.sha256 for r in uploads}),
            "finished after kill": finished_after}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bin/cluster-trials", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--urls", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--uploads-per-process", type=int, default=4)
    parser.add_argument("--lease", type=float, default=15.0,
                        help="storage.lease_seconds (default 15, the service's default)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    bound = held(args.processes, args.uploads_per_process)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-trials-") as work, PostgresServer() as pg, \
            ImageSource() as source, FakeImgur(access_tokens=(TOKEN,), keep_images=False) as imgur:
        imgur.set_budgets(user_limit=10**12, client_limit=10**12, post_limit=10**12)
        source.latency = 0.02  # so the kill lands while uploads are in flight
        cluster = Cluster(Path(work), pg.create_database(), imgur.url, processes=args.processes,
                          slots=args.uploads_per_process, lease=args.lease)
        try:
            for _ in range(args.instances):
                cluster.start_one()
            for number in range(args.rounds):
                row = trial(number, cluster, source, imgur, urls=args.urls, rng=rng)
                rows.append(row)
                print(f"round {number + 1:2}: killed after {row['killed after']:3} complete; "
                      f"complete {row['complete']}, lost {row['lost']}, uploads {row['uploads']}, "
                      f"duplicates {row['duplicates']}, job finished "
                      f"{row['finished after kill']:.1f} s after the kill", flush=True)
        finally:
            cluster.stop()
    lost = sum(r["lost"] for r in rows)
    duplicates = [r["duplicates"] for r in rows]
    slowest = max(r["finished after kill"] for r in rows)
    print(f"\n{len(rows)} rounds of {args.urls} URLs on {args.instances} instances "
          f"(lease {args.lease:g} s, each holding {bound} URLs): lost {lost} URLs in all; duplicate "
          f"uploads per round: min {min(duplicates)}, max {max(duplicates)}, total "
          f"{sum(duplicates)} (bound: {bound} per round); slowest finish after a kill "
          f"{slowest:.1f} s")
    return 0 if lost == 0 and max(duplicates) <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
