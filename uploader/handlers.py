"""What every handler shares: JSON errors, the store's reader threads, API keys, JSON bodies,
and the answers to what a service operation refuses (``operate``).

Every error body is JSON ``{"error": "..."}``, Tornado's own 404 and 405 included, with
any URL's userinfo shown as ``***``. A handler of the ``/v1`` API is ``guarded``: with API
keys configured it learns the caller's account in ``prepare`` or answers 401.

No handler lets a stranger fill the memory: each streams its request body
(``stream_request_body``) and counts it against its ``body_limit`` (the upload route's is
``server.max_body_bytes``, every other route's a few KB), so a body over the limit is
answered 413 from its ``Content-Length`` before a byte of it is read, or as soon as a
chunked body passes the limit; the connection then closes, the rest unread.
"""
import asyncio
import json
import logging

import tornado.web

from . import access
from .auth import Unauthorized, account_for
from .errors import QueueFull, StoreFull, StoreUnavailable
from .operations import Conflict, NotFound
from .scrub import control_problem, redact_userinfo

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_SECONDS = 30  # a key's queue drains at the pace of its uploads: not at once
SMALL_BODY_BYTES = 8192  # the body limit of every route but the upload's (none reads a body)
UNBOUNDED = 1 << 62


class ApiError(tornado.web.HTTPError):
    """An error whose message is meant for the client."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(status, log_message=message)
        self.message = message
        self.headers = headers or {}


def store_down(exc: StoreUnavailable) -> ApiError:
    """503: the store cannot take it now (the detail is logged, not told)."""
    if isinstance(exc, StoreFull):
        return ApiError(503, "the store is full (its disk has no space left); retry once space "
                             "is freed", headers={"Retry-After": "5"})
    return ApiError(503, "the store is unreachable; retry shortly", headers={"Retry-After": "5"})


class JsonErrors:
    """Mixin: every error, including Tornado's own 404/405, answers JSON; a request target
    with control characters answers 400 and a body over ``body_limit`` 413 (the handler
    must be ``tornado.web.stream_request_body``, or Tornado buffers the body first)."""

    def body_limit(self) -> int:
        """The largest request body this handler takes, in bytes."""
        return SMALL_BODY_BYTES

    def keep_body(self, chunk: bytes) -> None:
        """A handler that reads its body keeps each chunk here; the others drop it."""

    def prepare(self):
        problem = control_problem(self.request.uri)
        if problem:
            raise ApiError(400, f"the request target {problem}")
        self.body_size = 0
        limit = self.body_limit()
        # This handler counts its body (``data_received``). The server's own limit, a
        # backstop for a handler that does not stream, would pre-empt the 413 with a bare
        # 400, and complain about the rest of a body refused below.
        self.request.connection.set_max_body_size(UNBOUNDED)
        length = self.request.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"body is {length} bytes; the limit is {limit}")
        super().prepare()

    def data_received(self, chunk):
        if self._finished:
            return
        self.body_size += len(chunk)
        limit = self.body_limit()
        if self.body_size > limit:
            self.send_error(413, exc_info=(ApiError, ApiError(
                413, f"body is over the limit of {limit} bytes"), None))
            return
        self.keep_body(chunk)

    def decode_argument(self, value, name=None):
        """A path argument that is not UTF-8 names nothing here: 404, not Tornado's bare 400."""
        try:
            return super().decode_argument(value, name)
        except tornado.web.HTTPError:
            raise ApiError(404, f"no such resource: {self.request.path}") from None

    def allowed_methods(self):
        """The methods this handler implements, for the ``Allow`` header of a 405."""
        return [method for method in self.SUPPORTED_METHODS
                if getattr(type(self), method.lower(), None)
                is not getattr(tornado.web.RequestHandler, method.lower(), None)]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif status_code == 405:
            message = f"method {self.request.method} is not allowed on {self.request.path}"
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif status_code == 404:
            message = f"no such resource: {self.request.path}"
        elif status_code >= 500:
            message = "internal error; the service log has the details"
        else:
            message = self._reason
        message = redact_userinfo(message)
        if status_code < 500 or isinstance(exc, ApiError):
            self.error_reason = message  # the access line tells it (access.log_request)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb):
        """An HTTPError is an answer, told once by the access line; anything else is a bug,
        logged here at ERROR with its traceback and the request id (no headers)."""
        if isinstance(value, tornado.web.HTTPError):
            return
        log.error("uncaught exception in %s %s (request id %s)", self.request.method,
                  self.request.path, access.request_id(self.request), exc_info=(typ, value, tb))


@tornado.web.stream_request_body
class BaseHandler(JsonErrors, tornado.web.RequestHandler):
    guarded = False  # part of the /v1 API: needs an API key when keys are configured

    def initialize(self, service):
        self.service = service
        self.account = None

    def prepare(self):
        super().prepare()
        if self.guarded:
            try:
                self.account = account_for(self.request.headers.get("Authorization"),
                                           self.service.config.server.api_keys)
            except Unauthorized as exc:
                raise ApiError(401, str(exc), headers={
                    "WWW-Authenticate": 'Bearer realm="image-service"'}) from None

    def require_json(self):
        """A POST carries JSON (415 otherwise): a form on another site cannot make jobs, and
        a browser asks before it sends JSON across sites (which this service never allows)."""
        given = self.request.headers.get("Content-Type", "")
        if given.split(";", 1)[0].strip().lower() != "application/json":
            raise ApiError(415, f"Content-Type must be application/json, got {given or 'none'!r}")

    async def operate(self, operation):
        """Await a service operation (``operations``): a refusal answers 404, 409 or 429,
        an unreachable or full store 503."""
        try:
            return await operation
        except NotFound as exc:
            raise ApiError(404, str(exc)) from None
        except Conflict as exc:
            raise ApiError(409, str(exc)) from None
        except QueueFull as exc:
            raise ApiError(429, str(exc),
                           headers={"Retry-After": str(QUEUE_FULL_RETRY_SECONDS)}) from None
        except StoreUnavailable as exc:
            log.warning("%s %s: %s", self.request.method, self.request.path, exc)
            raise store_down(exc) from None

    def write_json(self, status: int, body) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    async def in_reader(self, fn, *args):
        """Run a store read on the reader threads; an unreachable or full store answers 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.service.readers, fn, *args)
        except StoreUnavailable as exc:
            log.warning("%s %s: %s", self.request.method, self.request.path, exc)
            raise store_down(exc) from None
