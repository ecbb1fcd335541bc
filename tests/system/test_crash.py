"""Nothing lost: worker deaths, front-end deaths and graceful stops, with real processes and signals."""
import os
import signal
import time

import pytest
import requests

from uploader.config import WorkersConfig

from tests.support import ServiceProcess
from tests.support import slow_urls, wait_until, worker_pids

pytestmark = pytest.mark.system  # starts processes or servers


def finish_after_restart(config, job_id) -> dict:
    """Start the service again on the same store and wait for the job to complete."""
    service = ServiceProcess(config).start()
    try:
        return service.wait_job(job_id, timeout=60)
    finally:
        service.stop()


def test_killed_worker_is_replaced_and_its_urls_complete(start_service, image_source):
    service = start_service()
    urls = slow_urls(image_source, "kill", 40)
    job_id = service.post_job(urls)
    wait_until(lambda: service.job(job_id)["status"] == "in-progress")
    victim = worker_pids(service)[0]
    os.kill(victim, signal.SIGKILL)

    job = service.wait_job(job_id)
    assert job["uploaded"]["failed"] == []
    assert len(job["uploaded"]["complete"]) == len(urls)
    assert any(entry["attempts"] >= 2 for entry in job["urls"]), "no URL was handed back"
    pids = wait_until(lambda: (p := worker_pids(service)) and victim not in p and len(p) == 2 and p)
    assert victim not in pids
    # healthy again once the new worker is ready (until then /healthz answers 503, as it must)
    wait_until(lambda: requests.get(f"{service.url}/healthz", timeout=5).status_code == 200)


def test_poison_url_fails_after_max_attempts_and_the_rest_complete(start_service, image_source):
    service = start_service(workers={"processes": 2, "uploads_per_process": 2,
                                     "exit_on_url_containing": "poison"},
                            imgur={"max_attempts": 3})
    good = [image_source.url_for(f"/img/ok-{n}.png") for n in range(10)]
    poison = image_source.url_for("/img/poison.png")
    job = service.wait_job(service.post_job(good[:5] + [poison] + good[5:]), timeout=60)

    assert job["uploaded"]["failed"] == [poison]
    assert len(job["uploaded"]["complete"]) == 10
    (entry,) = [e for e in job["urls"] if e["url"] == poison]
    assert entry["attempts"] == 3
    assert "worker died while uploading" in entry["reason"]
    assert "attempt 3 of 3" in entry["reason"]
    wait_until(lambda: requests.get(f"{service.url}/healthz", timeout=5).status_code == 200)


def test_kill_whole_service_then_restart_loses_nothing(make_config, image_source, fake_imgur):
    config = make_config(image_host="imgur", imgur={
        "api_url": fake_imgur.url, "access_token": "test-token",
        "rate_limit": {"uploads_per_second": 0, "burst": 1}})
    urls = slow_urls(image_source, "power-cut", 60)
    first = ServiceProcess(config).start()
    try:
        job_id = first.post_job(urls)
        wait_until(lambda: len(first.job(job_id)["uploaded"]["complete"]) >= 5)
    finally:
        first.kill()  # SIGKILL to the process group: front end, manager and workers
    wait_until(lambda: first.children() == [], timeout=5)

    job = finish_after_restart(config, job_id)
    assert job["uploaded"]["failed"] == [] and job["uploaded"]["pending"] == []
    assert len(job["uploaded"]["complete"]) == len(urls)
    # A URL leaves a worker only once its result is committed: each URL the two workers
    # held (upload slots and images fetched ahead) may have been uploaded once more.
    held = 2 * (4 + WorkersConfig().fetch_ahead)
    assert len(urls) <= len(fake_imgur.uploads) <= len(urls) + held


