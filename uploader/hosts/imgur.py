"""Imgur API v3 client: upload bytes, delete them again, read the rate budgets, refresh the OAuth token.

Every wire answer becomes an ``Uploaded`` or a ``uploader.errors.HostError`` subclass
carrying Imgur's own reason. Imgur's error bodies come in several shapes (classic
``data.error`` envelope, newer ``errors`` list, bare object, HTML from the cache layer),
so they are parsed defensively. Secrets never reach an exception message or a log line.
"""
import html
import itertools
import json
import logging
import re
import secrets
import time
import urllib.parse
from http import HTTPStatus

import requests
import urllib3

from uploader.errors import AuthRejectedError, PermanentHostError, RetryableHostError
from uploader.hosts import RateLimitSnapshot, Uploaded, retry_after_seconds

log = logging.getLogger(__name__)

# Snapshot field -> response header. Limits and remainings are ints, resets seconds.
_RATE_HEADERS = {
    "user_limit": "X-RateLimit-UserLimit",
    "user_remaining": "X-RateLimit-UserRemaining",
    "user_reset": "X-RateLimit-UserReset",
    "client_limit": "X-RateLimit-ClientLimit",
    "client_remaining": "X-RateLimit-ClientRemaining",
    "client_reset": "X-RateLimit-ClientReset",
    "post_limit": "X-Post-Rate-Limit-Limit",
    "post_remaining": "X-Post-Rate-Limit-Remaining",
    "post_reset": "X-Post-Rate-Limit-Reset",
}
_UNIX_TIME_FLOOR = 10**9  # a reset above this is a unix time, below it is seconds
UPLOAD_CREDITS = {"user": 10, "client": 10, "post": 1}  # what one upload costs, by budget
_MAX_RESET_AS_RETRY_AFTER = 3600.0  # a 429 without Retry-After waits out a reset this short
_CREDENTIAL_HINTS = ("access token", "invalid client_id", "authentication required")
_MAX_REASON_CHARS = 200


