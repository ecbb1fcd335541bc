"""A fake Imgur API v3 server that speaks the wire protocol, for tests and offline runs.

It runs a stdlib ``ThreadingHTTPServer`` in a background thread, in-process in a test
(``with FakeImgur() as imgur: ... imgur.url``) or standalone (``bin/fake-imgur``).
It can be told at run time to be slow (``latency``), to fail (``fail_next``,
``fail_always``), to run out of rate-limit budget (``set_budgets``) and to expire
tokens (``expire_token``); it records every upload request it answered. With
``keep_images=False`` it answers uploads as usual but keeps no bytes (benchmarks).

    POST /3/image, /3/upload (.json)  -> auth, budgets, sniff bytes, store, answer JSON
    DELETE /3/image/{deletehash}      -> auth, forget the image (its link then 404s)
    POST /oauth2/token                -> new access token (answer not wrapped in data)
    GET  /3/credits                   -> the budgets as JSON
    GET  /{id}.{ext}                  -> the stored bytes, so links open in a browser
"""
import argparse
import base64
import hashlib
import http
import json
import logging
import math
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .server import RequestHeaders

log = logging.getLogger(__name__)

UPLOAD_PATHS = {"/3/image", "/3/upload", "/3/image.json", "/3/upload.json"}
UPLOAD_COST = 10  # credits per upload, from user and client budgets
NEW_ENVELOPE_TYPE = "application/vnd.imgur.v1+json"
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Magic number -> (mime, extension). WebP is sniffed only to be rejected, as Imgur does.
_MAGIC = [(b"\xff\xd8\xff", "image/jpeg", "jpg"), (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
          (b"GIF87a", "image/gif", "gif"), (b"GIF89a", "image/gif", "gif"),
          (b"II*\x00", "image/tiff", "tiff"), (b"MM\x00*", "image/tiff", "tiff"),
          (b"BM", "image/bmp", "bmp")]
VARNISH_PAGE = """<!DOCTYPE html>
<html><head><title>{status} {reason}</title></head>
<body><h1>Error {status} {reason}</h1><p>{reason}</p>
<h3>Guru Meditation:</h3><p>XID: 1234567890</p><hr><p>Varnish cache server</p></body></html>
"""


@dataclass(frozen=True)
class UploadRecord:
    """One upload request as the fake answered it (no secrets, only the auth kind)."""

    at: float  # time.monotonic() when the request arrived
    path: str
    auth: str  # "bearer", "client-id", "none" or "other"
    sha256: Optional[str]
    size: int
    status: int
    image_id: Optional[str] = None
    answered: float = 0.0  # time.monotonic() when the answer was ready


@dataclass(frozen=True)
class DeleteRecord:
    """One DELETE /3/image/{deletehash} request and the status it got."""

    at: float
    deletehash: str
    auth: str
    status: int


@dataclass(frozen=True)
class RefreshRecord:
    """One POST /oauth2/token request and the status it got."""

    at: float
    status: int


@dataclass
class _Budget:
    """A credit budget that refills to ``limit`` every ``period`` seconds of real time."""

    limit: int
    remaining: int
    period: float
    deadline: float = 0.0

    def __post_init__(self):
        self.deadline = time.monotonic() + self.period

    def tick(self, now):
        if now >= self.deadline:
            self.remaining = self.limit
            self.deadline = now + self.period

    def reset_seconds(self, now):
        return max(0, math.ceil(self.deadline - now))


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple = ()


def classic_error(status, error, request="/3/image", method="POST"):
    """Imgur's classic envelope; ``error`` is a string or a ``{"code","message"}`` object."""
    return {"data": {"error": error, "request": request, "method": method},
            "success": False, "status": status}


def new_error(status, detail):
    """The newer ``{"errors": [...]}`` envelope seen in 2024-25."""
    return {"errors": [{"id": f"legacy-api-{secrets.token_hex(8)}", "code": str(status),
                        "status": _phrase(status), "detail": detail}]}


def error_answer(status, reason=None, *, envelope="classic", headers=None, request="/3/image"):
    """A failure answer; ``reason`` is a string (wrapped), a dict or list (as JSON) or bytes."""
    reason = _phrase(status) if reason is None else reason
    content_type = "text/html; charset=utf-8" if envelope == "html" else "application/json"
    if isinstance(reason, bytes):
        body = reason
    elif isinstance(reason, (dict, list)):
        body = json.dumps(reason).encode()
    elif envelope == "html":
        body = VARNISH_PAGE.format(status=status, reason=reason).encode()
    elif envelope == "new":
        body, content_type = json.dumps(new_error(status, reason)).encode(), NEW_ENVELOPE_TYPE
    elif envelope == "bare":
        body = json.dumps({"id": secrets.token_hex(8), "code": status, "detail": reason,
                           "status": _phrase(status)}).encode()
    else:
        body = json.dumps(classic_error(status, reason, request)).encode()
    headers = dict(headers or {})
    content_type = headers.pop("Content-Type", content_type)
    return _Answer(status, body, content_type, tuple(headers.items()))


class FakeImgur:
    """An in-process fake of api.imgur.com; every control method is thread-safe."""

    def __init__(self, *, host="127.0.0.1", port=0, access_tokens=("test-token",),
                 client_ids=("test-client",), refresh_tokens=("test-refresh",),
                 client_secret="test-secret", public_base="https://i.imgur.example",
                 max_bytes=10 * 1024 * 1024, keep_images=True):
        self.host, self.port = host, port
        # False: uploads are checked and answered with a link, but their bytes are dropped
        # (``stored`` stays empty, links 404): a benchmark pushing GBs must not hold them.
        self.keep_images = keep_images
        self.client_ids = set(client_ids)
        self.refresh_tokens = set(refresh_tokens)
        self.client_secret = client_secret
        self.public_base = public_base  # None: this server's own url
        self.max_bytes = max_bytes
        self.latency = 0.0
        self.file_type_error = "string"  # or "object": 415 {"code":1003,"message":...}
        self._lock = threading.Lock()
        self._tokens = set(access_tokens)
        self._forced = []
        self._always = None
        self._requests = []
        self.refresh_requests = []
        self.deletes = []  # DeleteRecord of every DELETE answered
        self.credits_requests = 0  # GET /3/credits answered
        self._deletehashes = {}  # deletehash -> image id
        self._delete_failures = []
        self.stored = {}
        self._mimes = {}
        self._budgets = {"user": _Budget(500, 500, 3600), "client": _Budget(12500, 12500, 86400),
                         "post": _Budget(1250, 1250, 3600)}
        self._server = self._thread = None
        self._connections = set()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        """Bind (port 0 picks a free port) and serve in a daemon thread; returns self."""
        self._server = _Server((self.host, self.port), _Handler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        # A short poll interval makes stop() quick: tests start and stop many fakes.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        name="fake-imgur", daemon=True)
        self._thread.start()
        log.debug("Fake Imgur listening on %s", self.url)
        return self

    def stop(self):
        """Stop serving and drop open keep-alive connections, so a stopped fake is unreachable."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def url(self):
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    # -- run-time controls ---------------------------------------------------------------
    def fail_next(self, n=1, status=500, body=None, headers=None, envelope="classic"):
        """Answer the next ``n`` uploads with this failure (``body``: reason str, dict or bytes)."""
        answer = error_answer(status, body, envelope=envelope, headers=headers)
        with self._lock:
            self._forced.extend([answer] * n)

    def fail_always(self, status, reason=None, *, envelope="classic", headers=None):
        """Answer every upload with this failure until ``clear_failures()``."""
        with self._lock:
            self._always = error_answer(status, reason, envelope=envelope, headers=headers)

    def clear_failures(self):
        """Forget queued and permanent failures."""
        with self._lock:
            self._forced.clear()
            self._always = None

    def set_budgets(self, *, user_limit=None, user_remaining=None, user_reset=None,
                    client_limit=None, client_remaining=None, client_reset=None,
                    post_limit=None, post_remaining=None, post_reset=None):
        """Change budgets. A new limit also refills; a reset is seconds from now and becomes
        the refill period (the budget refills to its limit whenever the countdown ends)."""
        given = locals()
        with self._lock:
            for name, budget in self._budgets.items():
                limit, remaining, reset = (given[f"{name}_{key}"]
                                           for key in ("limit", "remaining", "reset"))
                if limit is not None:
                    budget.limit = budget.remaining = limit
                if remaining is not None:
                    budget.remaining = remaining
                if reset is not None:
                    budget.period, budget.deadline = reset, time.monotonic() + reset

    def expire_token(self, token):
        """Make this bearer token answer 403 "The access token provided is invalid."."""
        with self._lock:
            self._tokens.discard(token)

    def add_token(self, token):
        """Make this bearer token valid (again)."""
        with self._lock:
            self._tokens.add(token)

    @property
    def requests_seen(self):
        """Every upload request answered, failures included, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def uploads(self):
        """The upload requests that succeeded (status 200), oldest first."""
        return [record for record in self.requests_seen if record.status == 200]

    def image_bytes(self, link):
        """The bytes stored under a link this fake handed out (KeyError if unknown, or if
        the fake keeps no images)."""
        image_id = urllib.parse.urlsplit(link).path.rsplit("/", 1)[-1].split(".", 1)[0]
        with self._lock:
            return self.stored[image_id]

    # -- request handling (called from server threads) -----------------------------------
    def _handle_upload(self, path, auth_header, content_type, body):
        """Forced failure, else auth, budgets, body, size and type checks, else store."""
        arrived = time.monotonic()
        if self.latency:
            time.sleep(self.latency)
        fields = _parse_body(content_type, body)
        image, body_error = _extract_image(fields, path)
        with self._lock:
            forced = self._forced.pop(0) if self._forced else self._always
        answer = (forced or self._check_auth(auth_header, path) or self._check_budgets(path)
                  or body_error)
        image_id, kind = None, _auth_kind(auth_header)
        if answer is None:
            form = {name: value for name, (value, is_file) in fields.items() if not is_file}
            answer, image_id = self._store(image, form, kind, path)
        record = UploadRecord(arrived, path, kind, image and hashlib.sha256(image).hexdigest(),
                              len(image or b""), answer.status, image_id, time.monotonic())
        with self._lock:
            self._requests.append(record)
        return answer

    def fail_next_delete(self, n=1, status=500, body="Internal Server Error"):
        """Answer the next ``n`` deletions with this failure."""
        with self._lock:
            self._delete_failures.extend([error_answer(status, body)] * n)

    def _handle_delete(self, path, auth_header):
        deletehash = path.rsplit("/", 1)[-1].split(".", 1)[0]
        answer = self._check_auth(auth_header, path)
        with self._lock:
            if answer is None and self._delete_failures:
                answer = self._delete_failures.pop(0)
            if answer is None:
                image_id = self._deletehashes.pop(deletehash, None)
                if image_id is None:
                    answer = error_answer(404, "Unable to find an image with the id, "
                                               f"{deletehash}", request=path, method="DELETE")
                else:
                    self.stored.pop(image_id, None)
                    self._mimes.pop(image_id, None)
                    answer = _Answer(200, json.dumps({"data": True, "success": True,
                                                      "status": 200}).encode())
            self.deletes.append(DeleteRecord(time.monotonic(), deletehash,
                                             _auth_kind(auth_header), answer.status))
        return answer

    def _check_auth(self, header, path):
        scheme, _, credential = (header or "").partition(" ")
        with self._lock:
            if scheme.lower() == "bearer" and credential.strip() in self._tokens:
                return None
            if scheme.lower() == "client-id" and credential.strip() in self.client_ids:
                return None
        if scheme.lower() == "bearer":
            return error_answer(403, "The access token provided is invalid.", request=path)
        if scheme.lower() == "client-id":
            return error_answer(403, "Invalid client_id", request=path)
        return error_answer(401, "Authentication required", request=path)

    def _check_budgets(self, path):
        with self._lock:
            return self._budget_error_locked(path)

    def _budget_error_locked(self, path):
        now = time.monotonic()
        for budget in self._budgets.values():
            budget.tick(now)
        if self._budgets["client"].remaining < UPLOAD_COST:
            return error_answer(429, "Daily client requests exceeded", envelope="new")
        if self._budgets["user"].remaining < UPLOAD_COST or self._budgets["post"].remaining < 1:
            return error_answer(429, "Too Many Requests", request=path)
        return None

    def _store(self, image, form, kind, path):
        if len(image) > self.max_bytes:
            return error_answer(400, "File is over the size limit", request=path), None
        sniffed = _sniff(image)
        if sniffed is None:
            if self.file_type_error == "object":
                error = {"code": 1003, "message": "File type invalid (1)", "type": "ImgurException"}
                return error_answer(415, classic_error(415, error, path)), None
            return error_answer(400, "We don't support that file type!", request=path), None
        mime, ext = sniffed
        image_id, deletehash = _random_name(7), _random_name(15)
        width, height = _dimensions(image, mime)
        with self._lock:
            exhausted = self._budget_error_locked(path)  # again: a parallel upload may have won
            if exhausted is not None:
                return exhausted, None
            if self.keep_images:
                self.stored[image_id], self._mimes[image_id] = image, mime
                self._deletehashes[deletehash] = image_id
            for name in ("user", "client"):
                self._budgets[name].remaining = max(0, self._budgets[name].remaining - UPLOAD_COST)
            self._budgets["post"].remaining = max(0, self._budgets["post"].remaining - 1)
        data = {
            "id": image_id, "title": form.get("title"), "description": form.get("description"),
            "datetime": int(time.time()), "type": mime, "animated": False, "width": width,
            "height": height, "size": len(image), "views": 0, "bandwidth": 0, "vote": None,
            "favorite": False, "nsfw": None, "section": None,
            "account_url": "tester" if kind == "bearer" else None,
            "account_id": 1 if kind == "bearer" else 0, "is_ad": False, "in_most_viral": False,
            "has_sound": False, "tags": [], "ad_type": 0, "ad_url": "", "edited": "0",
            "in_gallery": False, "deletehash": deletehash,
            "name": form.get("name", ""),
            "link": f"{self.public_base or self.url}/{image_id}.{ext}",
        }
        log.debug("Fake Imgur stored %s (%d bytes, %s)", image_id, len(image), mime)
        return _ok(data), image_id

    def _handle_token(self, content_type, body):
        form = {name: value for name, (value, _) in _parse_body(content_type, body).items()}
        with self._lock:
            if form.get("grant_type") != "refresh_token":
                answer = error_answer(400, "Invalid grant_type parameter or parameter missing",
                                      request="/oauth2/token")
            elif (form.get("refresh_token") not in self.refresh_tokens
                  or form.get("client_id") not in self.client_ids
                  or form.get("client_secret") != self.client_secret):
                answer = error_answer(400, "Invalid refresh token", request="/oauth2/token")
            else:
                token = secrets.token_hex(20)
                self._tokens.add(token)
                answer = _Answer(200, json.dumps({
                    "access_token": token, "expires_in": 2419200, "token_type": "bearer",
                    "scope": None, "refresh_token": form["refresh_token"], "account_id": 1,
                    "account_username": "tester"}).encode())
            self.refresh_requests.append(RefreshRecord(time.monotonic(), answer.status))
        return answer

    def _handle_get(self, path, auth_header):
        if path == "/3/credits":
            with self._lock:
                self.credits_requests += 1
            answer = self._check_auth(auth_header, path)
            if answer is not None:
                return answer
            with self._lock:
                user, client = self._budgets["user"], self._budgets["client"]
                now = time.monotonic()
                data = {"UserLimit": user.limit, "UserRemaining": user.remaining,
                        "UserReset": int(time.time()) + user.reset_seconds(now),
                        "ClientLimit": client.limit, "ClientRemaining": client.remaining}
            return _ok(data)
        match = re.fullmatch(r"/([A-Za-z0-9]{7})(?:\.\w+)?", path)
        with self._lock:
            if match and match.group(1) in self.stored:
                return _Answer(200, self.stored[match.group(1)], self._mimes[match.group(1)])
        return error_answer(404, "Not found", request=path)

    def _rate_headers(self):
        """The X-RateLimit-* and X-Post-Rate-Limit-* headers every answer carries."""
        now, headers = time.monotonic(), []
        with self._lock:
            for name, prefix in (("user", "X-RateLimit-User"), ("client", "X-RateLimit-Client"),
                                 ("post", "X-Post-Rate-Limit-")):
                budget = self._budgets[name]
                budget.tick(now)
                headers += [(prefix + "Limit", budget.limit),
                            (prefix + "Remaining", budget.remaining),
                            (prefix + "Reset", budget.reset_seconds(now))]
        return headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up stop()
    allow_reuse_address = True
    request_queue_size = 128  # benchmarks open many connections at once (the default is 5)

    def handle_error(self, request, client_address):
        # A client killed mid-request (crash drills do it) is normal here, not a traceback.
        log.debug("fake imgur: error answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    MessageClass = RequestHeaders
    server_version = "FakeImgur/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

    def setup(self):
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self):
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def do_POST(self):
        fake, path = self.server.fake, urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > 2 * fake.max_bytes + 1024 * 1024:
            # Too big to read: answer like the front end does and drop the connection.
            self.close_connection = True
            return self._send(error_answer(413, "file is over the size limit", envelope="bare"))
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        if path in UPLOAD_PATHS:
            return self._send(fake._handle_upload(path, self.headers.get("Authorization"),
                                                 content_type, body))
        if path == "/oauth2/token":
            return self._send(fake._handle_token(content_type, body))
        self._send(error_answer(404, "Not found", request=path))

    def do_DELETE(self):
        path = urllib.parse.urlsplit(self.path).path
        if re.fullmatch(r"/3/image/[A-Za-z0-9]+(?:\.json)?", path):
            return self._send(self.server.fake._handle_delete(path, self.headers.get("Authorization")))
        self._send(error_answer(404, "Not found", request=path))

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        self._send(self.server.fake._handle_get(path, self.headers.get("Authorization")))

    def _send(self, answer):
        self.send_response(answer.status, _phrase(answer.status))
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in self.server.fake._rate_headers() + list(answer.headers):
            self.send_header(name, str(value))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format, *args):
        log.debug("Fake Imgur: " + format, *args)


def _random_name(length):
    """Random letters and digits (one call for the randomness: the fake's CPU counts)."""
    return "".join(_ALNUM[byte % len(_ALNUM)] for byte in secrets.token_bytes(length))


def _ok(data):
    return _Answer(200, json.dumps({"data": data, "success": True, "status": 200}).encode())


def _phrase(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _auth_kind(header):
    scheme = (header or "").partition(" ")[0].lower()
    return {"bearer": "bearer", "client-id": "client-id", "": "none"}.get(scheme, "other")


_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _header_value(value):
    """(lower-cased type, {parameter: value}) of a header like Content-Type or
    Content-Disposition; quoted values lose their quotes and backslash escapes."""
    kind, _, rest = value.partition(";")
    params = {match.group(1).lower(): re.sub(r"\\(.)", r"\1", match.group(2))
              if match.group(2) is not None else match.group(3)
              for match in _PARAM.finditer(";" + rest)}
    return kind.strip().lower(), params


def _parse_body(content_type, body):
    """name -> (value, is_file) for multipart/form-data or x-www-form-urlencoded bodies."""
    kind, params = _header_value(content_type)
    if kind == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: (values[0], False) for name, values in fields.items()}
    boundary = params.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        return {}
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = _header_value(value)[1]
        name, filename = disposition.get("name"), disposition.get("filename")
        content = content.removesuffix(b"\r\n")
        if name:
            is_file = filename is not None
            fields[name] = (content if is_file else content.decode("utf-8", "replace"), is_file)
    return fields


def _extract_image(fields, path):
    """The image bytes from a file part or a base64 field, or an error answer."""
    value, is_file = fields.get("image", (None, False))
    if value is None or value == "":
        return None, error_answer(400, "No image data was sent to the upload api", request=path)
    if is_file:
        return value, None
    if value.startswith(("http://", "https://")):
        return None, error_answer(400, "The fake does not fetch URLs", request=path)
    try:
        return base64.b64decode(value, validate=False), None
    except ValueError:
        return None, error_answer(400, "Invalid base64 image data", request=path)


def _sniff(data):
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return None
    for magic, mime, ext in _MAGIC:
        if data.startswith(magic):
            return mime, ext
    return None


def _dimensions(data, mime):
    """Width and height from the header where that is cheap (0, 0 otherwise)."""
    try:
        if mime == "image/gif":
            return struct.unpack("<HH", data[6:10])
        if mime == "image/png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if mime == "image/bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return width, abs(height)
    except struct.error:
        pass
    return 0, 0


# Budgets of the standalone fake: a demo or a trial of thousands of uploads never waits for
# a reset (Imgur's own, 500 user credits an hour, stop a service at 49 uploads: its reserve)
DEMO_BUDGETS = {"user_limit": 10**6, "client_limit": 10**7, "post_limit": 10**5}


def main(argv=None):
    """Run a fake Imgur until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="fake-imgur", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", action="append", help="valid access token (repeatable)")
    parser.add_argument("--client-id", action="append", help="valid client id (repeatable)")
    parser.add_argument("--refresh-token", default="test-refresh")
    parser.add_argument("--client-secret", default="test-secret")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each upload")
    parser.add_argument("--public-base", default=None, help="link prefix (default: this server)")
    parser.add_argument("--imgur-budgets", action="store_true",
                        help="Imgur's own budgets (500 user credits an hour: about 49 uploads, "
                             "then a wait for the reset) instead of budgets no demo exhausts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(process)d %(levelname)s %(message)s")
    tokens, client_ids = args.token or ["test-token"], args.client_id or ["test-client"]
    fake = FakeImgur(host=args.host, port=args.port, access_tokens=tokens, client_ids=client_ids,
                     refresh_tokens=[args.refresh_token], client_secret=args.client_secret,
                     public_base=args.public_base)
    fake.latency = args.latency
    if not args.imgur_budgets:
        fake.set_budgets(**DEMO_BUDGETS)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    fake.start()
    budgets = ", ".join(f"{name} {budget.limit}" for name, budget in fake._budgets.items())
    print(f"Fake Imgur listening on {fake.url} (token: {', '.join(tokens)}; "
          f"client id: {', '.join(client_ids)}; credits: {budgets})", flush=True)
    while not stop.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
