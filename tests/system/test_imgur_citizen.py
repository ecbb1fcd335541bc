"""A good Imgur citizen: one pool-wide pace, Imgur's own limits, retries, tokens, no duplicates.

Each test runs the real service (front end, manager, worker processes) against the fake Imgur.
"""
import requests

from tests.support import wait_until
from tests.support import imgur_config, most_in_window


def test_pool_wide_rate_limit_holds_across_all_workers(start_service, image_source, fake_imgur):
    service = start_service(workers={"processes": 4, "uploads_per_process": 8},
                            **imgur_config(fake_imgur, rate_limit={"uploads_per_second": 5,
                                                                   "burst": 1}))
    urls = [image_source.url_for(f"/img/paced-{n}.png") for n in range(22)]
    job_id = service.post_job(urls)
    job = wait_until(lambda: (j := service.job(job_id)) and any(u["waiting"] for u in j["urls"]) and j)
    waiting = next(u["waiting"] for u in job["urls"] if u["waiting"])  # a wait of seconds shows
    assert waiting["reason"] == "paced by imgur.rate_limit: 5 uploads a second for the whole service"
    job = service.wait_job(job_id, timeout=60)
    assert len(job["uploaded"]["complete"]) == len(urls)
    times = [r.at for r in fake_imgur.requests_seen]
    assert len(times) == len(urls)
    assert most_in_window(times) <= 5 + 1  # the rate, plus the burst


def test_429_with_retry_after_pauses_the_whole_pool(start_service, image_source, fake_imgur):
    # Mid-stream, with a rate limit: other slots hold reservations for later moments when
    # the 429 comes, and none of them may be used during the pause.
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur, rate_limit={"uploads_per_second": 10,
                                                                   "burst": 2}))
    urls = [image_source.url_for(f"/img/after-429-{n}.png") for n in range(40)]
    job_id = service.post_job(urls)
    wait_until(lambda: len(fake_imgur.requests_seen) >= 5, interval=0.01)
    fake_imgur.fail_next(1, status=429, body="Too Many Requests", headers={"Retry-After": "2"})
    job = service.wait_job(job_id, timeout=60)
    assert len(job["uploaded"]["complete"]) == len(urls)
    seen = fake_imgur.requests_seen
    refused = next(r for r in seen if r.status == 429)
    # Uploads already on the wire when the 429 was answered may still land just after it.
    during_pause = [r for r in seen if refused.at + 0.1 < r.at < refused.at + 2.0]
    assert during_pause == []
    assert any(r.at >= refused.at + 2.0 for r in seen)


def test_repeated_500s_fail_the_url_with_imgurs_message(start_service, image_source, fake_imgur):
    service = start_service(**imgur_config(fake_imgur, max_attempts=3))
    fake_imgur.fail_always(500, "Internal boom from the fake")
    job = service.wait_job(service.post_job([image_source.url_for("/img/boom.png")]))
    (entry,) = job["urls"]
    assert entry["state"] == "failed" and entry["attempts"] == 3
    assert "Internal boom from the fake" in entry["reason"]
    assert len(fake_imgur.requests_seen) == 3


def test_file_errors_fail_at_once_without_retry(start_service, image_source, fake_imgur):
    service = start_service(**imgur_config(fake_imgur, max_attempts=5))
    fake_imgur.fail_next(1, status=400, body="File is over the size limit")
    job = service.wait_job(service.post_job([image_source.url_for("/img/big.png")]))
    (entry,) = job["urls"]
    assert entry["state"] == "failed" and entry["attempts"] == 1
    assert "File is over the size limit" in entry["reason"]


def test_budget_at_reserve_pauses_the_pool_until_reset(start_service, image_source, fake_imgur):
    # The countdown starts now: long enough that a slow start (a loaded machine) still
    # reaches the reserve well before the reset.
    fake_imgur.set_budgets(user_limit=200, user_remaining=60, user_reset=15)
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur, reserve={"user": 10, "client": 0, "post": 0}))
    wait_until(lambda: fake_imgur.credits_requests == 1)  # what is left, known before any upload
    urls = [image_source.url_for(f"/img/budget-{n}.png") for n in range(10)]
    job_id = service.post_job(urls)

    job = wait_until(lambda: (j := service.job(job_id)) and any(u["waiting"] for u in j["urls"]) and j)
    assert job["status"] == "in-progress"
    waiting = next(u["waiting"] for u in job["urls"] if u["waiting"])
    assert "user budget is down to its reserve of 10" in waiting["reason"]
    assert waiting["until"].endswith("Z")

    job = service.wait_job(job_id, timeout=40)
    assert len(job["uploaded"]["complete"]) == len(urls)
    statuses = [r.status for r in fake_imgur.requests_seen]
    assert statuses == [200] * len(urls)  # Imgur never had to refuse us
    arrivals = sorted(r.at for r in fake_imgur.requests_seen)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    # 60 credits with 10 kept back: five uploads, then a pause that lasts until the reset.
    # An answer may already count an upload the gate still holds in flight (the fake reports
    # its budget as it sends the answer), so the gate may stop one early: never late.
    assert [n for n, gap in enumerate(gaps, start=1) if gap > 2.0] in ([4], [5])


