"""The HTTP application (Tornado): the ``/v1`` API (``v1``), the web page (``page``), and
what an operator and a browser need besides: health, metrics, the API's description and
the local host's images. Every error body is JSON ``{"error": "..."}``.
"""
import logging
import os

import tornado.web

from . import access, page, v1
from .handlers import ApiError, BaseHandler, JsonErrors
from .hosts.local import NAME_PATTERN
from .metrics import CONTENT_TYPE_LATEST
from .backends.postgres.refusals import refusals

log = logging.getLogger(__name__)


# How long /healthz waits on the store: a hung store (PostgreSQL gone behind PgBouncer, which
# holds a query for its query_wait_timeout) is reported as such, not waited out.
HEALTH_PROBE_SECONDS = 3


class HealthHandler(BaseHandler):
    """GET /healthz: 200 when the store is reachable and writable and every worker is
    alive ("degraded" while the image host refuses our credential or has no room, or
    PostgreSQL refuses some of our connections for want of room); else 503."""

    async def get(self):
        problems = []
        probe = await self.service.store_probe()
        store_problem = (probe.result() if probe is not None else "the store did not answer "
                         f"within {self.service.store_probe.wait_seconds:g} s")
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
        credential = None if problems else await self.in_reader(self.service.credential_problem)
        degraded = [reason for reason in (credential, self.service.dispatcher.host_full(),
                                          refusals.summary(),
                                          *self.service.dispatcher.refused_workers()) if reason]
        status = "unhealthy" if problems else "degraded" if degraded else "ok"
        body = {"status": status, "instance": self.service.instance,
                "workers": {"alive": alive, "expected": expected, "pids": self.service.pool.pids()},
                "manager": {"pid": self.service.pool.manager_pid()}}
        if problems:
            body["problems"] = problems
        if degraded:  # serving, but no upload can succeed until this is fixed, or slower,
            body["degraded"] = degraded  # short of connections (and saying why)
        self.write_json(200 if not problems else 503, body)


@tornado.web.stream_request_body  # its body is counted, never buffered (JsonErrors)
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
    """GET /metrics: Prometheus text format. It answers while the store is down (saying
    so in ``uploader_store_up``): it waits on the store a second at most."""

    async def get(self):
        service, gauges = self.service, self.service.store_gauges
        read = await gauges.refresh()
        body = service.metrics.render(
            queued=gauges.queued, oldest_queued=gauges.oldest_queued,
            in_flight=service.dispatcher.in_flight(),
            workers_alive=service.dispatcher.ready_workers(),
            workers_expected=service.config.workers.processes,
            credential_rejected=gauges.credential_rejected,
            store_up=read and service.dispatcher.store_problem is None)
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
        super().prepare()  # a body over the limit is refused (413) before it is read
        raise ApiError(404, f"no such resource: {self.request.path}")


def make_app(service) -> tornado.web.Application:
    args = {"service": service}
    return tornado.web.Application(
        [
            *v1.routes(args),
            (r"/healthz", HealthHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/openapi.json", OpenApiHandler, args),
            (r"/i/(.+)", LocalImageHandler, {"path": os.path.abspath(service.config.local.directory)}),
            *page.web_routes(service.config),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        transforms=[access.RequestIdHeader],
        log_function=access.RequestLog(service.metrics),
    )
