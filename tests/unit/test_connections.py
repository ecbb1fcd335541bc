"""The front end's connections, in-process: a cap below the open-file limit, the longest
waiting connection making way at the cap, and accept errors told once a second."""
import asyncio
import errno
import logging
import socket

import pytest
import tornado.netutil
import tornado.testing
import tornado.web

from uploader.config import config_from_dict
from uploader.connections import (FILES_KEPT, FILES_KEPT_PER_WORKER, GuardedHTTPServer, Tally,
                                  connection_limit, describe_limits, make_server)

CAP = 4
REQUEST = b"GET /hello HTTP/1.1\r\nHost: here\r\n\r\n"


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.finish("hello")


class Held(tornado.web.RequestHandler):
    """Answers only when the test lets it: a connection busy with an answer."""

    async def get(self):
        self.application.settings["held"].append(self)
        await self.application.settings["release"].wait()
        self.finish("released")


def test_connections_stay_below_the_open_file_limit_with_room_for_the_service():
    config = config_from_dict({"workers": {"processes": 4}}, environ={})
    kept = FILES_KEPT + 4 * FILES_KEPT_PER_WORKER
    assert connection_limit(config, 1024) == 1024 - kept
    assert connection_limit(config, 50) == 0
    line = describe_limits(config, 1024)
    assert f"at most {1024 - kept} connections" in line and "open-file limit 1024" in line
    assert "headers within 10 s" in line and "a body within 60 s" in line


