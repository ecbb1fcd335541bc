"""Many instances, one service: drills with real processes on one PostgreSQL database.

Each instance is a whole service (front end, manager, workers) in its own process group,
started from its own config file; they share the database and nothing else. They reach
it as large deployments do, through PgBouncer in transaction pooling mode, listening on
a direct connection (``storage.listen_url``) or, asked so, not at all (they poll).
Leases are short (3 s) so that taking over a dead instance's work is quick to watch.
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from testbed.fakes.image_source import make_image
from testbed.pgbouncer_server import PgBouncer
from testbed.postgres_server import PostgresServer
from uploader.config import WorkersConfig
from uploader.backends import schema

from tests.support import REPO, ServiceProcess, write_config
from tests.support import slow_urls, wait_until
from tests.support import imgur_config, most_in_window

pytestmark = pytest.mark.system  # starts processes or servers

LEASE = 3  # for the tests about a dead instance: it is found dead this soon


@pytest.fixture
def cluster(tmp_path, postgres, pgbouncer):
    """``cluster(n, database=None, lease=15, listen=True, **sections)``: n instances on one
    database (a fresh one by default) through PgBouncer, listening on a direct connection
    unless ``listen`` is False; all of them stopped after the test. A test about a dead instance
    asks for a short lease; the others keep the default, so that no live instance is judged
    dead on a loaded machine (with two busy loops beside the suite, more than 3 s between
    an instance's registration and its first heartbeat was common until start-up kept the
    lease, and a busy machine can hold up any heartbeat)."""
    started = []

    def start(n, database=None, lease=15.0, listen=True, **sections):
        database = database or postgres.create_database()
        services = []
        for i in range(n):
            directory = tmp_path / f"instance-{len(started) + i}"
            directory.mkdir()
            storage = {"path": str(directory / "unused.sqlite3"),
                       "url": pgbouncer.behind(database), "listen_url": database if listen else "",
                       "lease_seconds": lease, "poll_seconds": 0.5}
            config = write_config(directory, **{**sections, "storage": storage})
            services.append(ServiceProcess(config))
        started.extend(services)
        threads = [threading.Thread(target=s.start) for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(s.url for s in services), "an instance did not start"
        return services

    yield start
    for service in started:
        if service.proc is not None and service.proc.poll() is None:
            service.kill()


def instance_id(service) -> str:
    return requests.get(f"{service.url}/healthz", timeout=10).json()["instance"]


def held_by(service, instance) -> int:
    return service.query("SELECT COUNT(*) FROM urls WHERE state = 'in_flight' AND owner = ?",
                         (instance,))[0][0]


def outcomes(service) -> list:
    """URLs this instance recorded a final state for, from its log."""
    return re.findall(r"job \S+: (\S+) (?:complete|reused|failed):", service.read_log())


def sha256s(images) -> set:
    return {hashlib.sha256(image).hexdigest() for image in images}


def test_a_killed_instances_urls_are_finished_by_another(cluster, image_source, fake_imgur):
    a, b = cluster(2, lease=LEASE, workers={"processes": 2, "uploads_per_process": 4},
                   **imgur_config(fake_imgur))
    urls = slow_urls(image_source, "takeover", 60)
    job_id = a.post_job(urls)
    victim = instance_id(a)
    wait_until(lambda: held_by(a, victim) > 0 and held_by(a, instance_id(b)) > 0)
    a.kill()  # kill -9 of the whole instance: front end, manager, workers
    killed_at = time.monotonic()

    job = b.wait_job(job_id, timeout=30)  # resumed within the lease, with every URL
    assert job["uploaded"]["failed"] == [] and len(job["uploaded"]["complete"]) == len(urls)
    assert any(u["attempts"] >= 2 for u in job["urls"]), "no URL was taken over"
    assert time.monotonic() - killed_at < 30
    ours = sha256s(make_image("png", f"takeover-{n}") for n in range(len(urls)))
    uploads = [r.sha256 for r in fake_imgur.uploads if r.sha256 in ours]
    assert set(uploads) == ours
    held = 2 * (4 + WorkersConfig().fetch_ahead)  # what the dead instance's workers held
    assert len(uploads) - len(ours) <= held
    assert "took back" in b.read_log()


def test_a_frozen_instances_late_results_are_refused_not_counted(cluster, image_source,
                                                                  fake_imgur):
    a, b = cluster(2, lease=LEASE, workers={"processes": 1, "uploads_per_process": 4},
                   **imgur_config(fake_imgur))
    urls = slow_urls(image_source, "frozen", 30)
    job_id = a.post_job(urls)
    frozen = instance_id(a)
    wait_until(lambda: held_by(b, frozen) > 0)
    os.killpg(a.proc.pid, signal.SIGSTOP)  # a long GC pause, a stalled VM: alive but silent
    try:
        job = b.wait_job(job_id, timeout=30)
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    assert len(job["uploaded"]["complete"]) == len(urls)
    wait_until(lambda: "lease had expired" in a.read_log(), timeout=15)
    wait_until(lambda: held_by(b, frozen) == 0 and "refused a late result" in a.read_log(),
               timeout=15)
    after = b.job(job_id)
    assert after["uploaded"] == job["uploaded"] and after["finished"] == job["finished"]
    listed = b.links()
    assert len(listed) == len(set(listed)) and set(job["uploaded"]["complete"]) <= set(listed)
    assert requests.get(f"{a.url}/healthz", timeout=10).status_code == 200  # a carries on


def test_one_pace_for_the_whole_cluster(cluster, image_source, fake_imgur):
    # each instance holds 8 URLs at most, so both take part
    a, b = cluster(2, workers={"processes": 2, "uploads_per_process": 4, "fetch_ahead": 0},
                   **imgur_config(fake_imgur, rate_limit={"uploads_per_second": 5, "burst": 1}))
    urls = [image_source.url_for(f"/img/cluster-paced-{n}.png") for n in range(24)]
    first, second = a.post_job(urls[:12]), b.post_job(urls[12:])
    for service, job_id in ((a, first), (b, second)):
        assert len(service.wait_job(job_id, timeout=60)["uploaded"]["complete"]) == 12
    times = [r.at for r in fake_imgur.requests_seen]
    assert len(times) == len(urls)
    assert most_in_window(times) <= 5 + 1  # one rate and burst for both instances together
    assert outcomes(a) and outcomes(b), "both instances uploaded"


@pytest.mark.parametrize("pace", [
    pytest.param({"uploads_per_second": 10, "burst": 2}, id="paced"),
    pytest.param({"uploads_per_second": 0, "burst": 1}, id="unpaced"),  # tickets held ahead
])
def test_one_429_pauses_every_instance(cluster, image_source, fake_imgur, pace):
    unpaced = not pace["uploads_per_second"]
    if unpaced:  # each answer takes a moment, so the job is still running when the 429 comes
        fake_imgur.latency = 0.05
    a, b = cluster(2, workers={"processes": 2, "uploads_per_process": 4},
                   **imgur_config(fake_imgur, rate_limit=pace))
    count = 200 if unpaced else 40
    urls = [image_source.url_for(f"/img/cluster-429-{n}.png") for n in range(count)]
    first, second = a.post_job(urls[:count // 2]), b.post_job(urls[count // 2:])
    wait_until(lambda: len(fake_imgur.requests_seen) >= 5, interval=0.01)
    fake_imgur.fail_next(1, status=429, body="Too Many Requests", headers={"Retry-After": "3"})
    for service, job_id in ((a, first), (b, second)):
        assert len(service.wait_job(job_id, timeout=60)["uploaded"]["complete"]) == count // 2
    seen = fake_imgur.requests_seen
    refused = next(r for r in seen if r.status == 429)
    # Sent before the pause was known: granted before it, from a worker that had not yet read
    # the 429 or set the pause (a compare-and-set; unpaced, then the notice), on a busy machine
    # (a second: at a load of 40 the notice once took more than 0.3 s to reach a worker).
    known = refused.answered + 1.0
    during_pause = [r for r in seen if known < r.at < refused.answered + 3.0]
    assert during_pause == []  # neither instance sent anything while Imgur asked us to wait
    later = [r for r in seen if r.at >= refused.answered + 3.0]
    assert later
    after_pause = {r.image_id for r in later}
    for service in (a, b):  # both instances had work and waited: each uploaded after the pause
        links = set(re.findall(r"complete: \S+/(\w{7})\.png", service.read_log()))
        assert links & after_pause, "an instance did not take part after the pause"


def test_identical_bytes_are_uploaded_once_across_instances(cluster, image_source, fake_imgur):
    a, b = cluster(2, workers={"processes": 2, "uploads_per_process": 4},
                   **imgur_config(fake_imgur))
    images = [make_image("png", tag) for tag in ("uno", "dos", "tres")]
    paths = [f"/cluster-dup/{n}.png" for n in range(12)]
    for n, path in enumerate(paths):
        image_source.add(path, images[n % 3], content_type="image/png")
    urls = [image_source.url_for(p) for p in paths]
    first, second = a.post_job(urls[::2]), b.post_job(urls[1::2])  # at the same moment
    jobs = [a.wait_job(first), b.wait_job(second)]
    assert len(fake_imgur.uploads) == 3
    entries = jobs[0]["urls"] + jobs[1]["urls"]
    assert all(e["state"] == "complete" for e in entries)
    assert sum(e["reused"] for e in entries) == 9
    assert len({e["link"] for e in entries}) == 3


def test_two_instances_sharing_a_bucket_store_identical_bytes_once(cluster, image_source,
                                                                   moto_s3, s3_proxy):
    """S3 keys an object by its bytes: whichever instance uploads them, one key, one link;
    and the cluster's dedup uploads them once."""
    from tests.s3support import key_of, s3_config
    from tests.s3support import png

    bucket = moto_s3.new_bucket()
    a, b = cluster(2, workers={"processes": 2, "uploads_per_process": 4},
                   **s3_config(s3_proxy.url, bucket))
    for n in range(12):
        image_source.add(f"/s3-cluster/{n}.png", png(n % 3))
    urls = [image_source.url_for(f"/s3-cluster/{n}.png") for n in range(12)]
    first, second = a.post_job(urls[:6:2]), b.post_job(urls[1:6:2])  # at the same moment
    jobs = [a.wait_job(first), b.wait_job(second)]
    late = b.wait_job(b.post_job(urls[6:]))  # the other instance's links, reused
    entries = jobs[0]["urls"] + jobs[1]["urls"] + late["urls"]
    assert all(e["state"] == "complete" for e in entries)
    assert {e["link"] for e in entries} == {f"{s3_proxy.url}/{bucket}/{key_of(png(n))}"
                                            for n in range(3)}
    assert all(e["reused"] for e in late["urls"])
    assert sorted(r.key for r in s3_proxy.uploads()) == sorted(key_of(png(n)) for n in range(3))
    assert moto_s3.keys(bucket) == sorted(key_of(png(n)) for n in range(3))