class ImgurHost:
    """Uploads images to Imgur as a multipart file part, one call per image.

    Requests go through a pooled ``urllib3`` connection per thread in flight: the upload is
    a worker's hottest path, and requests' own layers (settings merged per request, cookie
    jars, hooks, a Response built around the answer) cost about a third of a worker's CPU.
    Given a ``requests`` session instead (the unit tests do, with requests-mock), the same
    calls go through it."""

    name = "imgur"
    label = "Imgur"

    def __init__(self, *, api_url, access_token="", client_id="", timeout_seconds=30.0,
                 session=None, user_agent="image-service/0.1", pool_size=32):
        self.api_url = api_url.rstrip("/")
        self.access_token = access_token
        self.client_id = client_id
        self.timeout_seconds = timeout_seconds
        self.user_agent = user_agent
        self.session = session
        self.pool = None if session is not None else _pool_for(self.api_url, pool_size)
        self._upload_url = self.api_url + "/3/image"

    def _auth(self) -> str:
        if self.access_token:
            return f"Bearer {self.access_token}"
        if self.client_id:
            return f"Client-ID {self.client_id}"
        raise _with_rate(AuthRejectedError("Imgur: no access token or client id configured"), None)

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """POST the bytes to /3/image and return the link Imgur chose (never built here).

        The multipart body is built here and the request prepared by hand: requests'
        own encoding (a fresh random boundary from os.urandom per upload) and its
        per-request merging of settings cost a worker a third of its CPU."""
        content_type, body = multipart(data, filename=filename, mime=mime,
                                       fields={"type": "file", "name": filename})
        response = self._send("POST", "/3/image", auth=self._auth(), body=body,
                              content_type=content_type)
        rate = parse_rate_limits(response.headers)
        body = _json_or_none(response)
        if 200 <= response.status_code < 300:
            link = _dig(body, "data", "link")
            if isinstance(link, str) and link:
                log.debug("Imgur stored %s (%d bytes) at %s", filename, len(data), link)
                deletehash = _dig(body, "data", "deletehash")
                if not isinstance(deletehash, str):
                    deletehash = None
                return Uploaded(link=link, deletehash=deletehash, rate=rate)
            body_status = body.get("status") if isinstance(body, dict) else None
            if isinstance(body_status, int) and body_status >= 400 and body.get("success") is False:
                # The body's status can differ from the HTTP status: trust the failure it reports.
                raise _with_rate(self._classify(body_status, response, body, rate), rate)
            raise _with_rate(RetryableHostError("Imgur answered without a link"), rate)
        raise _with_rate(self._classify(response.status_code, response, body, rate), rate)

    def delete(self, deletehash: str) -> bool:
        """DELETE /3/image/{deletehash}: True once Imgur has removed it, False when Imgur
        does not know it (gone already); a ``HostError`` otherwise."""
        response = self._send("DELETE", f"/3/image/{deletehash}", auth=self._auth())
        body = _json_or_none(response)
        if 200 <= response.status_code < 300:
            return True
        if response.status_code == 404:
            return False
        raise _with_rate(self._classify(response.status_code, response, body,
                                        parse_rate_limits(response.headers)), None)

    def credits(self) -> dict:
        """GET /3/credits: what is left of the user and client budgets (and, from the
        answer's headers, of any other), spending none; as the gate takes them."""
        response = self._send("GET", "/3/credits", auth=self._auth())
        body = _json_or_none(response)
        if not 200 <= response.status_code < 300 or not isinstance(body, dict):
            raise _with_rate(self._classify(response.status_code, response, body, None), None)
        known = {key: value for key, value in vars(parse_rate_limits(response.headers)).items()
                 if value is not None}
        data = body.get("data") if isinstance(body.get("data"), dict) else body
        for name, prefix in (("user", "User"), ("client", "Client")):
            remaining, reset = data.get(f"{prefix}Remaining"), data.get(f"{prefix}Reset")
            if isinstance(remaining, (int, float)) and not isinstance(remaining, bool):
                known[f"{name}_remaining"] = remaining
                if isinstance(reset, (int, float)) and not isinstance(reset, bool):
                    known[f"{name}_reset"] = max(0.0, reset - time.time()) \
                        if reset > _UNIX_TIME_FLOOR else float(reset)
        return known

    def refresh_access_token(self, *, refresh_token, client_id, client_secret) -> dict:
        """Trade the refresh token for a new access token, which later uploads then use."""
        response = self._send("POST", "/oauth2/token", auth=None, form={
            "refresh_token": refresh_token, "client_id": client_id,
            "client_secret": client_secret, "grant_type": "refresh_token",
        })
        body = _json_or_none(response)
        status = response.status_code
        if status in (400, 401, 403):
            reason = self._scrub(_reason(response, body), refresh_token, client_secret)
            raise _with_rate(AuthRejectedError(
                f"Imgur refused the refresh token: {reason} (HTTP {status})"), None)
        if not 200 <= status < 300:
            raise _with_rate(self._classify(status, response, body, None,
                                            secrets=(refresh_token, client_secret)), None)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise _with_rate(RetryableHostError(
                "Imgur answered the token refresh without an access token"), None)
        self.access_token = token
        log.info("Imgur access token refreshed (expires in %s s)", body.get("expires_in"))
        return body

    def _send(self, method, path, *, auth, body=None, content_type=None, form=None):
        """One request; requests' and urllib3's transport errors become retryable host
        errors. ``form``: fields sent urlencoded."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        if form is not None:
            body, content_type = urllib.parse.urlencode(form), "application/x-www-form-urlencoded"
        if content_type:
            headers["Content-Type"] = content_type
        url = self.api_url + path
        try:
            if self.session is not None:
                answer = self.session.request(method, url, headers=headers, data=body,
                                              timeout=self.timeout_seconds, allow_redirects=False)
                return _Answer(answer.status_code, answer.headers, answer.content, answer.reason)
            answer = self.pool.request(method, url, headers=headers, body=body,
                                       timeout=urllib3.Timeout(total=self.timeout_seconds),
                                       redirect=False, retries=False)
            return _Answer(answer.status, answer.headers, answer.data, answer.reason)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if (isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError))
                    and not isinstance(exc, urllib3.exceptions.NewConnectionError)):  # (urllib3
                message = f"Imgur timed out after {self.timeout_seconds:g} s"  # calls it one)
            else:
                reason = self._scrub(f"{type(exc).__name__}: {exc}")[:_MAX_REASON_CHARS]
                message = f"Imgur unreachable: {reason}"
            raise _with_rate(RetryableHostError(message), None) from None

    def _classify(self, status, response, body, rate, *, secrets=()):
        """Map a failed answer to retryable, auth or permanent, with Imgur's reason."""
        if 300 <= status < 400:
            return RetryableHostError(f"Imgur: unexpected redirect (HTTP {status})")
        reason = self._scrub(_reason(response, body), *secrets)
        message = f"Imgur: {reason} (HTTP {status})"
        low = reason.lower()
        retry_after = _retry_after(response.headers, status, rate)
        if status == 429 or "over capacity" in low or (status == 400 and "too fast" in low):
            return RetryableHostError(message, retry_after=retry_after, pool_wide=True)
        if status >= 500:
            return RetryableHostError(message, retry_after=retry_after)
        if status == 401 or (status == 403 and any(hint in low for hint in _CREDENTIAL_HINTS)):
            return AuthRejectedError(message)
        return PermanentHostError(message)

    def _scrub(self, text, *extra_secrets):
        """Blank out any secret a server (or a library message) might echo back."""
        for secret in (self.access_token, self.client_id, *extra_secrets):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


