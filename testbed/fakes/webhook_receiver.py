"""A local webhook receiver, standing in for the client's server that a ``callback_url`` names.

It runs a stdlib ``ThreadingHTTPServer`` in a background thread, records every request
(method, path, headers, body) before it answers, and answers from a script::

    with WebhookReceiver() as receiver:
        receiver.answer(500, 503, 200)          # the next three requests, in order
        receiver.answer(Answer(307, location="/moved"))
        receiver.answer(Answer(200, delay=5))   # a slow receiver
        receiver.answer(Answer(hang_up="reset"))  # drop the connection without an answer

When the script is used up, every request gets ``default`` (``Answer(200)``). ``delay``
on the receiver slows every answer; ``hold()`` keeps every answer back until
``release()``, and ``most_at_once`` says how many requests it ever had at once. Waits
end at once when the receiver stops, so a test never waits out a slow answer it has
already given up on.
"""

import collections
import dataclasses
import http.server
import logging
import socket
import struct
import threading
from typing import Optional, Tuple, Union

from .server import LoopbackServer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Answer:
    """How to answer one request.

    ``location`` is sent as the Location header (for redirects); ``delay`` seconds pass
    before anything is sent; ``hang_up`` drops the connection instead of answering:
    ``"close"`` closes it cleanly, ``"reset"`` resets it (TCP RST).
    """

    status: int = 200
    location: Optional[str] = None
    delay: float = 0.0
    body: bytes = b""
    hang_up: Optional[str] = None

    def __post_init__(self):
        if self.hang_up not in (None, "close", "reset"):
            raise ValueError(f"hang_up must be None, 'close' or 'reset', not {self.hang_up!r}")


@dataclasses.dataclass(frozen=True)
class Request:
    """One request received: method, path with query, headers in the order sent, body."""

    method: str
    path: str
    headers: Tuple[Tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name`` (any case), None when absent; fails if it came twice."""
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"header {name} sent {len(values)} times"
        return values[0] if values else None

    @property
    def header_names(self) -> Tuple[str, ...]:
        return tuple(key for key, _ in self.headers)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        log.debug("webhook receiver: error answering %s", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    receiver = None  # set on a per-server subclass

    def _handle(self):
        try:
            self.receiver._answer(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, fmt, *args):
        log.debug("webhook receiver: " + fmt, *args)


class WebhookReceiver(LoopbackServer):
    """A local HTTP(S) webhook endpoint; see the module docstring."""

    handler, handler_attribute, server_base = _Handler, "receiver", _Server
    thread_name = "webhook-receiver"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context=None):
        super().__init__(host, port, ssl_context=ssl_context)
        self.default = Answer(200)
        self.delay = 0.0
        self._script = collections.deque()
        self._log = []
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared: answers are held back
        self._open.set()
        self._at_once = 0
        self.most_at_once = 0  # requests received and not yet answered, at most

    def hold(self) -> None:
        """Answer nothing from now on until ``release()`` (or the receiver stops)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def answer(self, *answers: Union[int, Answer]) -> None:
        """Queue answers for the next requests: a status, or an ``Answer``."""
        with self._lock:
            self._script.extend(a if isinstance(a, Answer) else Answer(int(a)) for a in answers)

    @property
    def requests(self):
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._log)

    def clear(self) -> None:
        with self._lock:
            self._log.clear()
            self._script.clear()

    # --- answering

    def _answer(self, h):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self._log.append(Request(h.command, h.path, tuple(h.headers.items()), body))
            answer = self._script.popleft() if self._script else self.default
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
        try:
            self._answer_with(h, answer)
        finally:
            with self._lock:
                self._at_once -= 1

    def _answer_with(self, h, answer):
        while not self._open.wait(0.05):  # held back
            if self._stopping.is_set():
                h.close_connection = True
                return
        wait = self.delay + answer.delay
        if wait and self._stopping.wait(wait):
            h.close_connection = True
            return
        if answer.hang_up == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()  # the real close, with its RST, comes once rfile/wfile are closed
            h.close_connection = True
            return
        if answer.hang_up == "close":
            h.close_connection = True
            return
        h.send_response(answer.status)
        if answer.location is not None:
            h.send_header("Location", answer.location)
        if answer.status not in (204, 304):
            h.send_header("Content-Type", "text/plain; charset=utf-8")
            h.send_header("Content-Length", str(len(answer.body)))
        h.end_headers()
        if answer.status not in (204, 304) and answer.body:
            h.wfile.write(answer.body)
