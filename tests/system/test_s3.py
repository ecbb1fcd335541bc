"""S3 as the image host, end to end: the real service (front end, manager, worker
processes) on both stores, uploading to moto's S3 server through a proxy that fails when
told (``testbed/fakes/s3.py``)."""
import time

import pytest
import requests

from tests.support import wait_until
from tests.jobapi import api, submit, wait_job
from tests.s3support import CHECKSUM_HEADERS, png
from tests.s3support import KEY_ID, SECRET, key_of, s3_config

pytestmark = pytest.mark.system  # starts processes or servers

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"


def test_the_service_stores_images_in_a_bucket(start_service, image_source, moto_s3, s3_proxy):
    """One service per store checks it all: links by content and dedup, the objects'
    headers, deletes (an object two keys hold stays until both delete it), a 500 retried,
    a refusal failed at once, a SlowDown pausing everyone, the page's CSP, and the secret
    nowhere to be seen."""
    bucket = moto_s3.new_bucket()
    images = {f"/s3/{n}.png": png(n) for n in range(1, 20)}
    images["/s3/1-copy.png"] = images["/s3/1.png"]
    images["/s3/1-bob.png"] = images["/s3/1.png"]
    for path, data in images.items():
        image_source.add(path, data)
    url = image_source.url_for
    service = start_service(server={"api_keys": [ALICE, BOB]},
                            workers={"processes": 2, "uploads_per_process": 4},
                            **s3_config(s3_proxy.url, bucket))
    base = f"{s3_proxy.url}/{bucket}"

    # Links by content; identical bytes uploaded once; a missing source fails as ever.
    job = wait_job(service, submit(service, [url("/s3/1.png"), url("/s3/1-copy.png"),
                                             url("/s3/2.png"), url("/s3/missing.png")], ALICE),
                   ALICE)
    one, copy, two, missing = job["urls"]
    assert one["link"] == copy["link"] == f"{base}/{key_of(png(1))}"
    assert two["link"] == f"{base}/{key_of(png(2))}" and two["state"] == "complete"
    assert sorted([one["reused"], copy["reused"]]) == [False, True]
    assert missing["state"] == "failed" and missing["reason"] == "HTTP 404 from source"
    uploads = s3_proxy.uploads()
    assert sorted(r.key for r in uploads) == sorted([key_of(png(1)), key_of(png(2))])
    assert not [h for r in uploads for h in r.headers if h.startswith(CHECKSUM_HEADERS)]
    served = requests.get(one["link"], timeout=10)
    assert served.content == png(1) and served.headers["Content-Type"] == "image/png"
    assert served.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    # Another key uploads the same bytes: the same link, an image of its own. Deleting it
    # leaves the object while the other key holds it; the second deletion removes it.
    (bobs,) = wait_job(service, submit(service, [url("/s3/1-bob.png")], BOB), BOB)["urls"]
    assert bobs["link"] == one["link"] and bobs["image_id"] != one["image_id"]
    assert api(service, "DELETE", f"/v1/images/{one['image_id']}", ALICE).status_code == 202
    assert one["link"] not in api(service, "GET", "/v1/images", ALICE).json()["uploaded"]
    assert api(service, "DELETE", f"/v1/images/{bobs['image_id']}", BOB).status_code == 202
    deadline = time.monotonic() + 30  # the courier removes the bytes, after the answer
    while requests.get(one["link"], timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "the object was never removed"
        time.sleep(0.05)
    assert requests.get(one["link"], timeout=10).status_code in (403, 404)
    deleted = [r.key for r in s3_proxy.seen("DELETE") if r.key == key_of(png(1))]
    assert len(deleted) == 1  # Bob's, the last: Alice's left the object for him
    assert moto_s3.keys(bucket) == [key_of(png(2))]

    # A 500 is tried again; a refusal fails the URL at once, saying why and where.
    s3_proxy.fail_next(1, "internal")
    (retried,) = wait_job(service, submit(service, [url("/s3/3.png")], ALICE), ALICE)["urls"]
    assert retried["state"] == "complete" and retried["attempts"] == 2
    s3_proxy.fail_next(1, "access_denied")
    (refused,) = wait_job(service, submit(service, [url("/s3/4.png")], ALICE), ALICE)["urls"]
    assert refused["state"] == "failed" and refused["attempts"] == 1
    assert refused["reason"].startswith(f"S3 bucket '{bucket}': access denied")
    assert refused["reason"].endswith("(AccessDenied, HTTP 403)")

    # A SlowDown pauses every upload: once the first URL waits for it, a new job's
    # uploads all reach S3 only after the pause.
    s3_proxy.fail_next(1, "slowdown", retry_after=2)
    first = submit(service, [url("/s3/5.png")], ALICE)
    waiting = wait_until(lambda: api(service, "GET", f"/v1/images/upload/{first}", ALICE)
                         .json()["urls"][0]["waiting"])
    assert waiting["reason"].startswith(f"S3 asked us to slow down: S3 bucket '{bucket}': ")
    (slowed,) = [r for r in s3_proxy.uploads() if r.status == 503]
    later = submit(service, [url(f"/s3/{n}.png") for n in range(6, 12)], ALICE)
    jobs = [wait_job(service, job_id, ALICE) for job_id in (first, later)]
    assert all(u["state"] == "complete" for job in jobs for u in job["urls"])
    held = [r for r in s3_proxy.uploads() if r.key in {key_of(png(n)) for n in range(5, 12)}
            and r is not slowed]
    assert len(held) == 7 and all(r.at >= slowed.at + 2 for r in held)

    # The page lets thumbnails load from where the links point.
    csp = requests.get(service.url + "/", timeout=10).headers["Content-Security-Policy"]
    assert f"img-src 'self' {s3_proxy.url};" in csp

    # The secret is nowhere: log, metrics, API.
    seen = [service.read_log(), requests.get(service.url + "/metrics", timeout=10).text,
            api(service, "GET", "/v1/images/upload?limit=500", ALICE).text]
    seen += [api(service, "GET", f"/v1/images/upload/{job_id}", ALICE).text
             for job_id in (first, later)]
    assert not [text for text in seen if SECRET in text or KEY_ID in text]