def test_an_expired_token_is_refreshed_once_for_the_whole_cluster(cluster, image_source,
                                                                    fake_imgur):
    fake_imgur.expire_token("test-token")
    # each instance holds 8 URLs at most, so both take part
    a, b = cluster(2, workers={"processes": 2, "uploads_per_process": 4, "fetch_ahead": 0},
                   **imgur_config(fake_imgur, refresh_token="test-refresh",
                                  client_id="test-client", client_secret="test-secret"))
    urls = [image_source.url_for(f"/img/cluster-refresh-{n}.png") for n in range(16)]
    first, second = a.post_job(urls[:8]), b.post_job(urls[8:])
    for service, job_id in ((a, first), (b, second)):
        assert len(service.wait_job(job_id, timeout=30)["uploaded"]["complete"]) == 8
    assert [r.status for r in fake_imgur.refresh_requests] == [200]  # one refresh for both
    assert outcomes(a) and outcomes(b)


def test_every_instance_answers_the_same(cluster, image_source):
    # not listening (PgBouncer does not deliver LISTEN): each instance polls for work
    a, b = cluster(2, listen=False, image_host="local", server={"host": "127.0.0.1", "port": 0})
    job_id = a.post_job([image_source.url_for("/img/everywhere.png"),
                         image_source.url_for("/status/404")])
    assert b.job(job_id)["id"] == job_id  # readable elsewhere at once
    done = b.wait_job(job_id)
    assert a.job(job_id) == done
    assert a.links() == b.links() == done["uploaded"]["complete"]
    for service in (a, b):
        assert service.read_log().count("ends a session with each transaction") == 1


