"""Log lines: UTC ISO 8601 times, and one access line per request with its request id.

The access line is checked in-process: the real ``make_app`` behind AsyncHTTPTestCase,
with a stand-in service offering only what the requests below touch.
"""
import calendar
import json
import logging
import re
import sys
import time
import uuid

from uploader.access import REQUEST_ID_HEADER
from uploader.logs import TEXT_FORMAT, JsonFormatter, UtcFormatter

from tests.inprocess import AppTestCase

# 2026-11-29T21:41:15.753Z
MOMENT = calendar.timegm((2026, 11, 29, 21, 41, 15)) + 0.753


def record(message="hello %s", args=("world",), **extra):
    entry = logging.LogRecord("uploader.test", logging.WARNING, __file__, 1, message, args, None)
    entry.created, entry.msecs = MOMENT, 753.0
    entry.__dict__.update(extra)
    return entry


def test_text_lines_start_with_the_utc_time_in_milliseconds():
    line = UtcFormatter(TEXT_FORMAT).format(record())
    assert re.fullmatch(r"2026-11-29T21:41:15\.753Z WARNING \[\d+ uploader\.test\] hello world", line)


def test_json_lines_carry_the_same_time_and_extra_fields():
    entry = json.loads(JsonFormatter().format(record(job_id="j-1", status=201)))
    assert entry["time"] == "2026-11-29T21:41:15.753Z"
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "uploader.test", "hello world")
    assert (entry["job_id"], entry["status"]) == ("j-1", 201)


def test_times_are_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert UtcFormatter(TEXT_FORMAT).format(record()).startswith("2026-11-29T21:41:15.753Z ")
    finally:
        monkeypatch.undo()
        time.tzset()


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, entry):
        self.records.append(entry)


class FakeStore:
    def read_job(self, job_id, account=None):
        raise RuntimeError("boom: a bug in the store")


class AccessLogTest(AppTestCase):
    def stand_in(self):
        service = super().stand_in()
        service.store, service.readers = FakeStore(), None
        return service

    def setUp(self):
        self.captured = Captured()
        root = logging.getLogger()
        self.level = root.level
        root.addHandler(self.captured)
        root.setLevel(logging.DEBUG)
        super().setUp()

    def tearDown(self):
        super().tearDown()
        root = logging.getLogger()
        root.removeHandler(self.captured)
        root.setLevel(self.level)

    def lines(self):
        """Records of the app and Tornado (not of the test client)."""
        return [r for r in self.captured.records
                if r.name.startswith(("uploader", "tornado.access", "tornado.general", "tornado.application"))]

    def access_lines(self):
        return [r for r in self.captured.records if r.name == "uploader.access"]

    def test_one_info_line_per_request_with_its_fields(self):
        response = self.fetch("/openapi.json", headers={REQUEST_ID_HEADER: "client-id_1.2:3"})
        assert response.code == 200
        assert response.headers[REQUEST_ID_HEADER] == "client-id_1.2:3"
        (line,) = self.lines()
        assert (line.name, line.levelno) == ("uploader.access", logging.INFO)
        assert (line.method, line.path, line.status, line.request_id) == (
            "GET", "/openapi.json", 200, "client-id_1.2:3")
        assert line.duration_ms >= 0
        assert re.fullmatch(r"GET /openapi\.json 200 \d+\.\d ms id=client-id_1\.2:3", line.getMessage())
        entry = json.loads(JsonFormatter().format(line))
        assert {k: entry[k] for k in ("method", "path", "status", "request_id")} == {
            "method": "GET", "path": "/openapi.json", "status": 200, "request_id": "client-id_1.2:3"}
        assert "error" not in entry and isinstance(entry["duration_ms"], float)

    def test_an_unsafe_or_missing_request_id_is_replaced(self):
        for given in (None, "", "a b", "x" * 65, "<script>", "-leading-dash", "caf\u00e9"):
            self.captured.records.clear()
            headers = {} if given is None else {REQUEST_ID_HEADER: given}
            response = self.fetch("/openapi.json", headers=headers)
            sent = response.headers[REQUEST_ID_HEADER]
            assert sent != given and uuid.UUID(hex=sent).hex == sent
            (line,) = self.access_lines()
            assert line.request_id == sent

    def test_each_request_gets_its_own_id(self):
        ids = {self.fetch("/openapi.json").headers[REQUEST_ID_HEADER] for _ in range(3)}
        assert len(ids) == 3

    def test_a_client_error_is_logged_once_with_its_reason(self):
        for method, path, body, status in [
                ("GET", "/no/such/thing", None, 404),
                ("GET", "/v1/images/upload/not-a-uuid", None, 404),
                ("POST", "/v1/images/upload", b"not json %s", 400),
                ("DELETE", "/v1/images", None, 405)]:
            self.captured.records.clear()
            response = self.fetch(path, method=method, body=body,
                                  headers={"Content-Type": "application/json"})
            assert response.code == status
            (line,) = self.lines()
            assert (line.name, line.levelno, line.status) == ("uploader.access", logging.INFO, status)
            assert line.error == json.loads(response.body)["error"]
            assert line.request_id == response.headers[REQUEST_ID_HEADER]
            assert f' error="{line.error[:20]}' in line.getMessage()

    def test_the_access_line_of_a_path_with_a_password_does_not_repeat_it(self):
        response = self.fetch("/go/http://user:s3cret@host.example/x")
        assert response.code == 404 and "s3cret" not in response.body.decode()
        (line,) = self.access_lines()
        for formatter in (UtcFormatter(TEXT_FORMAT), JsonFormatter()):
            written = formatter.format(line)
            assert "s3cret" not in written and "/go/http://***@host.example/x" in written

    def test_a_503_while_stopping_is_a_warning(self):
        self.service.stopping = True
        response = self.fetch("/v1/images/upload", method="POST", body=b'{"urls": []}')
        assert response.code == 503 and response.headers["Retry-After"] == "5"
        (line,) = self.lines()
        assert (line.levelno, line.status) == (logging.WARNING, 503)
        assert "shutting down" in line.error

    def test_a_bug_is_an_error_with_its_traceback_and_the_request_id(self):
        response = self.fetch(f"/v1/images/upload/{uuid.uuid4()}", headers={REQUEST_ID_HEADER: "req-42"})
        assert response.code == 500
        assert "boom" not in response.body.decode()
        bug, line = self.lines()
        assert (bug.name, bug.levelno) == ("uploader.handlers", logging.ERROR)
        assert "req-42" in bug.getMessage() and bug.exc_info[0] is RuntimeError
        assert (line.name, line.levelno, line.status) == ("uploader.access", logging.ERROR, 500)
        assert not hasattr(line, "error")


