"""What a request may carry, checked in-process (the real ``make_app``, a stand-in service):
bodies are refused past their route's limit before they are read, request targets with
control characters are refused, and no answer repeats a URL's userinfo."""
import json
import socket
import uuid

import tornado.iostream
import tornado.testing
import tornado.web

from uploader.config import Config, LocalConfig, ServerConfig
from uploader.handlers import SMALL_BODY_BYTES

from tests.inprocess import AppTestCase

UPLOAD_LIMIT = 20_000
HUGE = 50 * 1024 * 1024


class Untouched:
    """A store no request below may reach: a body must be refused before any handler runs."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was asked for {name}")


class RequestLimitsTest(AppTestCase):
    def stand_in(self):
        service = super().stand_in()
        service.config = Config(server=ServerConfig(max_body_bytes=UPLOAD_LIMIT),
                                local=LocalConfig(directory=self.directory))
        service.store, service.readers = Untouched(), None
        return service

    async def open_stream(self):
        stream = tornado.iostream.IOStream(socket.socket())
        await stream.connect(("127.0.0.1", self.get_http_port()))
        return stream

    async def status_of(self, stream) -> int:
        head = await stream.read_until(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    @tornado.testing.gen_test
    async def test_a_declared_body_over_the_limit_is_refused_before_a_byte_of_it_is_sent(self):
        job = uuid.uuid4()
        for method, path, limit in [("POST", "/healthz", SMALL_BODY_BYTES),
                                    ("POST", f"/v1/images/upload/{job}/retry", SMALL_BODY_BYTES),
                                    ("PUT", "/i/AbCd123.png", SMALL_BODY_BYTES),
                                    ("POST", "/no/such/route", SMALL_BODY_BYTES),
                                    ("POST", "/v1/images/upload", UPLOAD_LIMIT)]:
            stream = await self.open_stream()
            await stream.write(f"{method} {path} HTTP/1.1\r\nHost: here\r\nContent-Type: "
                               f"application/json\r\nContent-Length: {HUGE}\r\n\r\n".encode())
            assert await self.status_of(stream) == 413, path  # and not one body byte sent
            body = await stream.read_until_close()
            assert json.loads(body)["error"] == f"body is {HUGE} bytes; the limit is {limit}"
            stream.close()

    @tornado.testing.gen_test
    async def test_a_chunked_body_is_cut_off_at_the_limit(self):
        chunk = b"x" * 4096
        for path, limit in [("/healthz", SMALL_BODY_BYTES),
                            (f"/v1/images/upload/{uuid.uuid4()}/retry", SMALL_BODY_BYTES),
                            ("/v1/images/upload", UPLOAD_LIMIT)]:
            stream = await self.open_stream()
            await stream.write(f"POST {path} HTTP/1.1\r\nHost: here\r\nContent-Type: application/"
                               "json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            answer = stream.read_until(b"\r\n\r\n")
            sent = 0
            try:
                while not answer.done() and sent < HUGE:
                    await stream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except tornado.iostream.StreamClosedError:
                pass
            head = await answer
            assert head.startswith(b"HTTP/1.1 413 "), path
            # Stopped long before 50 MB (what was sent lies mostly in the kernel's buffers).
            assert sent < HUGE / 4, (path, sent)
            body = await stream.read_until_close()
            assert json.loads(body)["error"] == f"body is over the limit of {limit} bytes"
            stream.close()

    def test_every_route_streams_its_body_so_none_is_buffered_whole(self):
        app = self.get_app()
        handlers = {rule.target for rule in app.wildcard_router.rules} | {
            app.settings["default_handler_class"]}
        assert len(handlers) >= 8
        for handler in handlers:
            assert getattr(handler, "_stream_request_body", False), handler.__name__

    @tornado.testing.gen_test
    async def test_a_request_target_with_a_control_character_is_refused_with_its_reason(self):
        async def answer_to(raw):
            stream = await self.open_stream()
            await stream.write(b"GET " + raw + b" HTTP/1.1\r\nHost: here\r\n"
                               b"Connection: close\r\n\r\n")
            return await stream.read_until_close()

        # C0 (an escape sequence for the terminal of whoever reads the log): Tornado itself
        # refuses the request line, before any handler, with a bare 400.
        assert (await answer_to(b"/healthz?q=\x1b[2J")).startswith(b"HTTP/1.1 400 ")
        for raw, where in [(b"/v1/images/upload/\x85x", 18), (b"/healthz?q=a\x9bb", 12),
                           (b"/\xe2\x80\xa8", 2)]:  # U+2028 as UTF-8: its bytes are C1
            answer = await answer_to(raw)
            assert answer.startswith(b"HTTP/1.1 400 "), raw
            error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            assert error.startswith("the request target contains a control character (U+00")
            assert error.endswith(f"at position {where}")

    def test_no_answer_repeats_a_password_from_a_url(self):
        response = self.fetch("/v1/images/upload/http://user:s3cret-pw@host.example/x")
        assert response.code == 404
        assert "s3cret-pw" not in response.body.decode()
        assert json.loads(response.body)["error"] == \
            "no such resource: /v1/images/upload/http://***@host.example/x"

    def test_a_cursor_out_of_range_is_refused_before_the_store(self):
        for query in ("before=9999999999999999999", "before=9223372036854775808",
                      "before=" + "9" * 40, "before=%C2%B2", "limit=%C2%B2"):
            response = self.fetch(f"/v1/images/upload?{query}")
            assert response.code == 400, query
            assert json.loads(response.body)["error"].startswith(("before must be", "limit must"))
