"""The access log: one line per HTTP request, with an id the client and the logs share,
and the same moment for the request metrics (``RequestLog``).

Tornado would log each request on ``tornado.access`` and, for an ``HTTPError``, a
second WARNING line first. Here the application's ``log_function`` writes the one
line instead (logger ``uploader.access``), errors that are answers (4xx, a 503 while
stopping or while the store is unreachable) are told on that line with their reason,
and only a real exception gets a line of its own, with its traceback.

Levels: INFO below 500; WARNING for a 503 (the service shuts down or its store is
unreachable: expected, and said with Retry-After); ERROR for every other 5xx. In ``json`` format the fields are
keys: ``method``, ``path``, ``status``, ``duration_ms``, ``request_id`` and ``error``.
"""
import json
import logging
import re
import uuid

import tornado.routing
import tornado.web

log = logging.getLogger("uploader.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def request_id(request) -> str:
    """The id of ``request``: the client's ``X-Request-Id`` when it is a short safe token
    (letters, digits, ``._:-``, at most 64), else a new one; the same on every call."""
    known = getattr(request, "request_id", None)
    if known is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        known = given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.request_id = known
    return known


class RequestIdHeader(tornado.web.OutputTransform):
    """Sends the request id back as ``X-Request-Id`` on every answer, errors included."""

    def __init__(self, request):
        super().__init__(request)
        self.request_id = request_id(request)

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        headers[REQUEST_ID_HEADER] = self.request_id
        return status_code, headers, chunk


class RequestLog:
    """The application's ``log_function``: the access line and the request metrics.

    A request is counted under the pattern of the rule that routed it
    (``/v1/images/upload/([^/]+)``), never under its path, which a client chooses;
    requests no rule matched count as ``unmatched``.
    """

    UNMATCHED = "unmatched"

    def __init__(self, metrics):
        self.metrics = metrics
        self._routes = {}  # handler class -> its rule's pattern

    def __call__(self, handler) -> None:
        log_request(handler)
        self.metrics.http_request(route=self.route(handler), method=handler.request.method,
                                  status=handler.get_status(), seconds=handler.request.request_time())

    def route(self, handler) -> str:
        """The pattern of the (first) rule routing to the handler class that answered."""
        kind = type(handler)
        if kind not in self._routes:
            patterns = [rule.matcher.regex.pattern for rule in handler.application.wildcard_router.rules
                        if rule.target is kind and isinstance(rule.matcher, tornado.routing.PathMatches)]
            self._routes[kind] = patterns[0].removesuffix("$") if patterns else self.UNMATCHED
        return self._routes[kind]


def log_request(handler) -> None:
    """Write the access line of a finished request (the application's ``log_function``)."""
    request, status = handler.request, handler.get_status()
    fields = {"method": request.method, "path": request.path, "status": status,
              "duration_ms": round(request.request_time() * 1000, 1),
              "request_id": request_id(request)}
    error = getattr(handler, "error_reason", None)  # set by app.JsonErrors.write_error
    if error:
        fields["error"] = error
    log.log(_level(status), "%s %s %d %.1f ms id=%s%s", fields["method"], fields["path"],
            status, fields["duration_ms"], fields["request_id"],
            f" error={json.dumps(error)}" if error else "", extra=fields)


def _level(status: int) -> int:
    if status < 500:
        return logging.INFO
    return logging.WARNING if status == 503 else logging.ERROR