def test_sigterm_mid_job_exits_zero_without_orphans_and_restart_completes(make_config, image_source):
    config = make_config(workers={"processes": 2, "uploads_per_process": 4,
                                             "shutdown_grace_seconds": 2})
    urls = slow_urls(image_source, "term", 80)
    first = ServiceProcess(config).start()
    job_id = first.post_job(urls)
    wait_until(lambda: first.job(job_id)["status"] == "in-progress")
    group = first.children()
    assert len(group) >= 4  # front end, manager, two workers

    refused = {}

    def try_submit_while_stopping():
        answer = requests.post(f"{first.url}/v1/images/upload",
                               json={"urls": [urls[0]]}, timeout=5)
        refused["status"], refused["headers"] = answer.status_code, answer.headers
        refused["body"] = answer.json()

    started = time.monotonic()
    first.signal(signal.SIGTERM)
    try:
        wait_until(lambda: try_submit_while_stopping() or refused.get("status") != 202, timeout=5)
    except requests.ConnectionError:
        refused["status"] = "closed"
    code = first.wait(15)
    elapsed = time.monotonic() - started
    assert code == 0 and elapsed < 15
    # Children end with the front end (the last may take a moment to see its pipe close).
    try:
        wait_until(lambda: not [pid for pid in group if _alive(pid)], timeout=3)
    except AssertionError:
        raise AssertionError(f"orphans left: {[_cmdline(p) for p in group if _alive(p)]}")
    finally:
        first.cleanup()
    if refused["status"] != "closed":
        assert refused["status"] == 503 and "Retry-After" in refused["headers"]
        assert "shutting down" in refused["body"]["error"]

    job = finish_after_restart(config, job_id)
    assert len(job["uploaded"]["complete"]) == len(urls)


def test_killing_the_front_end_alone_leaves_no_process_and_no_session(make_config, backend,
                                                                      image_source, fake_imgur):
    """The OOM killer or ``kill -9 <pid>`` ends the front end alone. Everything it started
    ends too (resource tracker, fork server, manager, an idle worker and one asleep at the
    upload gate for a long pause), and with them every database session."""
    fake_imgur.fail_always(429, "slow down", headers={"Retry-After": "600"})
    config = make_config(image_host="imgur",
                         imgur={"api_url": fake_imgur.url, "access_token": "test-token"})
    service = ServiceProcess(config).start()
    try:
        job_id = service.post_job([image_source.url_for("/img/held-at-the-gate.png")])
        wait_until(lambda: any(entry["waiting"] for entry in service.job(job_id)["urls"]))
        assert len(service.children()) >= 6  # front end, tracker, fork server, manager, 2 workers
        if backend == "postgresql":
            assert _sessions(service) > 0
        os.kill(service.proc.pid, signal.SIGKILL)  # the front end only, not its group
        service.wait(10)
        try:
            wait_until(lambda: service.children() == [], timeout=10)
        except AssertionError:
            raise AssertionError(f"orphans left: {[_cmdline(p) for p in service.children()]}")
        if backend == "postgresql":
            wait_until(lambda: _sessions(service) == 0, timeout=10)
    finally:
        service.cleanup()


def _sessions(service) -> int:
    """Sessions on the service's database (each test has a database of its own), but ours."""
    return service.query("SELECT count(*) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][0]


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as far as the service goes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def _cmdline(pid) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def test_manager_death_exits_non_zero_and_a_restart_resumes(make_config, image_source):
    config = make_config()
    urls = slow_urls(image_source, "manager", 30)
    first = ServiceProcess(config).start()
    try:
        job_id = first.post_job(urls)
        wait_until(lambda: first.job(job_id)["status"] == "in-progress")
        manager = requests.get(f"{first.url}/healthz", timeout=5).json()["manager"]["pid"]
        os.kill(manager, signal.SIGKILL)
        assert first.wait(15) == 3
        assert "multiprocessing manager lost" in first.read_log()
        wait_until(lambda: first.children() == [], timeout=5)
    finally:
        first.cleanup()

    job = finish_after_restart(config, job_id)
    assert len(job["uploaded"]["complete"]) == len(urls)


def test_second_signal_stops_at_once_and_loses_nothing_committed(make_config, image_source):
    config = make_config(workers={"processes": 2, "uploads_per_process": 4,
                                             "shutdown_grace_seconds": 30})
    urls = slow_urls(image_source, "twice", 60)
    image_source.latency = 8.0  # in-flight fetches would hold a graceful stop for 8 s
    first = ServiceProcess(config).start()
    try:
        job_id = first.post_job(urls)
        wait_until(lambda: first.job(job_id)["status"] == "in-progress")
        committed = first.job(job_id)["uploaded"]["complete"]
        started = time.monotonic()
        first.signal(signal.SIGTERM)
        time.sleep(0.2)
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0
        assert time.monotonic() - started < 5  # not the 30 s grace period
        wait_until(lambda: first.children() == [], timeout=5)
    finally:
        first.cleanup()
    image_source.latency = 0.0
    job = finish_after_restart(config, job_id)
    assert set(committed) <= set(job["uploaded"]["complete"])
    assert len(job["uploaded"]["complete"]) == len(urls)
