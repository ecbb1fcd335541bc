"""The HTTP API (Tornado): submit jobs, read them, list links, serve local images.

Handlers never block: job creation is handed to the dispatcher and awaited as a
future, reads run on the store's reader threads, and the link listing streams a page
at a time. Every error body is JSON ``{"error": "..."}``.
"""
import asyncio
import json
import logging
import os
import uuid

import tornado.web

from . import access
from .errors import StoreUnavailable
from .hosts.local import NAME_PATTERN
from .metrics import CONTENT_TYPE_LATEST
from .render import job_document
from .submission import SubmissionError, parse_submission

log = logging.getLogger(__name__)

LINKS_PAGE = 10_000


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
    def initialize(self, service):
        self.service = service

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


@tornado.web.stream_request_body
class UploadHandler(BaseHandler):
    """POST /v1/images/upload: validate, create the job, answer 202 at once."""

    def prepare(self):
        if self.request.method != "POST":
            # Refuse now: the body of a PUT/PATCH/DELETE would otherwise reach data_received.
            raise tornado.web.HTTPError(405)
        if self.service.stopping:
            raise ApiError(503, "the service is shutting down; retry shortly",
                           headers={"Retry-After": "5"})
        self.limit = self.service.config.server.max_body_bytes
        self.body = bytearray()
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise ApiError(413, f"body is {length} bytes; the limit is {self.limit}")

    def data_received(self, chunk):
        if self._finished:
            return
        self.body += chunk
        if len(self.body) > self.limit:
            self.send_error(413, exc_info=(ApiError, ApiError(
                413, f"body is over the limit of {self.limit} bytes"), None))

    async def post(self):
        loop = asyncio.get_running_loop()
        try:
            urls = await loop.run_in_executor(
                None, lambda: parse_submission(
                    bytes(self.body), max_urls=self.service.config.server.max_urls_per_job))
        except SubmissionError as exc:
            raise ApiError(exc.status, str(exc)) from None
        job_id = str(uuid.uuid4())
        try:
            await asyncio.wrap_future(self.service.dispatcher.submit(job_id, urls))
        except StoreUnavailable as exc:
            log.warning("job refused: the store is unreachable (%s)", exc)
            raise store_down() from None
        log.info("job %s accepted with %d URLs", job_id, len(urls))
        self.set_header("Location", f"/v1/images/upload/{job_id}")
        self.write_json(202, {"jobId": job_id})


class JobHandler(BaseHandler):
    """GET /v1/images/upload/<jobId>: the job and each URL's fate."""

    async def get(self, job_id):
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise ApiError(404, f"no job with id {job_id!r}") from None
        store = self.service.store

        def read_and_encode():  # a big job's JSON is built off the event loop too
            found = store.read_job(job_id)
            return None if found is None else json.dumps(job_document(*found))

        body = await self.in_reader(read_and_encode)
        if body is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body)


class ImagesHandler(BaseHandler):
    """GET /v1/images: every link ever uploaded, oldest first, streamed page by page."""

    async def get(self):
        listing = self.service.store.links(LINKS_PAGE)  # one snapshot, however long it takes
        pages = await self.in_reader(listing.__enter__)
        try:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.write('{"uploaded": [')
            separator = ""
            while page := await self.in_reader(next, pages, None):
                self.write(separator + ", ".join(json.dumps(link) for link in page))
                separator = ", "
                await self.flush()
            self.finish("]}")
        finally:
            await self.in_reader(listing.__exit__, None, None, None)


class HealthHandler(BaseHandler):
    """GET /healthz: 200 when the store is writable and every worker is alive."""

    async def get(self):
        problems = []
        store_problem = await self.in_reader(self.service.store.problem)
        if store_problem:
            problems.append(store_problem)
        elif self.service.dispatcher.store_problem:
            problems.append(f"the last commit failed: {self.service.dispatcher.store_problem}")
        expected = self.service.config.workers.processes
        alive = self.service.dispatcher.ready_workers()
        if alive < expected:
            problems.append(f"{expected - alive} of {expected} worker processes are down "
                            "or still starting")
        if not self.service.pool.manager_alive():
            problems.append("the multiprocessing manager is down")
        if self.service.stopping:
            problems.append("shutting down")
        body = {"status": "ok" if not problems else "unhealthy",
                "instance": self.service.instance,
                "workers": {"alive": alive, "expected": expected, "pids": self.service.pool.pids()},
                "manager": {"pid": self.service.pool.manager_pid()}}
        if problems:
            body["problems"] = problems
        self.write_json(200 if not problems else 503, body)


class LocalImageHandler(JsonErrors, tornado.web.StaticFileHandler):
    """GET /i/<name>: images stored by the ``local`` host, with the right content type."""

    # The local host never gives a name to other bytes (it links, never overwrites), so a
    # cache may keep an image for good; ``immutable`` spares even the revalidation on reload.
    CACHE_CONTROL = "public, max-age=31536000, immutable"

    def set_default_headers(self):
        # On every answer, errors too: a browser must not guess HTML or script from the bytes.
        self.set_header("X-Content-Type-Options", "nosniff")

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", self.CACHE_CONTROL)  # images only, never an error

    def parse_url_path(self, url_path):
        # Only names the local host makes: no directories, no way out of the image directory.
        if not NAME_PATTERN.match(url_path):
            raise ApiError(404, f"no such image: {self.request.path}")
        return url_path


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format."""

    async def get(self):
        queued = await self.in_reader(self.service.store.queued_count)
        body = self.service.metrics.render(queued=queued,
                                           in_flight=self.service.dispatcher.in_flight())
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


class OpenApiHandler(BaseHandler):
    """GET /openapi.json: the API description kept in the package (the one source)."""

    SPEC = os.path.join(os.path.dirname(__file__), "openapi.json")

    def get(self):
        with open(self.SPEC, "rb") as spec:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(spec.read())


class NotFoundHandler(BaseHandler):
    def prepare(self):
        raise ApiError(404, f"no such resource: {self.request.path}")


def make_app(service) -> tornado.web.Application:
    from .page import web_routes  # here, not at the top: page.py builds on this module's JsonErrors

    args = {"service": service}
    return tornado.web.Application(
        [
            (r"/v1/images/upload", UploadHandler, args),
            (r"/v1/images/upload/([^/]+)", JobHandler, args),
            (r"/v1/images", ImagesHandler, args),
            (r"/healthz", HealthHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/openapi.json", OpenApiHandler, args),
            (r"/i/(.+)", LocalImageHandler, {"path": os.path.abspath(service.config.local.directory)}),
            *web_routes(service.config),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        transforms=[access.RequestIdHeader],
        log_function=access.RequestLog(service.metrics),
    )
