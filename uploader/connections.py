"""The front end's connections: no stranger can take the service off the air with them.

- Open connections are capped below the open-file limit (``RLIMIT_NOFILE``), so the
  service keeps room for its own files: the store and its database connections, the
  pipes to its worker processes and manager, the log, the images it is serving.
- At the cap, a new connection takes the place of the one that has waited longest for
  its request to arrive (headers or body still coming: a slow client, or an idle
  keep-alive one). When every connection is busy with an answer, the new one is closed
  at once. So a flood of slow connections costs each of them its place, never the
  service its health check.
- Headers must arrive within ``server.header_timeout_seconds`` of the connection opening
  or of its last answer, which is also how long an idle keep-alive connection is kept;
  a body within ``server.body_timeout_seconds`` (Tornado's own timeouts).
- An accept that fails (too many open files, after all) takes the waiting connection
  off the queue and closes it, and the failures are logged at most once a second, with
  a count: never a traceback each.
"""
import collections
import errno
import functools
import logging
import os
import resource

import tornado.httpserver
import tornado.httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger(__name__)

ACCEPTS_PER_TURN = 128  # as Tornado's own accept loop: others get the event loop in between
ACCEPT_PAUSE_SECONDS = 0.1  # after an accept error that closing a connection cannot help
FILES_KEPT = 100  # files the front end keeps for itself, beside those of its workers ...
FILES_KEPT_PER_WORKER = 4  # ... whose pipes, sentinels and manager connections count too
UNLIMITED_FILES = 1 << 20  # what we assume of RLIM_INFINITY


def open_file_limit() -> int:
    """This process's soft limit on open files (``ulimit -n``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def files_kept(config) -> int:
    """Open files kept for the service's own use, out of the open-file limit."""
    return FILES_KEPT + FILES_KEPT_PER_WORKER * config.workers.processes


def connection_limit(config, open_files: int) -> int:
    """Most client connections open at once under a limit of ``open_files``."""
    return max(open_files - files_kept(config), 0)


def describe_limits(config, open_files: int) -> str:
    """One line for the log and ``--check-config``."""
    server = config.server
    return (f"at most {connection_limit(config, open_files)} connections at once (open-file "
            f"limit {open_files}, {files_kept(config)} kept for the service's own files); "
            f"headers within {server.header_timeout_seconds:g} s, "
            f"a body within {server.body_timeout_seconds:g} s")


def make_server(app, config, open_files: int) -> "GuardedHTTPServer":
    """The front end's HTTP server for ``app``, with the guards and timeouts ``config`` sets."""
    server = config.server
    return GuardedHTTPServer(app, max_connections=connection_limit(config, open_files),
                             idle_connection_timeout=server.header_timeout_seconds,
                             body_timeout=server.body_timeout_seconds,
                             max_body_size=server.max_body_bytes)


class Tally:
    """Counts an event and logs it at most once per ``interval``, with the count since the
    last line: a flood of the same event is a line a second, not a line each."""

    def __init__(self, message: str, *, interval: float = 1.0, later=None,
                 level: int = logging.WARNING):
        self.message = message  # with %d for the count and %s for the last detail
        self.interval = interval
        self.level = level
        self.later = later or (lambda delay, fn: IOLoop.current().call_later(delay, fn))
        self.count = 0
        self.detail = ""
        self.quiet = False  # while quiet, events are counted, and told when it ends

    def add(self, detail: str = "") -> None:
        self.count += 1
        self.detail = detail
        if not self.quiet:
            self._tell()

    def flush(self) -> None:
        if self.count:
            log.log(self.level, self.message, self.count, self.detail)
            self.count = 0

    def _tell(self) -> None:
        self.flush()
        self.quiet = True
        self.later(self.interval, self._end_quiet)

    def _end_quiet(self) -> None:
        self.quiet = False
        if self.count:  # more came meanwhile: tell them, and be quiet another interval
            self._tell()


