"""Job control with the real service, on both stores: list, retry, cancel, delete images,
API keys, the strict content type and completion webhooks."""
import hashlib
import hmac
import json
import time

import requests

from testbed.fakes.image_source import make_image
from testbed.fakes.webhook_receiver import Answer, WebhookReceiver

from tests.support import ServiceProcess
from tests.support import wait_until
from tests.support import imgur_config
from tests.jobapi import KEY_A, KEY_B, api, submit, wait_job


def test_jobs_are_listed_newest_first_a_page_at_a_time(start_service, image_source):
    service = start_service()
    ids = [submit(service, [image_source.url_for(f"/img/listed-{n}.png"),
                            image_source.url_for("/status/404")]) for n in range(3)]
    for job_id in ids:
        wait_job(service, job_id)
    first = api(service, "GET", "/v1/images/upload?limit=2").json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2] and first["next"]
    assert first["jobs"][0]["counts"] == {"pending": 0, "complete": 1, "failed": 1}
    assert first["jobs"][0]["status"] == "complete" and first["jobs"][0]["finished"]
    rest = api(service, "GET", f"/v1/images/upload?limit=2&before={first['next']}").json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None
    assert [j["id"] for j in api(service, "GET", "/v1/images/upload").json()["jobs"]] == ids[::-1]
    for query in ("limit=0", "limit=501", "limit=x", "before=abc", "before=-1",
                  "before=9999999999999999999", "before=9223372036854775808", "limit=%C2%B2"):
        answer = api(service, "GET", f"/v1/images/upload?{query}")
        assert answer.status_code == 400 and answer.json()["error"], query
    largest = api(service, "GET", "/v1/images/upload?before=9223372036854775807")  # 2**63 - 1
    assert [j["id"] for j in largest.json()["jobs"]] == ids[::-1]  # the store takes it


def test_retry_makes_a_new_job_of_exactly_the_failed_urls(start_service, image_source):
    service = start_service()
    good = [image_source.url_for(f"/img/retry-{n}.png") for n in range(2)]
    bad = [image_source.url_for("/status/404"), image_source.url_for("/html")]
    job_id = submit(service, [good[0], bad[0], good[1], bad[1]])
    before = wait_job(service, job_id)
    answer = api(service, "POST", f"/v1/images/upload/{job_id}/retry")
    assert answer.status_code == 202, answer.text
    retry_id = answer.json()["jobId"]
    assert retry_id != job_id and answer.headers["Location"] == f"/v1/images/upload/{retry_id}"
    retried = wait_job(service, retry_id)
    assert retried["retry_of"] == job_id and [u["url"] for u in retried["urls"]] == bad
    assert api(service, "GET", f"/v1/images/upload/{job_id}").json() == before  # unchanged
    assert before["retry_of"] is None
    listed = api(service, "GET", "/v1/images/upload").json()["jobs"]  # the listing says so too
    assert [(j["id"], j["retry_of"]) for j in listed] == [(retry_id, job_id), (job_id, None)]
    clean = wait_job(service, submit(service, [image_source.url_for("/img/retry-clean.png")]))
    conflict = api(service, "POST", f"/v1/images/upload/{clean['id']}/retry")
    assert conflict.status_code == 409 and "no failed URL" in conflict.json()["error"]
    unknown = api(service, "POST", "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11/retry")
    assert unknown.status_code == 404 and unknown.json()["error"]
    image_source.latency = 1.0
    running = submit(service, [image_source.url_for("/img/retry-slow.png")])
    early = api(service, "POST", f"/v1/images/upload/{running}/retry")
    assert early.status_code == 409 and "only a complete job" in early.json()["error"]


