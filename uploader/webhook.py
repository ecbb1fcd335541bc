"""One attempt at a webhook: POST a job's JSON document to the ``callback_url`` a client gave.

    delivery queue (retries, storage: elsewhere)
        | send(url, body, delivery_id=..., event=...)               -> Outcome
        v
    WebhookSender: sign once -> for each hop: parse URL -> check host name -> resolve ONCE
        -> check every address -> connect to a checked address (original Host header; for
        https the certificate checked against the original name, sent as SNI) -> POST
        -> 2xx: delivered | 307/308: next hop, same body and headers | anything else: failed

The hop's steps and the address policy are the fetcher's (``pinnedhttp.parse_target``,
``resolve_checked``, ``connect_pinned``, ``netpolicy.AddressPolicy``), so a callback reaches
no further into the network than an image source: a refused hop sends nothing, not even a
TCP connect. One deadline covers the whole attempt, redirects included; the answer's body
is read up to ``ANSWER_CAP`` bytes and thrown away.

The wire contract, which clients are written against::

    POST <path> HTTP/1.1
    Content-Type: application/json
    User-Agent: image-service/<version>
    X-Uploader-Event: job.completed
    X-Uploader-Delivery: <the caller's delivery id, the same on every retry>
    X-Uploader-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed with the secret>

The signature header is sent only when a secret is configured; ``verify`` is what a
receiver does with it. The secret is never logged nor put in an error.
"""

import dataclasses
import hashlib
import hmac
import http.client
import logging
import random
import re
import time
import urllib.parse
from typing import Callable, Iterable, List, Optional, Protocol, Sequence, Tuple

from . import __version__
from .errors import FetchError, InvalidSourceURL, SourceRefused
from .netpolicy import AddressPolicy
from .pinnedhttp import (WIRE_ERRORS, Guard, Target, connect_pinned, default_resolver, parse_target,
                         redirect_url, resolve_checked, translate_error)

log = logging.getLogger(__name__)

USER_AGENT = f"image-service/{__version__}"
FOLLOWED_REDIRECTS = frozenset({307, 308})  # the only ones that keep the method and body
UNFOLLOWED_REDIRECTS = frozenset({301, 302, 303})  # clients turn these into a GET
ANSWER_CAP = 64 * 1024  # bytes of the answer's body read (and thrown away)
SIGNATURE_HEADER = "X-Uploader-Signature"
_PEER = "the callback"  # the other end, in connection failure reasons
_TOKEN = re.compile(r"[!-~]{1,200}")  # a header value we accept from the caller: visible ASCII
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_MAC = re.compile(r"[0-9a-fA-F]{64}")

Resolver = Callable[[str, int], Sequence[str]]