def test_instances_starting_together_share_one_schema(cluster, postgres):
    database = postgres.create_database()
    services = cluster(3, database=database)
    (version,) = services[0].query("SELECT version FROM schema_version")
    assert version == (schema.LATEST,)
    assert len({instance_id(s) for s in services}) == 3


def test_the_database_going_away_loses_nothing(tmp_path, image_source, fake_imgur):
    # PostgreSQL killed behind PgBouncer, which stays up: queries fail there, or wait for a
    # server connection until PgBouncer's query_wait_timeout, until it logs in again
    with PostgresServer() as server, PgBouncer(server) as bouncer:
        direct = server.create_database()
        config = write_config(tmp_path, workers={"processes": 2, "uploads_per_process": 4},
                              storage={"url": bouncer.behind(direct), "listen_url": direct,
                                       "lease_seconds": LEASE,
                                       "poll_seconds": 0.5}, **imgur_config(fake_imgur))
        service = ServiceProcess(config).start()
        try:
            urls = slow_urls(image_source, "outage", 40)
            job_id = service.post_job(urls)
            wait_until(lambda: len(service.job(job_id)["uploaded"]["complete"]) >= 3)
            server.kill()  # pg_ctl stop -m immediate: every connection cut, like a crash
            health = wait_until(lambda: (h := requests.get(f"{service.url}/healthz", timeout=10))
                                .status_code == 503 and h.json())
            # refused at once, or held by PgBouncer until its query_wait_timeout: either way
            # /healthz says so within its probe's wait
            assert any("database unreachable" in p or "the store did not answer within" in p
                       for p in health["problems"]), health
            # /metrics answers all the same (monitoring must not go blind), saying so
            wait_until(lambda: "\nuploader_store_up 0.0\n" in metrics_text(service))
            refused = requests.post(f"{service.url}/v1/images/upload", timeout=30,
                                    json={"urls": [image_source.url_for("/img/later.png")]})
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert "error" in refused.json()
            time.sleep(2)  # uploads finish meanwhile; their results wait for the database
            server.start()
            job = service.wait_job(job_id, timeout=60)
            assert job["uploaded"]["failed"] == [] and len(job["uploaded"]["complete"]) == len(urls)
            wait_until(lambda: requests.get(f"{service.url}/healthz", timeout=10).status_code == 200)
            # a read begun during the outage may still report it once; the next ones see it up
            wait_until(lambda: "\nuploader_store_up 1.0\n" in metrics_text(service))
            again = service.post_job([image_source.url_for("/img/after-outage.png")])
            assert service.wait_job(again)["uploaded"]["failed"] == []
        finally:
            service.kill()


def metrics_text(service) -> str:
    answer = requests.get(f"{service.url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_second_instance_on_the_embedded_store_refuses_to_start(tmp_path):
    config = write_config(tmp_path)  # the embedded store: one SQLite file
    first = ServiceProcess(config).start()
    try:
        second = subprocess.run([sys.executable, "-m", "uploader", "--config", str(config)],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert "in use by another instance" in line and str(tmp_path / "store.sqlite3") in line
        assert requests.get(f"{first.url}/healthz", timeout=10).status_code == 200
    finally:
        first.stop()
