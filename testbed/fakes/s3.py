"""S3 for the tests: moto's real S3 protocol server on loopback, and a proxy in front of it
that can be told to fail.

``MotoS3`` runs ``moto.server.ThreadedMotoServer`` on a free loopback port (moto checks no
credentials); ``new_bucket()`` makes a bucket of a test's own whose objects anyone may
read, as a bucket behind public links is.

``S3FaultProxy`` passes requests on to moto and records each (method, path, headers,
status, when it arrived); told ``fail_next(n, kind)``, it answers the next ``n`` matching
requests itself, the way S3 does when it is busy, broken or refuses us:

    slowdown      503 SlowDown (with ``Retry-After`` if given)
    internal      500 InternalError
    access_denied 403 AccessDenied
    invalid_key   403 InvalidAccessKeyId
    bad_signature 403 SignatureDoesNotMatch
    slow          passes the request on only after ``delay`` seconds
    drop          closes the connection without an answer
"""
import http.client
import http.server
import itertools
import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional

from .server import LoopbackServer

log = logging.getLogger(__name__)

ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
    "invalid_key": (403, "InvalidAccessKeyId",
                    "The AWS Access Key Id you provided does not exist in our records."),
    "bad_signature": (403, "SignatureDoesNotMatch", "The request signature we calculated does"
                      " not match the signature you provided. Check your key and signing method."),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "expect"}
_buckets = itertools.count()


class MotoS3:
    """moto's S3 server in a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = self._client = None

    def start(self) -> "MotoS3":
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def client(self):
        """A boto3 client for the tests' own look at the buckets (made once)."""
        if self._client is None:
            from uploader.hosts.s3 import client_config, new_client

            self._client = new_client(endpoint_url=self.url, region_name="us-east-1",
                                      aws_access_key_id="test", aws_secret_access_key="test",
                                      config=client_config(addressing_style="path"))
        return self._client

    def new_bucket(self, public: bool = True) -> str:
        """A fresh bucket; ``public``: anyone may GET its objects (a bucket policy)."""
        name = f"test-bucket-{next(_buckets)}-{int(time.time() * 1000) % 10**8}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if public:
            client.put_bucket_policy(Bucket=name, Policy=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{name}/*"}]}))
        return name

    def keys(self, bucket: str) -> list:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@dataclass(frozen=True)
class S3Request:
    """One request as the proxy saw it."""

    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    headers: dict = field(compare=False)
    status: Optional[int]  # None: dropped

    @property
    def key(self) -> str:
        """The object key (path style: /bucket/key), unquoted."""
        return urllib.parse.unquote(self.path.split("?", 1)[0].split("/", 2)[-1])


@dataclass
class _Failure:
    kind: str
    method: str
    retry_after: Optional[float] = None
    delay: float = 0.0
    message: Optional[str] = None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        log.debug("S3 proxy: error answering %s", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for botocore's Expect
    proxy = None  # set on a per-server subclass

    def _any(self):
        self.proxy._handle(self)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any

    def log_message(self, fmt, *args):
        log.debug("S3 proxy: " + fmt, *args)


class S3FaultProxy(LoopbackServer):
    """A proxy to ``target`` (moto's URL) that fails requests when told to."""

    handler, handler_attribute, server_base = _Handler, "proxy", _Server
    thread_name = "s3-proxy"

    def __init__(self, target: str):
        super().__init__()
        self.target = urllib.parse.urlsplit(target)
        self._failures = []
        self._log = []
        self._lock = threading.Lock()

    def fail_next(self, n: int, kind: str, *, method: str = "PUT", retry_after=None,
                  delay: float = 0.0, message: Optional[str] = None) -> None:
        """Answer the next ``n`` requests of ``method`` (None: any) as ``kind`` says."""
        if kind not in ERRORS and kind not in ("slow", "drop"):
            raise ValueError(f"unknown failure {kind!r}")
        with self._lock:
            self._failures.extend(_Failure(kind, method, retry_after, delay, message)
                                  for _ in range(n))

    def seen(self, method: Optional[str] = None) -> list:
        """Requests seen (of ``method``), oldest first."""
        with self._lock:
            return [r for r in self._log if method is None or r.method == method]

    def uploads(self) -> list:
        """PutObject requests of images (the service's probe objects left out)."""
        return [r for r in self.seen("PUT") if "/" in r.path.strip("/")
                and ".image-service-probe-" not in r.path]

    def _take_failure(self, method: str) -> Optional[_Failure]:
        with self._lock:
            for i, failure in enumerate(self._failures):
                if failure.method in (None, method):
                    return self._failures.pop(i)
        return None

    def _handle(self, h) -> None:
        at = time.monotonic()
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in h.headers.items()}
        failure = self._take_failure(h.command)

        def record(status):  # before the client hears it: a test then finds it
            with self._lock:
                self._log.append(S3Request(at, h.command, h.path, headers, status))
        if failure is not None and failure.kind == "drop":
            record(None)
            h.close_connection = True
        elif failure is not None and failure.kind in ERRORS:
            self._refuse(h, failure, record)
        else:
            if failure is not None and failure.kind == "slow":
                self._stopping.wait(failure.delay)
            self._pass_on(h, body, record)

    def _refuse(self, h, failure: _Failure, record) -> None:
        status, code, message = ERRORS[failure.kind]
        record(status)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{failure.message or message}</Message>"
                "<RequestId>fault-proxy</RequestId></Error>").encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(body)))
        if failure.retry_after is not None:
            h.send_header("Retry-After", f"{failure.retry_after:g}")
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _pass_on(self, h, body: bytes, record) -> None:
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=30)
        try:
            headers = {name: value for name, value in h.headers.items()
                       if name.lower() not in HOP_BY_HOP}
            conn.request(h.command, h.path, body=body if body or h.command in ("PUT", "POST")
                         else None, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            record(answer.status)
            h.send_response(answer.status, answer.reason)
            head = h.command == "HEAD"  # its Content-Length is the object's: kept
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                    h.send_header(name, value)
            if not head:
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if not head:
                h.wfile.write(data)
        finally:
            conn.close()