def test_cancel_fails_what_is_queued_and_lets_in_flight_urls_finish(start_service, image_source):
    service = start_service(workers={"processes": 1, "uploads_per_process": 2})
    image_source.latency = 0.5
    urls = [image_source.url_for(f"/img/cancel-{n}.png") for n in range(20)]
    job_id = submit(service, urls)
    wait_until(lambda: any(u["state"] == "in_flight" for u in
                           api(service, "GET", f"/v1/images/upload/{job_id}").json()["urls"]))
    answer = api(service, "DELETE", f"/v1/images/upload/{job_id}")
    assert answer.status_code == 200
    assert answer.json()["id"] == job_id
    job = wait_job(service, job_id)
    cancelled = [u for u in job["urls"] if u["state"] == "failed"]
    finished = [u for u in job["urls"] if u["state"] == "complete"]
    assert cancelled and finished and len(cancelled) + len(finished) == 20
    assert all("cancelled" in u["reason"] for u in cancelled)
    assert all(u["attempts"] == 0 for u in cancelled)  # never fetched
    assert answer.headers["X-Cancelled-Urls"] == str(len(cancelled))
    again = api(service, "DELETE", f"/v1/images/upload/{job_id}")
    assert again.status_code == 200 and again.json() == job  # harmless
    assert again.headers["X-Cancelled-Urls"] == "0"  # and says it cancelled nothing
    unknown = api(service, "DELETE", "/v1/images/upload/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11")
    assert unknown.status_code == 404


def test_deleting_a_local_image_removes_it_everywhere(start_service, image_source):
    service = start_service()
    url = image_source.url_for("/img/deleted.png")
    job_id = submit(service, [url])
    (entry,) = wait_job(service, job_id)["urls"]
    assert entry["image_id"] and entry["deleted"] is False
    assert requests.get(entry["link"], timeout=10).status_code == 200
    answer = api(service, "DELETE", f"/v1/images/{entry['image_id']}")
    assert answer.status_code == 202
    assert answer.json() == {"image_id": entry["image_id"], "link": entry["link"]}
    assert entry["link"] not in service.links()  # at once, as the job says
    (after,) = api(service, "GET", f"/v1/images/upload/{job_id}").json()["urls"]
    assert after["deleted"] is True and after["link"] == entry["link"]
    wait_until(lambda: requests.get(entry["link"], timeout=10).status_code == 404)  # the bytes next
    again = api(service, "DELETE", f"/v1/images/{entry['image_id']}")
    assert again.status_code == 404 and again.json()["error"]
    (fresh,) = wait_job(service, submit(service, [url]))["urls"]  # the same bytes again
    assert fresh["reused"] is False and fresh["link"] != entry["link"]
    assert requests.get(fresh["link"], timeout=10).content == make_image("png", "deleted")


def test_deleting_an_imgur_image_calls_imgur_with_its_deletehash(start_service, image_source,
                                                                fake_imgur):
    service = start_service(**imgur_config(fake_imgur),
                            webhooks={"backoff": {"base_seconds": 0.1, "max_seconds": 0.2}})
    job = wait_job(service, submit(service, [image_source.url_for(f"/img/imgur-{n}.png")
                                             for n in ("deleted", "kept", "refused")]))
    deleted, kept, refused = job["urls"]
    fake_imgur.image_bytes(deleted["link"])  # there
    assert api(service, "DELETE", f"/v1/images/{deleted['image_id']}").status_code == 202
    assert sorted(service.links()) == sorted([kept["link"], refused["link"]])  # (oldest first)
    (record,) = wait_until(lambda: fake_imgur.deletes)
    assert record.status == 200 and record.auth == "bearer"
    assert requests.get(deleted["link"].replace("https://i.imgur.example", fake_imgur.url),
                        timeout=10).status_code == 404
    # Imgur down for the second deletion: recorded, and Imgur asked again until it confirms.
    fake_imgur.fail_next_delete(2, status=503, body="Service Unavailable")
    assert api(service, "DELETE", f"/v1/images/{kept['image_id']}").status_code == 202
    assert service.links() == [refused["link"]]
    wait_until(lambda: [r.status for r in fake_imgur.deletes] == [200, 503, 503, 200])
    # Imgur refuses the third for good: the image is still there, and so is its link again.
    fake_imgur.fail_next_delete(1, status=403, body="Permission denied")
    assert api(service, "DELETE", f"/v1/images/{refused['image_id']}").status_code == 202
    wait_until(lambda: service.links() == [refused["link"]])
    assert fake_imgur.image_bytes(refused["link"])
    entry = api(service, "GET", f"/v1/images/upload/{job['id']}").json()["urls"][2]
    assert entry["deleted"] is False
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'uploader_host_deletions_total{outcome="failed"} 1.0' in metrics


