"""The service's HTTP API as the client uses it: one request per call, a refusal in words."""
import re
from urllib.parse import quote

import requests
from requests.auth import AuthBase

REQUEST_TIMEOUT = 30.0  # seconds for one HTTP request to the service


class ClientError(Exception):
    """Why the client cannot go on; printed as one line, exit code 2."""


def _error_text(response):
    """The service's ``error`` field, or the start of whatever it sent instead."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message") or error
    return str(error) if error else (response.text.strip()[:200] or response.reason)


_KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a Bearer token may hold


def check_key(key):
    """The API key as given, stripped; ``None`` when empty. A key an HTTP header cannot carry
    is refused here, in words that do not repeat it (``requests`` would quote it)."""
    key = (key or "").strip()
    if key and not _KEY_CHARACTERS.fullmatch(key):
        raise ClientError("the API key has characters an HTTP header cannot carry "
                          "(spaces, control or non-ASCII characters)")
    return key or None


class _Bearer(AuthBase):
    """``Authorization: Bearer <key>``; its repr does not show the key."""

    def __init__(self, key):
        self.key = key

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.key}"
        return request

    def __repr__(self):
        return "<Bearer ***>"


class Api:
    """The service's HTTP API as this client uses it.

    Every call is one request; a network failure or a refusal becomes one ClientError
    saying what was being done. The key travels in the session's ``Authorization``
    header only and appears in no message.
    """

    def __init__(self, session, server, key=None):
        self.session, self.server, self.key = session, server.rstrip("/"), key
        if key:  # an auth object, not a header: ~/.netrc cannot replace it, and requests
            session.auth = _Bearer(key)  # drops it on a redirect to another host

    def request(self, method, path, doing, **kwargs):
        try:
            return self.session.request(method, f"{self.server}{path}", timeout=REQUEST_TIMEOUT,
                                        **kwargs)
        except requests.RequestException as exc:
            why = "is the service running?" if isinstance(exc, requests.ConnectionError) else exc
            raise ClientError(f"cannot reach {self.server} {doing}: {why}") from None

    def refused(self, response, what, missing=None):
        """The ClientError for an unexpected answer: ``what (status): the service's reason``,
        or for 401 what to do about the key, for 404 ``missing``."""
        status = response.status_code
        if status == 401:
            return ClientError("the service refused this API key" if self.key else
                               "the service needs an API key: pass --key or set UPLOADER_API_KEY")
        if status == 404 and missing:
            return ClientError(missing)
        return ClientError(f"{what} ({status}): {_error_text(response)}")

    @staticmethod
    def json(response, what):
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{what}: the service sent invalid JSON") from None

    def submit(self, urls, callback=None):
        """POST the URLs (and the webhook's address, if any); return the new job's id."""
        body = {"urls": urls}
        if callback:
            body["callback_url"] = callback
        response = self.request("POST", "/v1/images/upload", "to submit the job", json=body)
        if response.status_code != 202:
            raise self.refused(response, "service refused the job")
        return self.job_id(response)

    def job_id(self, response):
        try:
            return response.json()["jobId"]
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"service answered 202 without a jobId: {response.text[:200]!r}") from None

    def retry(self, job_id):
        """POST the retry of a job's failed URLs; return the new job's id."""
        response = self.request("POST", f"{_job_path(job_id)}/retry", f"to retry job {job_id}",
                                json={})
        if response.status_code != 202:
            raise self.refused(response, f"service refused to retry job {job_id}",
                               missing=_no_such_job(job_id))
        return self.job_id(response)

    def cancel(self, job_id):
        """DELETE the job: its queued URLs fail as cancelled. Return its document and how
        many URLs this cancelled (None from a service that does not say)."""
        response = self.request("DELETE", _job_path(job_id), f"to cancel job {job_id}")
        if response.status_code != 200:
            raise self.refused(response, f"service refused to cancel job {job_id}",
                               missing=_no_such_job(job_id))
        job = self.json(response, f"job {job_id}")
        if not isinstance(job, dict):
            raise ClientError(f"job {job_id}: the service sent {response.text[:200]!r}")
        cancelled = response.headers.get("X-Cancelled-Urls", "")
        return job, int(cancelled) if cancelled.isdigit() else None

    def jobs(self, limit=None, before=None):
        """One page of the caller's jobs, newest first: ``{"jobs": [...], "next": cursor}``."""
        params = {name: value for name, value in (("limit", limit), ("before", before))
                  if value is not None}
        response = self.request("GET", "/v1/images/upload", "to list the jobs", params=params)
        if response.status_code != 200:
            raise self.refused(response, "service refused to list the jobs")
        page = self.json(response, "the list of jobs")
        if not isinstance(page, dict) or not isinstance(page.get("jobs"), list):
            raise ClientError(f"the list of jobs: the service sent {response.text[:200]!r}")
        return page

    def delete_image(self, image_id):
        """DELETE an uploaded image: ``None`` once deleted (202: its link is gone from the
        service, which removes the bytes at the host next; an older service answered 204),
        else why not. A 401 raises, as a network failure does: every other image would
        meet the same refusal."""
        response = self.request("DELETE", f"/v1/images/{quote(image_id, safe='')}",
                                f"to delete image {image_id}")
        if response.status_code in (202, 204):
            return None
        if response.status_code == 401:
            raise self.refused(response, "")
        if response.status_code == 404:
            return "no such image (already deleted, or it belongs to another key)"
        return f"service refused ({response.status_code}): {_error_text(response)}"

    def job(self, job_id):
        """GET the job's current state."""
        response = self.request("GET", _job_path(job_id), f"while waiting for job {job_id}")
        if response.status_code != 200:
            raise self.refused(response, f"cannot read job {job_id}", missing=_no_such_job(job_id))
        return self.json(response, f"job {job_id}")


def _job_path(job_id):
    return f"/v1/images/upload/{quote(str(job_id), safe='')}"


def _no_such_job(job_id):
    return f"no such job {job_id} (or it belongs to another key)"
