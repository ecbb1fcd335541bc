"""The real service (front end, manager, worker processes) against local fakes over HTTP."""
import pytest
import requests

from testbed.fakes.image_source import make_image


def count_jobs(service) -> int:
    return service.query("SELECT COUNT(*) FROM jobs")[0][0]


def test_mixed_job_ends_with_exact_links_and_failures(start_service, image_source):
    service = start_service()
    good = [image_source.url_for(f"/img/mixed-{n}.{ext}") for n, ext in
            enumerate(["png", "jpg", "gif", "tiff", "bmp"])]
    missing = image_source.url_for("/status/404")
    html = image_source.url_for("/html")
    urls = good + [missing, html, good[0]]  # the repeat is stripped
    job_id = service.post_job(urls)

    statuses = []
    job = service.wait_job(job_id, on_poll=lambda j: statuses.append(j["status"]))

    order = ["pending", "in-progress", "complete"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    assert job["id"] == job_id and job["finished"] is not None
    assert set(job) == {"id", "created", "finished", "status", "uploaded", "retry_of", "callback",
                        "urls"}
    assert job["retry_of"] is None and job["callback"] is None
    assert job["uploaded"]["pending"] == []
    assert job["uploaded"]["failed"] == [missing, html]
    assert len(job["uploaded"]["complete"]) == len(good)
    by_url = {entry["url"]: entry for entry in job["urls"]}
    assert list(by_url) == good + [missing, html]
    assert "404" in by_url[missing]["reason"]
    assert "HTML" in by_url[html]["reason"]
    for n, (url, ext) in enumerate(zip(good, ["png", "jpg", "gif", "tiff", "bmp"])):
        link = by_url[url]["link"]
        assert link.endswith("." + ("jpeg" if ext == "jpg" else ext)) or link.endswith("." + ext)
        served = requests.get(link, timeout=5)
        assert served.status_code == 200
        assert served.content == make_image(ext, f"mixed-{n}")
    assert sorted(service.links()) == sorted(job["uploaded"]["complete"])  # upload order differs


def test_uploads_to_imgur_when_a_token_is_configured(start_service, image_source, fake_imgur):
    service = start_service(image_host="imgur", imgur={
        "api_url": fake_imgur.url, "access_token": "test-token",
        "rate_limit": {"uploads_per_second": 0, "burst": 1},
        "backoff": {"base_seconds": 0.05, "max_seconds": 0.2}})
    urls = [image_source.url_for(f"/img/imgur-{n}.png") for n in range(6)]
    job = service.wait_job(service.post_job(urls))
    links = job["uploaded"]["complete"]
    assert len(links) == 6 and job["uploaded"]["failed"] == []
    assert sorted(fake_imgur.image_bytes(link) for link in links) == sorted(
        make_image("png", f"imgur-{n}") for n in range(6))
    assert sorted(service.links()) == sorted(links)


def test_imgur_file_error_becomes_the_urls_reason(start_service, image_source, fake_imgur):
    service = start_service(image_host="imgur", imgur={
        "api_url": fake_imgur.url, "access_token": "test-token",
        "rate_limit": {"uploads_per_second": 0, "burst": 1}})
    fake_imgur.fail_next(1, status=400, body="We don't support that file type!")
    job = service.wait_job(service.post_job([image_source.url_for("/img/refused.png")]))
    (entry,) = job["urls"]
    assert entry["state"] == "failed"
    assert "We don't support that file type!" in entry["reason"]


def test_jobs_and_links_survive_a_restart(start_service, image_source, tmp_path):
    first = start_service()
    job_id = first.post_job([image_source.url_for("/img/keep.png")])
    before = first.wait_job(job_id)
    assert first.stop() == 0
    second = start_service(config_path=first.config_path)
    assert second.job(job_id) == before
    assert second.links() == before["uploaded"]["complete"]


BAD_BODIES = [
    ("not json", 400, "not valid JSON"),
    ('["https://a.example/x.png"]', 400, "JSON object"),
    ("{}", 400, "urls"),
    ('{"urls": "https://a.example/x.png"}', 400, "list"),
    ('{"urls": []}', 400, "empty"),
    ('{"urls": [1]}', 400, "urls[0]"),
    ('{"urls": ["ftp://a.example/x.png"]}', 400, "urls[0]"),
    ('{"urls": ["https://a.example/1.png", "https://a.example/2.png", '
     '"https://a.example/3.png", "https://a.example/4.png"]}', 413, "at most 3"),
    ('{"urls": ["https://a.example/' + "x" * 600 + '.png"]}', 413, "limit"),
]


@pytest.fixture
def small_service(module_service):
    return module_service(server={"host": "127.0.0.1", "port": 0, "max_urls_per_job": 3,
                                  "max_body_bytes": 512})


@pytest.mark.parametrize("raw, status, fragment", BAD_BODIES)
def test_bad_requests_get_a_json_error_and_create_no_job(small_service, raw, status, fragment):
    before = count_jobs(small_service)
    answer = requests.post(f"{small_service.url}/v1/images/upload", data=raw,
                           headers={"Content-Type": "application/json"}, timeout=5)
    assert answer.status_code == status
    assert fragment in answer.json()["error"]
    assert count_jobs(small_service) == before


def test_chunked_body_over_the_limit_is_refused(small_service):
    def chunks():
        for _ in range(20):
            yield b'{"urls": ["' + b"x" * 100

    before = count_jobs(small_service)
    answer = requests.post(f"{small_service.url}/v1/images/upload", data=chunks(), timeout=5,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "limit" in answer.json()["error"]
    assert count_jobs(small_service) == before


def test_accepted_job_answers_202_with_location(small_service):
    before = count_jobs(small_service)
    answer = requests.post(f"{small_service.url}/v1/images/upload",
                           json={"urls": ["https://a.example/x.png"]}, timeout=5)
    assert answer.status_code == 202
    job_id = answer.json()["jobId"]
    assert answer.headers["Location"] == f"/v1/images/upload/{job_id}"
    assert count_jobs(small_service) == before + 1


@pytest.mark.parametrize("method, path", [
    ("PATCH", "/v1/images/upload"), ("PUT", "/v1/images/upload"), ("DELETE", "/v1/images"),
    ("POST", "/v1/images"), ("POST", "/v1/images/upload/6f1c8b8e-3f9c-4c1e-9a55-0b7b1c1d2e3f"),
])
def test_other_methods_answer_405_json(small_service, method, path):
    answer = requests.request(method, small_service.url + path, timeout=5)
    assert answer.status_code == 405
    assert method in answer.json()["error"]


@pytest.mark.parametrize("path", [
    "/v1/images/upload/6f1c8b8e-3f9c-4c1e-9a55-0b7b1c1d2e3f", "/v1/images/upload/not-a-uuid",
    "/nowhere", "/i/missing.png",
])
def test_unknown_things_answer_404_json(small_service, path):
    answer = requests.get(small_service.url + path, timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"]


def test_a_source_that_is_busy_for_a_while_is_fetched_again(start_service, image_source):
    service = start_service(fetch={"retries": 2})
    recovers = image_source.url_for("/flaky/2/recovers.png")  # 503, 503, then the image
    stays_busy = image_source.url_for("/flaky/9/busy.png")
    job = service.wait_job(service.post_job([recovers, stays_busy]), timeout=30)
    by_url = {u["url"]: u for u in job["urls"]}
    assert by_url[recovers]["state"] == "complete"
    assert by_url[stays_busy]["state"] == "failed"
    assert by_url[stays_busy]["reason"] == "HTTP 503 from source"
    paths = [r.path for r in image_source.requests]
    assert paths.count("/flaky/2/recovers.png") == 3 and paths.count("/flaky/9/busy.png") == 3


def test_a_missing_source_is_not_fetched_again(start_service, image_source):
    service = start_service(fetch={"retries": 2})
    missing = image_source.url_for("/status/404")
    job = service.wait_job(service.post_job([missing]))
    assert job["urls"][0]["reason"] == "HTTP 404 from source"
    assert [r.path for r in image_source.requests].count("/status/404") == 1


def test_a_fresh_workers_first_round_is_fetched_before_the_images_ahead(start_service,
                                                                         image_source):
    # One worker, two slots, two images ahead: the first two images are fetched alone (on a
    # busy machine the next round's fetches would slow them), the next two once one of the
    # first is in hand; then the worker fetches ahead as before.
    image_source.latency = 0.3
    service = start_service(workers={"processes": 1, "uploads_per_process": 2,
                                     "fetch_ahead": 2})
    paths = [f"/img/first-round-{n}.png" for n in range(6)]
    job = service.wait_job(service.post_job([image_source.url_for(p) for p in paths]),
                           timeout=30)
    assert [u["state"] for u in job["urls"]] == ["complete"] * len(paths)
    asked = sorted(r.time for r in image_source.requests if r.path in paths)
    first, later = asked[:2], asked[2:]
    assert all(at >= first[0] + image_source.latency for at in later)