def test_a_post_that_is_not_json_creates_nothing(start_service, image_source):
    service = start_service()
    body = '{"urls": ["https://example.com/a.png"]}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = requests.post(f"{service.url}/v1/images/upload", data=body, headers=headers,
                               timeout=10)
        assert answer.status_code == 415, content_type
        assert "application/json" in answer.json()["error"]
    assert api(service, "GET", "/v1/images/upload").json()["jobs"] == []
    ok = requests.post(f"{service.url}/v1/images/upload", data=body, timeout=10,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 202


def test_two_keys_see_only_their_own_jobs_and_links(start_service, image_source):
    service = start_service(server={"host": "127.0.0.1", "port": 0, "api_keys": [KEY_A, KEY_B]})
    mine = submit(service, [image_source.url_for("/img/key-a.png"),
                            image_source.url_for("/status/404")], KEY_A)
    theirs = submit(service, [image_source.url_for("/img/key-b.png")], KEY_B)
    a, b = wait_job(service, mine, KEY_A), wait_job(service, theirs, KEY_B)
    for path in (f"/v1/images/upload/{theirs}",):
        assert api(service, "GET", path, KEY_A).status_code == 404
    assert api(service, "POST", f"/v1/images/upload/{mine}/retry", KEY_B).status_code == 404
    assert api(service, "DELETE", f"/v1/images/upload/{mine}", KEY_B).status_code == 404
    assert api(service, "DELETE", f"/v1/images/{a['urls'][0]['image_id']}", KEY_B).status_code == 404
    assert [j["id"] for j in api(service, "GET", "/v1/images/upload", KEY_A).json()["jobs"]] == [mine]
    assert [j["id"] for j in api(service, "GET", "/v1/images/upload", KEY_B).json()["jobs"]] == [theirs]
    assert api(service, "GET", "/v1/images", KEY_A).json()["uploaded"] == a["uploaded"]["complete"]
    assert api(service, "GET", "/v1/images", KEY_B).json()["uploaded"] == b["uploaded"]["complete"]
    for key in (None, "not-a-known-key-at-all"):
        refused = api(service, "GET", "/v1/images", key)
        assert refused.status_code == 401 and refused.json()["error"]
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        refused = api(service, "POST", "/v1/images/upload", key, json={"urls": ["https://a.example/"]})
        assert refused.status_code == 401
    for path in ("/healthz", "/metrics", "/openapi.json", "/"):
        assert requests.get(service.url + path, timeout=10).status_code == 200, path
    assert requests.get(a["urls"][0]["link"], timeout=10).status_code == 200  # /i/* stays open
    log = service.read_log()
    assert KEY_A not in log and KEY_B not in log


SECRET = "webhook-secret-for-tests"
QUICK_RETRIES = {"secret": SECRET, "backoff": {"base_seconds": 0.1, "max_seconds": 0.2}}


def callback_of(service, job_id):
    return api(service, "GET", f"/v1/images/upload/{job_id}").json()["callback"]


def signed_by(secret, header, body):
    """The signature checked independently of the service's code."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 60


def test_a_webhook_that_fails_twice_is_retried_and_delivered_signed(start_service, image_source):
    service = start_service(webhooks=QUICK_RETRIES)
    with WebhookReceiver() as receiver:
        receiver.answer(500, 503, 200)
        job_id = submit(service, [image_source.url_for("/img/hooked.png"),
                                  image_source.url_for("/status/404")],
                        callback_url=receiver.url_for("/hooks/done?token=t0ps3cret"))
        assert callback_of(service, job_id)["state"] == "pending"
        job = wait_job(service, job_id)
        callback = wait_until(lambda: (c := callback_of(service, job_id))["state"] == "delivered" and c)
        assert callback["attempts"] == 3 and callback["last_error"] is None
        first, second, third = receiver.requests
    assert {r.method for r in (first, second, third)} == {"POST"}
    assert {r.path for r in (first, second, third)} == {"/hooks/done?token=t0ps3cret"}
    assert len({r.header("X-Uploader-Delivery") for r in (first, second, third)}) == 1
    assert first.body == second.body == third.body
    for request in (first, second, third):
        assert request.header("Content-Type") == "application/json"
        assert request.header("X-Uploader-Event") == "job.completed"
        assert signed_by(SECRET, request.header("X-Uploader-Signature"), request.body)
    sent = json.loads(third.body)
    assert {k: v for k, v in sent.items() if k != "callback"} == \
        {k: v for k, v in job.items() if k != "callback"}
    log = service.read_log()
    assert log.count("/hooks/done: ") == 3 and "t0ps3cret" not in log and SECRET not in log
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'uploader_webhook_deliveries_total{outcome="retried"} 2.0' in metrics
    assert 'uploader_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_a_callback_to_a_refused_address_fails_without_a_request(start_service, image_source):
    service = start_service(webhooks=QUICK_RETRIES)
    job_id = submit(service, [image_source.url_for("/img/refused-hook.png")],
                    callback_url="http://10.1.2.3/hook")
    wait_job(service, job_id)
    callback = wait_until(lambda: (c := callback_of(service, job_id))["state"] == "failed" and c)
    assert callback["attempts"] == 1 and "refused" in callback["last_error"]
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'uploader_webhook_deliveries_total{outcome="refused"} 1.0' in metrics


def kill_during_third_attempt(config, image_source, receiver):
    """Two deliveries answered 500, the third held unanswered while the service is killed
    with kill -9; the job's id."""
    receiver.answer(500, 500)
    receiver.default = Answer(200, delay=60)
    first = ServiceProcess(config).start()
    try:
        job_id = submit(first, [image_source.url_for("/img/survivor.png")],
                        callback_url=receiver.url_for("/survive"))
        wait_until(lambda: len(receiver.requests) == 3)
    finally:
        first.kill()
    receiver.default = Answer(200)
    return job_id


def callback_settled(config, job_id):
    """The job's callback once a restarted service has settled it (delivered or failed)."""
    second = ServiceProcess(config).start()
    try:
        return wait_until(lambda: (c := callback_of(second, job_id))["state"] != "pending"
                          and c, timeout=30)
    finally:
        second.stop()


def test_a_delivery_survives_kill_9_of_the_service(make_config, image_source):
    config = make_config(webhooks=QUICK_RETRIES)
    with WebhookReceiver() as receiver:
        job_id = kill_during_third_attempt(config, image_source, receiver)
        callback = callback_settled(config, job_id)
        delivered = receiver.requests
    assert callback["state"] == "delivered"
    assert len(delivered) == 4 and delivered[-1].path == "/survive"
    assert len({r.header("X-Uploader-Delivery") for r in delivered}) == 1
    assert callback["attempts"] == 4  # the one cut short by the kill counts


def test_an_attempt_cut_short_counts_towards_max_attempts(make_config, image_source):
    config = make_config(webhooks={**QUICK_RETRIES, "max_attempts": 3})
    with WebhookReceiver() as receiver:
        job_id = kill_during_third_attempt(config, image_source, receiver)
        callback = callback_settled(config, job_id)
        assert len(receiver.requests) == 3  # no fourth request
    assert callback["state"] == "failed" and callback["attempts"] == 3
    assert "no attempts left: the last of 3 was cut short" in callback["last_error"]
