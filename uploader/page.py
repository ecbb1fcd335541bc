"""The service's own web page at ``/``: static files from ``uploader/web/``, no build step.

The page (``index.html``, ``app.js``, ``app.css``, ``icon.svg``) talks to the service only
through the public JSON API, like any other client. This module serves those files and
gives every one of them the same security headers:

- ``Content-Security-Policy``: only this origin, no inline script or style, and images
  also from the origin the image host's links point to (see ``image_origins``);
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (a job's page
  address must not reach the image host) and ``Cache-Control: no-cache`` (an upgraded
  service is never shown with yesterday's script).
"""
import os
import urllib.parse

import tornado.web

from .handlers import JsonErrors

WEB_DIR = os.path.join(os.path.dirname(__file__), "web")
ASSETS = {
    "app.js": "text/javascript; charset=UTF-8",
    "app.css": "text/css; charset=UTF-8",
    "icon.svg": "image/svg+xml",
}
PAGE = "index.html"
IMGUR_IMAGES = "https://i.imgur.com"
IMGUR_API = "https://api.imgur.com"


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL (the port only when the URL names one)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


def image_origins(config) -> list:
    """Where the links of the configured image host point, for the thumbnails.

    The local host links to ``server.base_url`` (``public_url``, else
    ``http://localhost:<port>``); S3 to ``s3.link_base`` (``s3.public_url``, else derived
    from the endpoint and bucket). Imgur links to ``https://i.imgur.com``; an
    ``imgur.api_url`` other than Imgur's own (a stand-in such as ``bin/fake-imgur``) serves
    its links itself, so its origin is added. Links made under an earlier configuration
    are not covered."""
    if config.resolved_image_host == "s3":
        return [origin(config.s3.link_base)]
    if config.resolved_image_host == "imgur":
        origins = [IMGUR_IMAGES]
        if origin(config.imgur.api_url) != IMGUR_API:
            origins.append(origin(config.imgur.api_url))
        return origins
    return [origin(config.server.base_url)]


def content_security_policy(config) -> str:
    images = " ".join(["'self'"] + image_origins(config))
    return ("default-src 'self'; "
            f"img-src {images}; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@tornado.web.stream_request_body  # its body is counted, never buffered (JsonErrors)
class WebFileHandler(JsonErrors, tornado.web.StaticFileHandler):
    """GET / (the page) and GET /web/<asset>; anything else answers a JSON 404."""

    csp = ""  # Tornado sets default headers before ``initialize``: they are set again there

    def initialize(self, csp: str, **kwargs):
        super().initialize(**kwargs)
        self.csp = csp
        self.set_default_headers()

    def set_default_headers(self):
        self.set_header("Content-Security-Policy", self.csp)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def parse_url_path(self, url_path):
        if url_path == "":
            return PAGE
        if url_path not in ASSETS:
            raise tornado.web.HTTPError(404)
        return url_path

    def get_content_type(self):
        name = os.path.basename(self.absolute_path)
        return ASSETS.get(name, "text/html; charset=UTF-8")

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")


def web_routes(config) -> list:
    """The routes of the page, for ``make_app``."""
    args = {"path": WEB_DIR, "csp": content_security_policy(config)}
    return [
        (r"/()", WebFileHandler, args),
        (r"/web/([^/]+)", WebFileHandler, args),
    ]
