"""Imgur API v3 client: upload bytes, delete them again, read the rate budgets, refresh the OAuth token.

Every wire answer becomes an ``Uploaded`` or a ``uploader.errors.HostError`` subclass
carrying Imgur's own reason. Imgur's error bodies come in several shapes (classic
``data.error`` envelope, newer ``errors`` list, bare object, HTML from the cache layer),
so they are parsed defensively. Secrets never reach an exception message or a log line.
"""
import email.utils
import html
import logging
import re
import time
from http import HTTPStatus

import requests
from requests.adapters import HTTPAdapter

from uploader.errors import AuthRejectedError, PermanentHostError, RetryableHostError
from uploader.hosts import RateLimitSnapshot, Uploaded

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
    """Uploads images to Imgur as a multipart file part, one call per image."""

    name = "imgur"

    def __init__(self, *, api_url, access_token="", client_id="", timeout_seconds=30.0,
                 session=None, user_agent="image-service/0.1"):
        self.api_url = api_url.rstrip("/")
        self.access_token = access_token
        self.client_id = client_id
        self.timeout_seconds = timeout_seconds
        self.user_agent = user_agent
        if session is None:
            # Worker threads share this session: keep enough pooled connections for all.
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # Read proxy and CA settings from the environment once, not on every upload
            # (requests would otherwise redo that lookup per request: ~7% of a worker's CPU).
            env = session.merge_environment_settings(self.api_url, {}, None, None, None)
            session.proxies, session.verify, session.cert = env["proxies"], env["verify"], env["cert"]
            session.trust_env = False
        self.session = session

    def _auth(self) -> str:
        if self.access_token:
            return f"Bearer {self.access_token}"
        if self.client_id:
            return f"Client-ID {self.client_id}"
        raise _with_rate(AuthRejectedError("Imgur: no access token or client id configured"), None)

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """POST the bytes to /3/image and return the link Imgur chose (never built here)."""
        response = self._post(
            "/3/image", auth=self._auth(),
            files={"image": (filename, data, mime)},
            data={"type": "file", "name": filename},
        )
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

    def refresh_access_token(self, *, refresh_token, client_id, client_secret) -> dict:
        """Trade the refresh token for a new access token, which later uploads then use."""
        response = self._post("/oauth2/token", auth=None, data={
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

    def _post(self, path, *, auth, **kwargs):
        return self._send("POST", path, auth=auth, **kwargs)

    def _send(self, method, path, *, auth, **kwargs):
        """Send one request, turning requests' transport errors into retryable host errors."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        try:
            return self.session.request(method, self.api_url + path, headers=headers,
                                        timeout=self.timeout_seconds, allow_redirects=False,
                                        **kwargs)
        except requests.Timeout:
            message = f"Imgur timed out after {self.timeout_seconds:g} s"
            raise _with_rate(RetryableHostError(message), None) from None
        except requests.RequestException as exc:
            reason = self._scrub(f"{type(exc).__name__}: {exc}")[:_MAX_REASON_CHARS]
            raise _with_rate(RetryableHostError(f"Imgur unreachable: {reason}"), None) from None

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
    raw = (headers.get("Retry-After") or "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            pass
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


def _json_or_none(response):
    try:
        return response.json()
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
