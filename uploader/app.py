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

from .hosts.local import NAME_PATTERN
from .metrics import CONTENT_TYPE_LATEST
from .submission import SubmissionError, parse_submission

log = logging.getLogger(__name__)

LINKS_PAGE = 10_000


class ApiError(tornado.web.HTTPError):
    """An error whose message is meant for the client."""

    def __init__(self, status: int, message: str, headers=None):
        super().__init__(status, log_message=message)
        self.message = message
        self.headers = headers or {}


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
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": message}))


class BaseHandler(JsonErrors, tornado.web.RequestHandler):
    def initialize(self, service):
        self.service = service

    def write_json(self, status: int, body) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))

    async def in_reader(self, fn, *args):
        """Run a store read on the reader threads."""
        return await asyncio.get_running_loop().run_in_executor(self.service.readers, fn, *args)


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
        await asyncio.wrap_future(self.service.dispatcher.submit(job_id, urls))
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
        progress = dict(self.service.dispatcher.progress)
        reader = self.service.reader

        def read_and_encode():  # a big job's JSON is built off the event loop too
            job = reader.job(job_id, progress)
            return None if job is None else json.dumps(job)

        body = await self.in_reader(read_and_encode)
        if body is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body)


class ImagesHandler(BaseHandler):
    """GET /v1/images: every link ever uploaded, oldest first, streamed page by page."""

    async def get(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write('{"uploaded": [')
        after, separator = 0, ""
        while True:
            rows = await self.in_reader(self.service.reader.links_after, after, LINKS_PAGE)
            if not rows:
                break
            self.write(separator + ", ".join(json.dumps(link) for _, link in rows))
            separator = ", "
            after = rows[-1][0]
            await self.flush()
        self.finish("]}")


class HealthHandler(BaseHandler):
    """GET /healthz: 200 when the store is writable and every worker is alive."""

    async def get(self):
        problems = []
        if not await self.in_reader(self.service.reader.writable):
            problems.append("store is not writable")
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
                "workers": {"alive": alive, "expected": expected, "pids": self.service.pool.pids()},
                "manager": {"pid": self.service.pool.manager_pid()}}
        if problems:
            body["problems"] = problems
        self.write_json(200 if not problems else 503, body)


class LocalImageHandler(JsonErrors, tornado.web.StaticFileHandler):
    """GET /i/<name>: images stored by the ``local`` host, with the right content type."""

    def parse_url_path(self, url_path):
        # Only names the local host makes: no directories, no way out of the image directory.
        if not NAME_PATTERN.match(url_path):
            raise ApiError(404, f"no such image: {self.request.path}")
        return url_path


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format."""

    async def get(self):
        queued = await self.in_reader(self.service.reader.queued_count)
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
    )
