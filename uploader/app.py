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

log = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    """GET /healthz: what ``health.Health`` finds."""

    async def get(self):
        self.write_json(*await self.service.health.report())


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
