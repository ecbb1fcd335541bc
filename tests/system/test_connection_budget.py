"""The connection budget: what one instance with the default settings holds of PostgreSQL,
counted in ``pg_stat_activity`` while it works and answers, and what it does when
PostgreSQL refuses it more (SQLSTATE 53300): it stays up, says why on ``/healthz``,
retries, and loses nothing."""
import threading
import time
import uuid
from collections import Counter

import psycopg
import requests

from uploader.config import StorageConfig, WorkersConfig

from tests.support import ServiceProcess, write_config
from tests.support import slow_urls, wait_until
from tests.support import imgur_config


class Sampler:
    """The most connections ``role`` held at once, in all and by application_name."""

    def __init__(self, admin, role):
        self.admin, self.role = admin, role
        self.most, self.most_by_name = 0, Counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.wait(0.02):
            rows = self.admin.execute("SELECT application_name, count(*) FROM pg_stat_activity"
                                      " WHERE usename = %s GROUP BY 1", (self.role,)).fetchall()
            self.most = max(self.most, sum(n for _, n in rows))
            for name, n in rows:
                self.most_by_name[name] = max(self.most_by_name[name], n)


def answer(url):
    try:
        return requests.get(url, timeout=30)
    except requests.RequestException:
        return None


def test_an_instance_keeps_to_its_budget_and_rides_out_refused_connections(
        tmp_path, postgres, image_source, fake_imgur):
    role = f"budget_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE DATABASE {role} OWNER {role}")
    url = postgres.url(role).replace("postgres@", f"{role}@")
    defaults = WorkersConfig()
    config = write_config(
        tmp_path, workers={"processes": defaults.processes,
                           "uploads_per_process": defaults.uploads_per_process,
                           "fetch_ahead": defaults.fetch_ahead},
        storage={"url": url, "poll_seconds": 0.5},  # every pool at its default size
        **imgur_config(fake_imgur))  # unpaced: tickets, pauses heard; dedup; the shared token
    service = ServiceProcess(config).start()
    admin = psycopg.connect(postgres.url(role), autocommit=True)
    try:
        sampler = Sampler(admin, role)
        sampler.thread.start()
        job_id = service.post_job([image_source.url_for(f"/img/budget-{n}.png")
                                   for n in range(200)])
        statuses = Counter()

        def keep_reading(path):
            while not sampler.done.is_set():
                got = answer(service.url + path)
                statuses[path.rsplit("/", 1)[0], got and got.status_code] += 1

        reads = ["/healthz", "/metrics", "/v1/images", f"/v1/images/upload/{job_id}"]
        readers = [threading.Thread(target=keep_reading, args=(path,))
                   for path in reads * 2]  # two of each at once, the whole time
        for thread in readers:
            thread.start()
        assert service.wait_job(job_id, timeout=60)["uploaded"]["failed"] == []
        time.sleep(0.5)  # a few more samples of the readers
        sampler.done.set()
        for thread in readers + [sampler.thread]:
            thread.join()
        # reads never waited for a connection long enough to fail (listings: store.sql)
        assert {key for key in statuses if key[0].startswith("/v1")} == {
            ("/v1", 200), ("/v1/images/upload", 200)}, statuses
        storage = StorageConfig()
        assert sampler.most_by_name["image-service writer"] == 1
        assert sampler.most_by_name["image-service readers"] <= storage.read_connections
        assert sampler.most_by_name["image-service listener"] == 1
        assert sampler.most_by_name["image-service shared"] <= (
            storage.shared_connections * (defaults.processes + 1))
        budget = 2 + storage.read_connections + storage.shared_connections * (
            defaults.processes + 1)  # as docs/operating-postgresql.md counts them
        assert sampler.most <= budget <= 10, sampler.most_by_name

        # PostgreSQL ends the shared-state connections (each worker's, the front end's) and
        # refuses new ones (a role's CONNECTION LIMIT: SQLSTATE 53300, as when max_connections
        # is reached); the writer, readers and listener keep theirs
        held = dict(admin.execute("SELECT application_name, count(*) FROM pg_stat_activity"
                                  " WHERE usename = %s GROUP BY 1", (role,)).fetchall())
        admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT"
                      f" {sum(held.values()) - held['image-service shared']}")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
                      " AND application_name = 'image-service shared'", (role,))
        slow = slow_urls(image_source, "refused", 40)
        refused_job = service.post_job(slow)  # its URLs wait for the shared state

        def workers_refused():
            health = answer(f"{service.url}/healthz")
            reasons = [] if health is None else health.json().get("degraded", [])
            return [r for r in reasons if r.startswith("worker ")
                    and "too many connections for role" in r and "retrying" in r]
        assert len(wait_until(workers_refused, timeout=60)) >= 1  # told through their pipes
        assert service.proc.poll() is None  # up
        admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        done = wait_until(lambda: (a := answer(f"{service.url}/v1/images/upload/{refused_job}"))
                          is not None and a.status_code == 200
                          and a.json()["status"] == "complete" and a.json(), timeout=120)
        assert done["uploaded"]["failed"] == [] and len(done["uploaded"]["complete"]) == len(slow)
        wait_until(lambda: (h := answer(f"{service.url}/healthz")) is not None
                   and h.status_code == 200 and h.json()["status"] == "ok", timeout=60)
    finally:
        admin.close()
        service.kill()
