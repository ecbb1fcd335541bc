"""Webhooks: what a job's ``callback_url`` is sent, and the helpers around sending it.

This first part holds the pure helpers: the signature (``sign``, and ``verify``, what a
receiver does), the wait between attempts (``backoff_seconds``) and the check of a client's
callback URL (``callback_url_problem``). The signature header is::

    X-Uploader-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed with the secret>
"""

import hashlib
import hmac
import random
import re
import time
import urllib.parse
from typing import Optional, Protocol

from .errors import FetchError
from .netpolicy import normalize_host
from .submission import url_problem

SIGNATURE_HEADER = "X-Uploader-Signature"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_MAC = re.compile(r"[0-9a-fA-F]{64}")


class _UniformSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``t=<timestamp>,v1=<hex HMAC-SHA256("<t>." + body)>``."""
    if not secret:
        raise ValueError("a signature needs a non-empty secret")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("the timestamp must be whole non-negative Unix seconds")
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, tolerance_seconds: float = 300,
           now: Optional[float] = None) -> bool:
    """True if ``header`` (an ``X-Uploader-Signature`` value) signs ``body`` with ``secret``
    and its time is within ``tolerance_seconds`` of ``now`` (default: the clock), either way.

    This is what a receiver does. Several ``v1=`` entries are allowed (any may match);
    entries of other names are ignored; anything malformed is simply not valid.
    """
    if not secret:
        raise ValueError("verifying a signature needs a non-empty secret")
    if not isinstance(header, str):
        return False
    timestamp, macs = None, []
    for item in header.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals:
            return False
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            if not _MAC.fullmatch(value):
                return False
            macs.append(value.lower())
    if timestamp is None or not macs:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_seconds:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, mac) for mac in macs)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), b"%d." % timestamp + bytes(body), hashlib.sha256).hexdigest()


def backoff_seconds(attempt: int, *, base: float, maximum: float,
                    rng: _UniformSource = random) -> float:
    """How long to wait before retry number ``attempt`` (1 for the first retry): exponential
    with full jitter, ``uniform(0, min(maximum, base * 2 ** (attempt - 1)))``."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if base < 0 or maximum < 0:
        raise ValueError("base and maximum must not be negative")
    ceiling = min(maximum, base * 2.0 ** min(attempt - 1, 1023))  # 2.0 ** 1024 would overflow
    return rng.uniform(0.0, ceiling)


def callback_url_problem(url: object) -> str:
    """Why ``url`` is not acceptable as a callback URL, or '' when it is.

    The rules of a job's image URLs (``submission.url_problem``: a string, an absolute
    http or https URL with a host, at most 2,048 characters, no spaces or control
    characters, no user:password@), and a host that can be a host at all. Addresses are
    judged when the callback is sent, not here.
    """
    problem = url_problem(url)
    if problem:
        return problem
    try:
        normalize_host(urllib.parse.urlsplit(url).hostname)
    except FetchError as exc:
        shown = url if len(url) <= 100 else url[:100] + "..."
        return f'"{shown}" has an invalid host: {exc}'
    return ""
