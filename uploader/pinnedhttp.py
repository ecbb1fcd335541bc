"""HTTP over connections pinned to a vetted address: the steps of one hop, and its deadline.

Plain ``http.client`` on a socket we opened ourselves keeps the pinning obvious: no
library between us and the wire resolves names or follows redirects on our behalf.

The steps of a hop are module functions (``parse_target``, ``resolve_checked``,
``connect_pinned``, ``redirect_url``, ``translate_error``) and ``Guard`` is the deadline,
so every outgoing request of the service (``webhook.py`` too) is pinned and judged alike.
"""

import dataclasses
import functools
import heapq
import http.client
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse

from .errors import FetchError, FetchTimeout, InvalidSourceURL, SourceUnreachable
from .netpolicy import normalize_host, parse_ip_literal

log = logging.getLogger(__name__)

_SAFE_URL_CHARS = "!#$%&'()*+,/:;=?@[]~"
# What a misbehaving server or network can make http.client, ssl and sockets raise.
WIRE_ERRORS = (OSError, http.client.HTTPException, ValueError)


def default_resolver(host, port):
    """Resolve ``host`` with the system resolver; return its addresses, duplicates removed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclasses.dataclass(frozen=True)
class Target:
    """One hop's URL, parsed and checked."""

    url: str
    scheme: str
    host: str  # normalised: lower-case ASCII name or canonical IP
    spelled: str  # as the URL wrote it, for refusal messages
    port: int
    host_header: str
    path: str


class Guard:
    """One request's deadline: the watchdog shuts the current socket down when time is up.

    ``close()`` it when the request is over, finished or not."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self._sock = None
        self._lock = threading.Lock()
        self._watchdog = _WATCHDOG
        self._entry = self._watchdog.watch(self)

    def remaining(self):
        """Seconds left for one blocking step (never more than the per-step timeout)."""
        left = self.deadline - time.monotonic()
        if left <= 0 or self.expired:
            raise self.error()
        return min(left, self.timeout)

    def error(self):
        return FetchTimeout(f"timed out after {self.timeout:g} s")

    def attach(self, sock):
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self):
        """Called by the watchdog at the deadline (from its thread)."""
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def close(self):
        self._watchdog.unwatch(self._entry)

    def release(self, sock) -> bool:
        """Stop watching ``sock`` (it outlives this request, kept alive); False if the
        deadline already shut it down."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
            return not self.expired


class _Watchdog:
    """Expires the guards of every download in this process from one thread.

    A guard is an entry ``[deadline, sequence, guard]`` in a heap: registering pushes
    it (O(log n)); unregistering blanks its guard (O(1) amortised). Blanked entries
    leave the heap when they reach the top, or all at once when they are most of it,
    so the heap holds at most about twice the downloads in flight. The thread sleeps
    until the earliest deadline and is woken only by a guard that becomes the new
    earliest one, so with one timeout for every fetch a download costs no thread start
    and no context switch. The thread starts with the first guard; a forked child gets
    a fresh watchdog.
    """

    COMPACT_MIN = 64  # blanked entries tolerated before compaction is considered

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._blanked = 0
        self._sequence = itertools.count()  # ties on deadline never compare guards
        self._thread = None

    def watch(self, guard):
        with self._cond:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
                thread.start()  # it waits for the lock we hold
                self._thread = thread
            entry = [guard.deadline, next(self._sequence), guard]
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # the thread may be sleeping towards a later deadline
                self._cond.notify()
        return entry

    def unwatch(self, entry):
        with self._cond:
            if entry[2] is None:  # already expired: the thread took it off the heap
                return
            entry[2] = None
            self._blanked += 1
            if self._blanked > self.COMPACT_MIN and 2 * self._blanked > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._blanked = 0

    def _due(self):
        """Pop blanked entries at the top and every entry past its deadline; return their guards."""
        due, now, heap = [], time.monotonic(), self._heap
        while heap:
            deadline, _, guard = top = heap[0]
            if guard is not None and deadline > now:
                break
            heapq.heappop(heap)
            if guard is None:
                self._blanked -= 1
            else:
                top[2] = None
                due.append(guard)
        return due

    def _run(self):
        while True:
            with self._cond:
                due = self._due()
                while not due:
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                    due = self._due()
            for guard in due:  # outside the lock: a shutdown may take a moment
                try:
                    guard.expire()
                except Exception:  # never let one socket end the watch over all the others
                    log.exception("fetch watchdog: expiring a download failed")


_WATCHDOG = _Watchdog()


def _new_watchdog_after_fork():
    global _WATCHDOG
    _WATCHDOG = _Watchdog()  # the parent's thread, and perhaps its lock, did not come along


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def _shutdown(sock):
    """Wake any thread blocked on ``sock``; the plain-socket call leaves TLS state alone."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def parse_target(url, policy):
    """Parse and check one hop's URL; refuses bad schemes, hosts and names ``policy`` denies."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidSourceURL(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidSourceURL(f"unsupported URL scheme '{scheme}'" if scheme else "invalid URL: no scheme")
    if parts.hostname is None:
        raise InvalidSourceURL("invalid URL: no host name")
    host = normalize_host(parts.hostname)
    policy.check_host(host)
    default_port = 443 if scheme == "https" else 80
    port = default_port if port is None else port
    if port == 0:
        raise InvalidSourceURL("invalid URL: port 0")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = urllib.parse.quote(parts.path or "/", safe=_SAFE_URL_CHARS)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_SAFE_URL_CHARS)
    return Target(url, scheme, host, parts.hostname, port, host_header, path)