_BOUNDARY_PREFIX = "image-service-" + secrets.token_hex(12)  # random once per process
_boundaries = itertools.count()


def multipart(data: bytes, *, filename: str, mime: str, fields: dict) -> tuple:
    """(content type, body) of a multipart/form-data upload: the text ``fields``, then the
    bytes as the file part ``image``. Boundaries are a per-process random prefix and a
    counter (never found in the data: checked)."""
    while True:
        boundary = f"{_BOUNDARY_PREFIX}-{next(_boundaries):x}".encode()
        if boundary not in data:
            break
    parts = [b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
             % (boundary, _quoted(name), value.encode()) for name, value in fields.items()]
    parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"%s\"\r\n"
                 b"Content-Type: %s\r\n\r\n" % (boundary, _quoted(filename), mime.encode()))
    parts += [data, b"\r\n--%s--\r\n" % boundary]
    return "multipart/form-data; boundary=" + boundary.decode(), b"".join(parts)


def _quoted(text: str) -> bytes:
    """A name or filename fit for a quoted header parameter (as browsers escape them)."""
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace(
        "\n", "%0A").encode()


def parse_rate_limits(headers) -> RateLimitSnapshot:
    """Read the X-RateLimit-* and X-Post-Rate-Limit-* headers; garbled ones become None."""
    values = {}
    for field, header in _RATE_HEADERS.items():
        raw = headers.get(header)
        try:
            number = float(str(raw).strip())
        except (TypeError, ValueError):
            values[field] = None
            continue
        if number != number or number in (float("inf"), float("-inf")):
            values[field] = None
        elif field.endswith("_reset"):
            if number > _UNIX_TIME_FLOOR:
                number = number - time.time()
            values[field] = max(0.0, number)
        else:
            values[field] = int(number)
    return RateLimitSnapshot(**values)


def _retry_after(headers, status, rate):
    """Seconds to wait: Retry-After (seconds or HTTP date), else a short reset on a 429."""
    asked = retry_after_seconds(headers.get("Retry-After"))
    if asked is not None:
        return asked
    if status != 429 or rate is None:
        return None
    # Wait for every budget too small for one more upload; a long (daily) reset is no retry hint.
    budgets = [(getattr(rate, f"{name}_remaining"), getattr(rate, f"{name}_reset"), cost)
               for name, cost in UPLOAD_CREDITS.items()]
    resets = [reset for remaining, reset, cost in budgets
              if remaining is not None and remaining < cost and reset is not None]
    if resets and max(resets) <= _MAX_RESET_AS_RETRY_AFTER:
        return max(resets)
    return None


def _reason(response, body):
    """The most human reason string in an error answer, whatever its envelope."""
    reason = _reason_from_json(body)
    if not reason:
        text = response.text or ""
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        # A cache-layer HTML page says the most in its title; otherwise keep the text.
        reason = html.unescape(title.group(1) if title else re.sub(r"<[^>]*>", " ", text))
    reason = " ".join(str(reason or "").split())
    if not reason:
        try:
            reason = response.reason or HTTPStatus(response.status_code).phrase
        except ValueError:
            reason = "no reason given"
    return reason[:_MAX_REASON_CHARS]


def _reason_from_json(body):
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if isinstance(data, dict) and data.get("error"):  # classic envelope
        error = data["error"]
        return _first(error, "message", "detail", "code") if isinstance(error, dict) else error
    errors = body.get("errors")  # newer envelope
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return _first(errors[0], "detail", "message", "status", "code")
    # Bare object, or an OAuth-style error.
    return _first(body, "detail", "error_description", "message", "error") or (
        data if isinstance(data, str) else None)


def _first(mapping, *keys):
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            return value
    return None


class _Answer:
    """What a request answered, whichever way it was sent."""

    def __init__(self, status_code, headers, content, reason):
        self.status_code, self.headers, self.content, self.reason = (
            status_code, headers, content or b"", reason)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def _pool_for(api_url: str, size: int):
    """A pool of connections to Imgur, through the proxy the environment names (if any)."""
    proxy = requests.utils.get_environ_proxies(api_url).get(urllib.parse.urlsplit(api_url).scheme)
    if proxy:
        return urllib3.ProxyManager(proxy, maxsize=size, block=False)
    return urllib3.PoolManager(maxsize=size, block=False)


def _json_or_none(response):
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _dig(body, *keys):
    for key in keys:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _with_rate(exc, rate):
    """Attach the answer's budgets to an error so callers can pace themselves on failures too."""
    exc.rate = rate
    return exc
