"""One key's backlog delays no other key, with the real service on both stores.

The image source holds every URL until the test lets it go, so what the workers take
next is observed, not timed: with both slots busy on key A's backlog, key B's one-image
job must be the next URL taken. (The claim's order itself: tests/system/test_store.py. The
waits' timeouts only bound a broken run.)
"""
from tests.support import wait_until
from tests.jobapi import KEY_A, KEY_B, api, submit, wait_job


def test_a_key_behind_anothers_backlog_is_served_at_the_next_free_slot(start_service,
                                                                      image_source):
    service = start_service(
        server={"host": "127.0.0.1", "port": 0, "api_keys": [KEY_A, KEY_B],
                "max_queued_urls_per_key": 60},
        workers={"processes": 1, "uploads_per_process": 2, "fetch_ahead": 0},  # two slots
        fetch={"timeout_seconds": 60})
    backlog = submit(service, [image_source.url_for(f"/held/a-{n}.png") for n in range(50)], KEY_A)
    wait_until(lambda: len(image_source.paths) == 2, timeout=60)  # both slots on A's backlog

    # Key A is at its cap (48 queued + 20 > 60): refused whole, nothing created.
    refused = api(service, "POST", "/v1/images/upload", KEY_A,
                  json={"urls": [image_source.url_for(f"/held/more-{n}.png") for n in range(20)]})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "48 URLs queued and the limit is 60" in refused.json()["error"]
    listed = api(service, "GET", "/v1/images/upload", KEY_A).json()["jobs"]
    assert [job["id"] for job in listed] == [backlog]

    # Key B's one image: the first URL taken once a slot frees, ahead of A's 48.
    one = submit(service, [image_source.url_for("/held/b-0.png")], KEY_B)
    image_source.release(1)
    wait_until(lambda: len(image_source.paths) == 3, timeout=60)
    assert image_source.paths[2] == "/held/b-0.png", image_source.paths
    image_source.release(2)
    assert wait_job(service, one, KEY_B, timeout=60)["uploaded"]["complete"]
    states = [u["state"] for u in
              api(service, "GET", f"/v1/images/upload/{backlog}", KEY_A).json()["urls"]]
    assert states.count("queued") >= 45  # B done while A's backlog waits
    image_source.release(100)
