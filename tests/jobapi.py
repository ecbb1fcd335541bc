"""Talking to a running service's API as a client would: calls, submissions, waiting for a job."""
import requests

from tests.support import wait_until


def api(service, method, path, key=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if method == "POST" and "json" not in kwargs and "data" not in kwargs:
        headers.setdefault("Content-Type", "application/json")
    return requests.request(method, service.url + path, headers=headers, timeout=30, **kwargs)


def submit(service, urls, key=None, **extra):
    answer = api(service, "POST", "/v1/images/upload", key, json={"urls": urls, **extra})
    assert answer.status_code == 202, answer.text
    return answer.json()["jobId"]


def wait_job(service, job_id, key=None, timeout=30):
    return wait_until(lambda: (job := api(service, "GET", f"/v1/images/upload/{job_id}", key)
                               .json())["status"] == "complete" and job, timeout=timeout)


KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
