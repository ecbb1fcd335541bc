"""Operable: health, metrics, logs and progress, seen from outside like an operator would."""
import json
import os
import signal

import requests
from prometheus_client.parser import text_string_to_metric_families

from testbed.fakes.image_source import make_image

from tests.support import wait_until, worker_pids
from tests.support import imgur_config


def metrics(service) -> dict:
    """{(sample name, frozenset of labels): value} from /metrics, parsed by prometheus_client."""
    answer = requests.get(f"{service.url}/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def finished(values, outcome, failure_class=""):
    key = ("uploader_urls_finished_total",
           frozenset({"outcome": outcome, "failure_class": failure_class}.items()))
    return values.get(key, 0)


def test_healthz_goes_503_while_a_worker_is_down_and_back_to_200(start_service):
    """/healthz answers 503 while a worker is down, saying so, and 200 once it is back. A
    single death is made good within milliseconds (too fast to be seen for sure on a busy
    machine), so the same worker is killed as each replacement appears: by its fourth quick
    death at the latest, it is started again only after a back-off of seconds."""
    service = start_service()
    assert requests.get(f"{service.url}/healthz", timeout=5).status_code == 200

    def after_killing(pid):
        """The body of a 503, or "replaced" once another process has the worker's place."""
        answer = requests.get(f"{service.url}/healthz", timeout=5)
        if answer.status_code == 503:
            return answer.json()
        return answer.json()["workers"]["pids"][0] != pid and "replaced"

    for _ in range(4):
        pid = worker_pids(service)[0]
        os.kill(pid, signal.SIGKILL)
        down = wait_until(lambda: after_killing(pid), interval=0.01)
        if down != "replaced":
            break
    assert down != "replaced", "four quick deaths and never a 503"
    expected = down["workers"]["expected"]
    assert f"1 of {expected} worker processes are down" in down["problems"][0]
    wait_until(lambda: requests.get(f"{service.url}/healthz", timeout=5).status_code == 200,
               timeout=40)


def test_metrics_count_a_mixed_jobs_actual_outcomes(start_service, image_source, fake_imgur):
    service = start_service(workers={"processes": 2, "uploads_per_process": 2},
                            **imgur_config(fake_imgur))
    twin = make_image("png", "twin")
    image_source.add("/twin-a.png", twin)
    image_source.add("/twin-b.png", twin)
    good = [image_source.url_for(f"/img/metric-{n}.gif") for n in range(6)]
    urls = good + [image_source.url_for("/twin-a.png"), image_source.url_for("/status/404"),
                   image_source.url_for("/html")]
    first = service.wait_job(service.post_job(urls))
    second = service.wait_job(service.post_job([image_source.url_for("/twin-b.png")]))
    values = metrics(service)

    assert values[("uploader_jobs_submitted_total", frozenset())] == 2
    assert values[("uploader_urls_submitted_total", frozenset())] == 10
    assert finished(values, "complete") == len(first["uploaded"]["complete"]) == 7
    assert finished(values, "reused") == 1 and second["urls"][0]["reused"]
    assert finished(values, "failed", "source_http_error") == 1
    assert finished(values, "failed", "not_an_image") == 1
    assert values[("uploader_dedup_reuses_total", frozenset())] == 1
    assert values[("uploader_upload_seconds_count", frozenset())] == len(fake_imgur.uploads) == 7
    assert values[("uploader_fetch_seconds_count", frozenset())] == 8  # fetches that succeeded
    assert values[("uploader_uploaded_bytes_total", frozenset())] == sum(
        r.size for r in fake_imgur.uploads)
    assert values[("uploader_urls_queued", frozenset())] == 0
    assert values[("uploader_oldest_queued_seconds", frozenset())] == 0
    assert values[("uploader_urls_in_flight", frozenset())] == 0
    assert values[("uploader_workers_alive", frozenset())] == 2
    assert values[("uploader_workers_expected", frozenset())] == 2
    assert values[("uploader_host_credential_rejected", frozenset())] == 0
    remaining = values[("uploader_imgur_remaining_credits", frozenset({"budget": "user"}.items()))]
    assert remaining == 10**6 - 10 * 7
    workers_used = {line for line in service.read_log().splitlines() if "ready with" in line}
    assert len(workers_used) == 2  # both worker processes reported into one registry


def test_worker_restarts_are_counted(start_service):
    service = start_service()
    os.kill(worker_pids(service)[1], signal.SIGKILL)
    wait_until(lambda: metrics(service).get(("uploader_worker_restarts_total", frozenset())) == 1)


def test_json_logs_carry_one_line_per_outcome(start_service, image_source):
    service = start_service(logging={"level": "INFO", "format": "json"})
    ok, missing = image_source.url_for("/img/logged.png"), image_source.url_for("/status/404")
    job_id = service.post_job([ok, missing])
    service.wait_job(job_id)
    service.stop()
    lines = [json.loads(line) for line in service.read_log().splitlines()]
    outcomes = [entry for entry in lines if entry.get("job_id") == job_id and "outcome" in entry]
    assert sorted((e["url"], e["outcome"]) for e in outcomes) == sorted(
        [(ok, "complete"), (missing, "failed")])
    for entry in outcomes:
        assert entry["attempts"] == 1 and entry["duration"] >= 0 and entry["pid"] > 0
    assert next(e for e in outcomes if e["url"] == missing)["reason"] == "HTTP 404 from source"


def test_no_secret_reaches_a_log_line_or_an_error_body(start_service, image_source, fake_imgur):
    secrets = {"token": "tok-Sup3rSecret-access", "refresh": "tok-Sup3rSecret-refresh",
               "secret": "tok-Sup3rSecret-client-secret"}
    service = start_service(logging={"level": "DEBUG", "format": "text"}, **imgur_config(
        fake_imgur, access_token=secrets["token"], refresh_token=secrets["refresh"],
        client_id="test-client", client_secret=secrets["secret"]))
    job = service.wait_job(service.post_job([image_source.url_for("/img/secret.png")]))
    (entry,) = job["urls"]
    assert entry["state"] == "failed" and "Imgur rejected the access token" in entry["reason"]
    bodies = json.dumps(job) + requests.get(f"{service.url}/healthz", timeout=5).text
    service.stop()
    seen = service.read_log() + bodies
    for name, secret in secrets.items():
        assert secret not in seen, f"the {name} leaked"
    assert "Sup3rSecret" not in seen


def test_job_body_shows_bytes_fetched_while_a_large_image_downloads(start_service, image_source):
    service = start_service()
    url = image_source.url_for("/sized/1048576.jpg?pace=0.15")  # 1 MiB in 64 KiB steps, ~2.4 s
    job_id = service.post_job([url])
    progress = wait_until(lambda: (p := service.job(job_id)["urls"][0]["progress"])
                          and p["bytes"] > 0 and p)
    assert progress["total"] == 1048576 and 0 < progress["bytes"] < 1048576
    job = service.wait_job(job_id)
    assert job["urls"][0]["state"] == "complete" and job["urls"][0]["progress"] is None