class TalliedRequestErrors(logging.Filter):
    """On Tornado's ``tornado.general`` logger: its line for each malformed request or body
    that did not come in time goes to a ``Tally`` instead (a stranger sending them by the
    thousand would otherwise write a line each). Other lines pass as they are."""

    TALLIED = ("Malformed HTTP message from", "Timeout reading body from")

    def __init__(self, tally: "Tally"):
        super().__init__()
        self.tally = tally

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.TALLIED):
            return True
        self.tally.add(record.getMessage())
        return False


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with the guards above; ``max_connections`` is the cap.

    It accepts connections itself (Tornado's accept loop lets an accept error escape as a
    traceback, again and again while the connection waits) and watches each connection
    from the start of a request until its body is in: those are the ones that may make
    way for a newcomer."""

    def initialize(self, request_callback, *, max_connections: int, **settings):
        super().initialize(request_callback, **settings)
        self.max_connections = max_connections
        self.connections_open = 0  # connections handed to Tornado and not yet closed
        self._receiving = collections.OrderedDict()  # connection -> None, longest waiting first
        self._made_way = set()  # connections closed for a newcomer, not yet seen closing
        self._listening = {}  # fd -> listening socket
        self._spare = open(os.devnull, "rb")  # closed to accept one when no file is left
        self.made_way = Tally("closed %d connection(s) still sending a request, to make "
                              "way for new ones (%s)")
        self.refused = Tally("refused %d connection(s): %s")
        self.accept_failed = Tally("could not accept %d connection(s): %s")
        self.request_errors = TalliedRequestErrors(Tally(
            "dropped %d connection(s) for a malformed request or a body too slow; the "
            "last: %s", level=logging.INFO))

    # -- listening ---------------------------------------------------------------------------
    def add_sockets(self, sockets) -> None:
        logging.getLogger("tornado.general").addFilter(self.request_errors)  # until stop()
        loop = IOLoop.current()
        for sock in sockets:
            sock.setblocking(False)
            self._listening[sock.fileno()] = sock
            loop.add_handler(sock, functools.partial(self._accept, sock), IOLoop.READ)

    def stop(self) -> None:
        loop = IOLoop.current()
        for sock in self._listening.values():
            loop.remove_handler(sock)
            sock.close()
        self._listening.clear()
        self._spare.close()
        for tally in (self.made_way, self.refused, self.accept_failed, self.request_errors.tally):
            tally.flush()
        logging.getLogger("tornado.general").removeFilter(self.request_errors)

    def _accept(self, sock, fd, events) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            if sock.fileno() < 0:  # stopped meanwhile
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if not self._accept_failed(sock, exc):
                    return
                continue
            if self.connections_open >= self.max_connections and not self._make_way():
                connection.close()
                self.refused.add(f"all {self.max_connections} connections are busy answering")
                continue
            self._serve(connection, address)

    def _serve(self, connection, address) -> None:
        self.connections_open += 1
        try:
            stream = IOStream(connection, max_buffer_size=self.max_buffer_size,
                              read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)
        except Exception:
            self.connections_open -= 1
            connection.close()
            log.exception("could not serve a connection from %s", address)

    def _accept_failed(self, sock, exc: OSError) -> bool:
        """Tell the failure (at most once a second); True to go on accepting now."""
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EMFILE:
            # No file left to accept with: give up the spare for a moment, so the waiting
            # client is told no (closed) and the queue does not wake us again and again.
            self._spare.close()
            try:
                sock.accept()[0].close()
            except OSError:
                pass
            finally:
                self._spare = open(os.devnull, "rb")
            self.accept_failed.add(f"{reason} (open-file limit {open_file_limit()}, "
                                   f"{self.connections_open} connections open)")
            return True
        # ENFILE, ENOBUFS, ENOMEM: closing one of ours would not help; pause a moment.
        self.accept_failed.add(reason)
        loop = IOLoop.current()
        loop.remove_handler(sock)

        def resume():
            if sock.fileno() >= 0:
                loop.add_handler(sock, functools.partial(self._accept, sock), IOLoop.READ)

        loop.call_later(ACCEPT_PAUSE_SECONDS, resume)
        return False

    # -- the connections ---------------------------------------------------------------------
    def _make_way(self) -> bool:
        """Close the connection that has waited longest for its request; False if none is.
        One its client has closed already, whose end the server has not yet been told of,
        is room too: counted out now, it takes no living connection's place (under load the
        ends of a flood of closed connections arrive after the next newcomer, which would
        otherwise be closed for them)."""
        if not self._receiving:
            return False
        connection, _ = self._receiving.popitem(last=False)
        if not connection.stream.closed():
            connection.stream.close()
            self.made_way.add(f"at most {self.max_connections} at once")
        self._made_way.add(connection)  # counted out here, not again when it is closed
        self.connections_open -= 1
        return True

    def start_request(self, server_conn, request_conn):
        self._receiving.pop(server_conn, None)
        self._receiving[server_conn] = None  # waiting for this request from now on
        delegate = super().start_request(server_conn, request_conn)
        return _Received(delegate, lambda: self._receiving.pop(server_conn, None))

    def on_close(self, server_conn) -> None:
        self._receiving.pop(server_conn, None)
        if server_conn in self._made_way:
            self._made_way.discard(server_conn)  # counted out when it was closed
        else:
            self.connections_open -= 1
        super().on_close(server_conn)


class _Received(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through, and says when its body is all in (or the connection gone)."""

    def __init__(self, delegate, done):
        self.delegate = delegate
        self.done = done

    def headers_received(self, start_line, headers):
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self.delegate.data_received(chunk)

    def finish(self):
        self.done()
        return self.delegate.finish()

    def on_connection_close(self):
        self.done()
        return self.delegate.on_connection_close()