def test_text_lines_escape_control_characters_and_line_separators():
    evil = "/v1/images/upload/a\u2028FAKE\u0085LINE\nINFO forged\x1b[2J\u2029"
    line = UtcFormatter(TEXT_FORMAT).format(record("GET %s", (evil,)))
    assert len(line.splitlines()) == 1  # str.splitlines breaks at all of them
    assert line.endswith("GET /v1/images/upload/a\\u2028FAKE\\x85LINE\\nINFO forged\\x1b[2J\\u2029")
    entry = JsonFormatter().format(record("GET %s", (evil,), path=evil))
    assert len(entry.splitlines()) == 1 and json.loads(entry)["path"] == evil


def test_a_traceback_keeps_its_lines_but_each_line_is_escaped():
    try:
        raise ValueError("bad\u2028input\x85here")
    except ValueError:
        entry = record("failed", ())
        entry.exc_info = sys.exc_info()
    lines = UtcFormatter(TEXT_FORMAT).format(entry).split("\n")
    assert lines[0].endswith("failed") and lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad\\u2028input\\x85here"
    assert all(len(line.splitlines()) == 1 for line in lines)


def test_no_log_line_repeats_the_userinfo_of_a_url():
    for formatter in (UtcFormatter(TEXT_FORMAT), JsonFormatter()):
        line = formatter.format(record(
            "refused %s", ("http://user:s3cret@host.example/a.png",),
            url="https://tok3n@host.example/", error="see ftp://u:p@w@x.example/f"))
        assert "s3cret" not in line and "tok3n" not in line and "u:p@w" not in line, line
        assert "http://***@host.example/a.png" in line
    entry = json.loads(line)
    assert (entry["url"], entry["error"]) == ("https://***@host.example/",
                                              "see ftp://***@x.example/f")
    for url, shown in [("postgresql://uploader:pw@db.example/x", "postgresql://uploader:***@"),
                       ("postgres://uploader@db.example/x", "postgres://uploader@")]:
        line = UtcFormatter(TEXT_FORMAT).format(record("store: %s", (url,)))
        assert line.endswith(f"store: {shown}db.example/x")  # a database user is kept