class Recorded(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def recorded():
    handler = Recorded()
    logger = logging.getLogger("uploader.connections")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_a_tally_tells_a_flood_once_per_interval_with_its_count(recorded):
    pending = []  # what the event loop would call a second later
    tally = Tally("refused %d connections: %s", later=lambda delay, fn: pending.append(fn))
    for _ in range(1000):
        tally.add("busy")
    assert recorded == ["refused 1 connections: busy"]  # the first at once, the rest counted
    pending.pop(0)()
    assert recorded[1:] == ["refused 999 connections: busy"]
    pending.pop(0)()  # a quiet second: nothing to tell, and the next event is told at once
    assert len(recorded) == 2 and not pending
    tally.add("again")
    assert recorded[2:] == ["refused 1 connections: again"]


class Dummy:
    def __init__(self, closed):
        self.closed = closed

    def close(self):
        self.closed.append(self)


class Waiting:
    """A connection still sending its request, as the server holds it."""

    def __init__(self, closed_by_client=False):
        self.stream = self
        self.closed_by_client = closed_by_client
        self.closed_by_server = False

    def closed(self):
        return self.closed_by_client or self.closed_by_server

    def close(self):
        self.closed_by_server = True


def test_a_connection_its_client_closed_makes_way_before_a_living_one():
    """Under load, a flood's closes reach the server after the next newcomer: those closed
    connections are the room, and the living one waiting (the newcomer before) stays."""
    server = GuardedHTTPServer(tornado.web.Application(), max_connections=2)
    gone, living = Waiting(closed_by_client=True), Waiting()
    server._receiving.update({gone: None, living: None})
    server._connections.update({gone, living})  # (Tornado's own set of them)
    server.connections_open = 2
    assert server._make_way()
    assert not living.closed() and server.connections_open == 1
    server.on_close(gone)  # told of its end at last: it was counted out already
    assert server.connections_open == 1 and living in server._receiving


class FloodedListener:
    """A listening socket with ``waiting`` connections and no file left to accept them: an
    accept fails (EMFILE) until a file is freed, and then the next one succeeds."""

    def __init__(self, waiting):
        self.waiting = waiting
        self.refused_last = False
        self.closed = []
        self.real = socket.socket()

    def fileno(self):
        return self.real.fileno()

    def accept(self):
        if not self.waiting:
            raise BlockingIOError()
        if not self.refused_last:  # the server's next try comes after it freed its spare file
            self.refused_last = True
            raise OSError(errno.EMFILE, "Too many open files")
        self.refused_last = False
        self.waiting -= 1
        return Dummy(self.closed), ("127.0.0.1", 1)


def still_open(client) -> bool:
    """True while the server has neither closed ``client`` nor sent it anything."""
    try:
        client.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class ConnectionGuardsTest(tornado.testing.AsyncTestCase):
    def setUp(self):
        super().setUp()
        self.release, self.held = asyncio.Event(), []
        app = tornado.web.Application([(r"/hello", Hello), (r"/held", Held)],
                                      release=self.release, held=self.held)
        self.server = GuardedHTTPServer(app, max_connections=CAP)
        sock, self.port = tornado.testing.bind_unused_port()
        self.server.add_sockets([sock])
        self.clients = []

    def tearDown(self):
        self.release.set()
        for client in self.clients:
            client.close()
        self.server.stop()
        super().tearDown()

    async def connect(self, first_bytes=b""):
        client = socket.create_connection(("127.0.0.1", self.port))
        client.setblocking(False)
        self.clients.append(client)
        if first_bytes:
            client.send(first_bytes)
        await asyncio.sleep(0.01)
        return client

    async def answer(self, client, timeout=10.0):
        """What the server sends until it closes or a whole answer is in (b"" if closed)."""
        loop = asyncio.get_running_loop()
        data = b""
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
            if data.startswith(b"HTTP/1.1") and data.endswith((b"hello", b"released")):
                return data
        raise AssertionError(f"no answer and not closed; got {data!r}")

    async def settle(self, predicate):
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the server did not get there")

    @tornado.testing.gen_test(timeout=30)
    async def test_at_the_cap_the_connection_waiting_longest_makes_way(self):
        slow = [await self.connect(b"GET /hello HTTP/1.1\r\nHost: sl") for _ in range(CAP * 3)]
        await self.settle(lambda: self.server.connections_open == CAP)
        fresh = await self.connect(REQUEST)
        assert (await self.answer(fresh)).endswith(b"hello")
        assert self.server.connections_open <= CAP
        # The first slow ones were closed to make way, oldest first; the newest still wait.
        assert await self.answer(slow[0]) == b""
        assert still_open(slow[-1])

    @tornado.testing.gen_test(timeout=30)
    async def test_when_every_connection_is_busy_answering_a_new_one_is_closed(self):
        busy = [await self.connect(b"GET /held HTTP/1.1\r\nHost: here\r\n\r\n") for _ in range(CAP)]
        await self.settle(lambda: len(self.held) == CAP)
        turned_away = await self.connect(REQUEST)
        assert await self.answer(turned_away) == b""
        self.release.set()
        for client in busy:  # the busy ones were never cut short
            assert (await self.answer(client)).endswith(b"released")
        later = await self.connect(REQUEST)  # and once they are done, there is room again
        assert (await self.answer(later)).endswith(b"hello")

    @tornado.testing.gen_test(timeout=30)
    async def test_accept_errors_are_a_line_a_second_with_a_count_not_a_traceback_each(self):
        told = []
        self.server.accept_failed.later = lambda delay, fn: told.append(fn)  # a second on
        listener = FloodedListener(waiting=50)
        with self.assertLogs("uploader.connections", level="WARNING") as logs:
            self.server._accept(listener, listener.fileno(), 0)  # noqa: SLF001
            assert len(logs.records) == 1 and logs.records[0].exc_info is None
            told.pop(0)()
        assert "could not accept 1 connection(s): Too many open files" in logs.output[0]
        assert "could not accept 49 connection(s): Too many open files" in logs.output[1]
        # Each waiting client was told no (closed) at once: the queue is empty, nothing spins.
        assert len(listener.closed) == 50 and listener.waiting == 0
        assert self.server.connections_open == 0
        listener.real.close()


class ServerTimeoutsTest(tornado.testing.AsyncTestCase):
    """The server the service makes closes, after the configured timeouts, connections that
    do not finish their headers or their body (Tornado's default waits an hour)."""

    @tornado.testing.gen_test(timeout=30)
    async def test_headers_and_bodies_that_do_not_come_in_time_close_the_connection(self):
        config = config_from_dict({"server": {"header_timeout_seconds": 0.3,
                                              "body_timeout_seconds": 0.3}}, environ={})
        server = make_server(tornado.web.Application([(r"/hello", Hello)]), config, 4096)
        assert server.max_connections == connection_limit(config, 4096)
        sock, port = tornado.testing.bind_unused_port()
        server.add_sockets([sock])
        try:
            for first_bytes in (b"GET /hello HTTP/1.1\r\nHost: sl",
                                b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nab"):
                client = socket.create_connection(("127.0.0.1", port))
                client.sendall(first_bytes)
                client.setblocking(False)
                for _ in range(3000):  # at most 30 s: it closes long before, or never
                    if not still_open(client):
                        break
                    await asyncio.sleep(0.01)
                assert not still_open(client), first_bytes
                client.close()
        finally:
            server.stop()


class MalformedRequestsTest(tornado.testing.AsyncTestCase):
    """A flood of malformed requests is a line a second in the log, with its count, not a
    line each (Tornado writes one per request)."""

    @tornado.testing.gen_test(timeout=30)
    async def test_a_flood_of_malformed_requests_is_tallied_not_logged_each(self):
        lines, tornados = Recorded(), Recorded()
        logging.getLogger("uploader.connections").addHandler(lines)
        logging.getLogger("tornado.general").addHandler(tornados)
        levels = {name: logging.getLogger(name).level
                  for name in ("uploader.connections", "tornado.general")}
        for name in levels:
            logging.getLogger(name).setLevel(logging.INFO)
        config = config_from_dict({}, environ={})
        server = make_server(tornado.web.Application([(r"/hello", Hello)]), config, 4096)
        sock, port = tornado.testing.bind_unused_port()
        server.add_sockets([sock])
        try:
            for n in range(30):
                client = socket.create_connection(("127.0.0.1", port))
                client.sendall(b"NOT A REQUEST %d\r\n\r\n" % n)
                client.setblocking(False)
                for _ in range(3000):  # it closes at once
                    if not still_open(client):
                        break
                    await asyncio.sleep(0.01)
                client.close()
            assert tornados.lines == []  # none of Tornado's lines reached a handler
            told = [line for line in lines.lines if line.startswith("dropped")]
            assert len(told) == 1 and told[0].startswith("dropped 1 connection(s)")
            assert "Malformed HTTP message" in told[0]
        finally:
            server.stop()  # tells what came in the quiet second: the other 29
            logging.getLogger("uploader.connections").removeHandler(lines)
            logging.getLogger("tornado.general").removeHandler(tornados)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
        told = [line for line in lines.lines if line.startswith("dropped")]
        assert told[1:] == [told[1]] and told[1].startswith("dropped 29 connection(s)")