class _UniformSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to.

    ``status`` is the HTTP status of the answer that decided it (None when no answer
    did: a refusal, a timeout, a connection failure). ``refused`` means the URL or the
    address policy refused a hop before anything was sent to it; trying again cannot help.
    ``error`` is None when delivered, else why not, in words fit for the job document.
    """

    delivered: bool
    status: Optional[int]
    error: Optional[str]
    refused: bool = False


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


class WebhookSender:
    """Sends one webhook attempt at a time, never to a refused network address.

    Thread-safe: a send keeps its state in locals; the instance holds configuration only.
    """

    def __init__(self, *, timeout_seconds: float = 10.0, max_redirects: int = 5,
                 allow_private_networks: bool = False, private_hosts_allowed: Iterable[str] = (),
                 only_hosts: Iterable[str] = (), denied_hosts: Iterable[str] = (), secret: str = "",
                 resolver: Optional[Resolver] = None, ca_certs: Optional[str] = None):
        if not isinstance(secret, str):
            raise TypeError("the webhook secret must be a string")
        self.timeout_seconds = float(timeout_seconds)
        self.max_redirects = int(max_redirects)
        if not self.timeout_seconds > 0 or self.max_redirects < 0:
            raise ValueError("timeout_seconds must be above 0 and max_redirects at least 0")
        self.policy = AddressPolicy(allow_private_networks, private_hosts_allowed=private_hosts_allowed,
                                    only_hosts=only_hosts, denied_hosts=denied_hosts)
        self.resolver = resolver or default_resolver
        self.ca_certs = ca_certs
        self._secret = secret

    def __repr__(self) -> str:
        return (f"WebhookSender(timeout_seconds={self.timeout_seconds:g}, "
                f"max_redirects={self.max_redirects}, signed={bool(self._secret)})")

    def send(self, url: str, body: bytes, *, delivery_id: str, event: str = "job.completed") -> Outcome:
        """POST ``body`` to ``url`` once (following 307 and 308) and say how it went.

        Never raises for a network problem, a refusal or a bad answer: that is an Outcome.
        Raises ValueError or TypeError for a bad argument (the caller's bug).
        """
        if not isinstance(body, (bytes, bytearray)):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        for name, value in (("delivery_id", delivery_id), ("event", event)):
            if not isinstance(value, str) or not _TOKEN.fullmatch(value):
                raise ValueError(f"{name} must be 1 to 200 visible ASCII characters, got {value!r}")
        headers = self._headers(bytes(body), delivery_id, event)
        guard = Guard(self.timeout_seconds)
        try:
            outcome = self._deliver(url, bytes(body), headers, guard)
        finally:
            guard.close()
        if outcome.delivered:
            log.debug("webhook %s (%s) to %s delivered: HTTP %s", delivery_id, event, _origin(url),
                      outcome.status)
        else:
            log.info("webhook %s (%s) to %s not delivered: %s", delivery_id, event, _origin(url),
                     outcome.error)
        return outcome

    def _headers(self, body: bytes, delivery_id: str, event: str) -> List[Tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("User-Agent", USER_AGENT), ("X-Uploader-Event", event),
                   ("X-Uploader-Delivery", delivery_id)]
        if self._secret:
            headers.append((SIGNATURE_HEADER, sign(self._secret, int(time.time()), body)))
        headers.append(("Connection", "close"))
        return headers

    def _deliver(self, url: str, body: bytes, headers: List[Tuple[str, str]], guard: Guard) -> Outcome:
        for _hop in range(self.max_redirects + 1):
            try:
                target = parse_target(url, self.policy)
                addresses = resolve_checked(target, self.policy, self.resolver)
            except (SourceRefused, InvalidSourceURL) as exc:
                return Outcome(False, None, str(exc), refused=True)
            except FetchError as exc:  # the name did not resolve
                return Outcome(False, None, str(exc))
            try:
                status, location = self._post(target, addresses, body, headers, guard)
            except FetchError as exc:
                return Outcome(False, None, str(exc))
            if 200 <= status < 300:
                return Outcome(True, status, None)
            if status in UNFOLLOWED_REDIRECTS:
                return Outcome(False, status,
                               f"redirected with {status}; a webhook follows only 307 and 308")
            if status not in FOLLOWED_REDIRECTS:
                return Outcome(False, status, f"HTTP {status} from {_PEER}")
            if not location:
                return Outcome(False, status, f"HTTP {status} from {_PEER} without a Location header")
            url = redirect_url(target.url, location)
            log.debug("webhook redirected with %s to %s", status, _origin(url))
        return Outcome(False, status, f"too many redirects (more than {self.max_redirects})")

    def _post(self, target: Target, addresses, body: bytes, headers: List[Tuple[str, str]],
              guard: Guard) -> Tuple[int, Optional[str]]:
        """POST to a checked address; return the status and Location. Raises FetchError."""
        sock = connect_pinned(target, addresses, guard, self.ca_certs, peer=_PEER)
        conn = http.client.HTTPConnection(target.host, target.port)  # never connects: we give it a socket
        conn.sock = sock
        try:
            conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", target.host_header)
            for name, value in headers:
                conn.putheader(name, value)
            sock.settimeout(guard.remaining())
            conn.endheaders(body)
            sock.settimeout(guard.remaining())
            response = conn.getresponse()
            if guard.expired:  # the watchdog's shutdown ends a head still arriving like a whole one
                response.close()
                raise guard.error()
            try:
                _discard_body(response, sock, guard)
                return response.status, response.getheader("Location")
            finally:
                response.close()
        except (FetchError, *WIRE_ERRORS) as exc:
            raise translate_error(exc, guard, target, peer=_PEER) from None
        finally:
            conn.close()
            sock.close()


def _discard_body(response: http.client.HTTPResponse, sock, guard: Guard) -> None:
    """Read up to ``ANSWER_CAP`` bytes of the answer within the deadline, and drop them.

    The status line has decided the outcome already: a body cut short, reset or still
    arriving at the deadline changes nothing (the receiver has said what it did).
    """
    left = ANSWER_CAP
    try:
        while left > 0:
            sock.settimeout(guard.remaining())
            chunk = response.read1(left)
            if not chunk or guard.expired:
                return
            left -= len(chunk)
    except (FetchError, *WIRE_ERRORS) as exc:
        log.debug("reading the callback's answer stopped: %s", exc)


def _origin(url: str) -> str:
    """Scheme, host and port of ``url`` for logs: a callback's path or query may hold a token."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    except ValueError:
        return "(an unparsable URL)"