def test_expired_token_is_refreshed_once_for_the_whole_pool(start_service, image_source, fake_imgur):
    fake_imgur.expire_token("test-token")
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur, refresh_token="test-refresh",
                                           client_id="test-client", client_secret="test-secret"))
    urls = [image_source.url_for(f"/img/refresh-{n}.png") for n in range(12)]
    job = service.wait_job(service.post_job(urls), timeout=30)
    assert len(job["uploaded"]["complete"]) == len(urls)
    assert len(fake_imgur.refresh_requests) == 1
    assert [r.status for r in fake_imgur.refresh_requests] == [200]


def test_bad_refresh_fails_clearly_and_stops_hammering(start_service, image_source, fake_imgur):
    fake_imgur.expire_token("test-token")
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur, refresh_token="not-the-refresh-token",
                                           client_id="test-client", client_secret="test-secret"))
    urls = [image_source.url_for(f"/img/rejected-{n}.png") for n in range(30)]
    job = service.wait_job(service.post_job(urls), timeout=30)
    assert job["uploaded"]["failed"] == urls
    assert all("Imgur rejected the access token" in u["reason"] for u in job["urls"])
    assert "refresh failed" in job["urls"][0]["reason"]
    assert len(fake_imgur.refresh_requests) == 1
    assert len(fake_imgur.requests_seen) <= 2 * 4  # only what was already in flight
    assert "test-token" not in service.read_log()


def test_rejected_token_without_refresh_fails_every_url_clearly(start_service, image_source,
                                                               fake_imgur):
    fake_imgur.expire_token("test-token")
    service = start_service(**imgur_config(fake_imgur))
    urls = [image_source.url_for(f"/img/no-refresh-{n}.png") for n in range(20)]
    job = service.wait_job(service.post_job(urls), timeout=30)
    assert job["uploaded"]["failed"] == urls
    assert all("no refresh token is configured" in u["reason"] for u in job["urls"])
    assert len(fake_imgur.requests_seen) <= 2 * 4
    health = requests.get(f"{service.url}/healthz", timeout=10)  # serving, but not uploading
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert "no refresh token is configured" in health.json()["degraded"][0]
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert "uploader_host_credential_rejected 1.0" in metrics


def _serve_duplicates(image_source):
    """10 URLs serving 3 distinct images (two jobs' worth)."""
    from testbed.fakes.image_source import make_image
    images = [make_image("png", tag) for tag in ("one", "two", "three")]
    paths = [f"/dup/{n}.png" for n in range(10)]
    for n, path in enumerate(paths):
        image_source.add(path, images[n % 3], content_type="image/png")
    return [image_source.url_for(p) for p in paths]


def test_identical_bytes_are_uploaded_once_across_jobs(start_service, image_source, fake_imgur):
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur))
    urls = _serve_duplicates(image_source)
    first = service.wait_job(service.post_job(urls[:6]))
    second = service.wait_job(service.post_job(urls[6:]))
    assert len(fake_imgur.uploads) == 3
    entries = first["urls"] + second["urls"]
    assert all(e["state"] == "complete" for e in entries)
    assert sum(e["reused"] for e in entries) == 7
    assert len({e["link"] for e in entries}) == 3
    assert sorted(service.links()) == sorted({e["link"] for e in entries})


def test_dedup_switch_off_uploads_every_copy(start_service, image_source, fake_imgur):
    service = start_service(**imgur_config(fake_imgur, dedup=False))
    urls = _serve_duplicates(image_source)
    job = service.wait_job(service.post_job(urls))
    assert len(job["uploaded"]["complete"]) == 10
    assert len(fake_imgur.uploads) == 10
    assert not any(e["reused"] for e in job["urls"])


def test_a_fresh_service_asks_for_credits_instead_of_probing_with_an_upload(start_service,
                                                                          image_source, fake_imgur):
    fake_imgur.latency = 0.3
    service = start_service(workers={"processes": 2, "uploads_per_process": 4},
                            **imgur_config(fake_imgur))
    wait_until(lambda: fake_imgur.credits_requests == 1)
    urls = [image_source.url_for(f"/img/no-probe-{n}.png") for n in range(8)]
    job = service.wait_job(service.post_job(urls), timeout=30)
    assert len(job["uploaded"]["complete"]) == 8
    first, second = sorted(fake_imgur.requests_seen, key=lambda r: r.at)[:2]
    assert second.at < first.answered  # the second did not wait for the first one's answer
