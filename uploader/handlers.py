"""What every handler shares: JSON errors, the store's reader threads, API keys, JSON bodies.

Every error body is JSON ``{"error": "..."}``, Tornado's own 404 and 405 included. A
handler of the ``/v1`` API is ``guarded``: with API keys configured it learns the
caller's account in ``prepare`` or answers 401.
"""
import asyncio
import json
import logging

import tornado.web

from . import access
from .auth import Unauthorized, account_for
from .errors import StoreUnavailable
from .scrub import control_problem, redact_userinfo

log = logging.getLogger(__name__)


class ApiError(tornado.web.HTTPError):
    """An error whose message is meant for the client."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(status, log_message=message)
        self.message = message
        self.headers = headers or {}


def store_down() -> ApiError:
    return ApiError(503, "the store is unreachable; retry shortly", headers={"Retry-After": "5"})


class JsonErrors:
    """Mixin: every error, including Tornado's own 404/405, answers JSON."""

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


class BaseHandler(JsonErrors, tornado.web.RequestHandler):
    guarded = False  # part of the /v1 API: needs an API key when keys are configured

    def initialize(self, service):
        self.service = service
        self.account = None

    def prepare(self):
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

    async def wait(self, future):
        """Await a dispatcher future; an unreachable store answers 503."""
        try:
            return await asyncio.wrap_future(future)
        except StoreUnavailable as exc:
            log.warning("%s %s: the store is unreachable (%s)", self.request.method,
                        self.request.path, exc)
            raise store_down() from None

    def write_json(self, status: int, body) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    async def in_reader(self, fn, *args):
        """Run a store read on the reader threads; an unreachable store answers 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.service.readers, fn, *args)
        except StoreUnavailable as exc:
            log.warning("%s %s: the store is unreachable (%s)", self.request.method,
                        self.request.path, exc)
            raise store_down() from None