def resolve_checked(target, policy, resolver):
    """Resolve the host once and check every answer: one bad address refuses the host."""
    literal = parse_ip_literal(target.host)
    if literal is not None:
        answers = [literal]
    else:
        try:
            answers = [ipaddress.ip_address(a) for a in resolver(target.host, target.port)]
        except (OSError, UnicodeError, ValueError) as exc:
            log.debug("resolving %s failed: %s", target.host, exc)
            raise SourceUnreachable(f"could not resolve host '{target.host}'") from None
        if not answers:
            raise SourceUnreachable(f"could not resolve host '{target.host}'")
    for ip in answers:
        policy.check_address(ip, target.spelled)
    return answers


def connect_pinned(target, addresses, guard, ca_certs, *, peer="source"):
    """Connect to the first of the checked ``addresses`` that answers, never to the name.

    For https the certificate is verified against the original name, which is also sent
    as SNI. Returns the socket, watched by ``guard``; raises FetchError (``peer`` names the
    other end in the reason).
    """
    last_error = None
    for ip in addresses:
        where = f"[{ip}]:{target.port}" if ip.version == 6 else f"{ip}:{target.port}"
        log.debug("connecting to %s for %s", where, target.url)
        try:
            sock = socket.create_connection((str(ip), target.port), timeout=guard.remaining())
        except ConnectionRefusedError:
            last_error = SourceUnreachable(f"connection refused by {where}")
            continue
        except TimeoutError:
            last_error = guard.error()
            continue
        except OSError as exc:
            last_error = SourceUnreachable(f"could not connect to {where}: {exc.strerror or exc}")
            continue
        guard.attach(sock)
        if target.scheme == "http":
            return sock
        tls = None
        try:
            tls = _tls_context(ca_certs).wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False)
            guard.attach(tls)  # wrapping detached ``sock``; watch the TLS socket instead
            tls.settimeout(guard.remaining())
            tls.do_handshake()
            return tls
        except (FetchError, *WIRE_ERRORS) as exc:
            (tls or sock).close()
            raise translate_error(exc, guard, target, peer=peer) from None
    raise last_error


def redirect_url(from_url, location):
    """The absolute URL a redirect's ``Location`` (as http.client decoded it) points to."""
    try:
        location = location.encode("latin-1").decode("utf-8")  # http.client decodes as latin-1
    except UnicodeError:
        pass
    return urllib.parse.urljoin(from_url, location)


class KeptAlive:
    """Idle connections kept for the next fetch that resolves to the same checked address.

    Keyed by (scheme, host, port, address): a connection is only ever reused for a host
    whose fresh lookup, checked again by the policy, still names the address it is
    connected to, so pinning holds. Saves a connection (and a TLS handshake) per image
    from the same site."""

    MAX_IDLE_SECONDS = 15.0
    MAX_PER_KEY = 16

    def __init__(self):
        self._idle = {}
        self._lock = threading.Lock()

    def take(self, key):
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                since, sock = idle.pop()
                if now - since < self.MAX_IDLE_SECONDS:
                    return sock
                sock.close()
        return None

    def give(self, key, sock) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.MAX_PER_KEY:
                idle.append((time.monotonic(), sock))
                return
        sock.close()


def translate_error(exc, guard, target, *, peer="source"):
    """Turn a network or protocol exception into a FetchError with a human reason.

    ``peer`` names the other end in the reason ("source", "the callback")."""
    if isinstance(exc, FetchError):
        return exc
    if guard.expired or isinstance(exc, TimeoutError):
        return guard.error()
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SourceUnreachable(f"TLS certificate of {target.host} not valid: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return SourceUnreachable(f"TLS handshake with {target.host} failed: {exc.reason or exc}")
    if isinstance(exc, http.client.RemoteDisconnected):
        return SourceUnreachable(f"connection closed by {peer} before it answered")
    if isinstance(exc, ConnectionResetError):
        return SourceUnreachable(f"connection reset by {peer}")
    if isinstance(exc, OSError):
        return SourceUnreachable(f"network error: {exc.strerror or exc}")
    return SourceUnreachable(f"bad HTTP response from {peer}: {type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=None)
def _tls_context(ca_certs):
    """A verifying client context, built once per CA file (loading the bundle takes ~30 ms).

    Without ``ca_certs`` it trusts the bundle ``requests`` uses (certifi) when present, so
    https behaves the same on every machine, else the system store.
    """
    if ca_certs is None:
        try:
            import certifi
            ca_certs = certifi.where()
        except ImportError:
            pass
    return ssl.create_default_context(cafile=ca_certs)
