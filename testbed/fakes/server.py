"""What the in-process fake servers share: a stdlib ``ThreadingHTTPServer`` on a loopback
address (IPv4 or IPv6, plain or TLS) served by a background thread, its URL, and a
``stopping`` event that ends every deliberate wait at once when the server stops.

A subclass names its request handler (``handler``), the attribute through which that
handler reaches the fake (``handler_attribute``), its server class (``server_base``) and
the name of its thread (``thread_name``).
"""
import http.client
import socket
import threading


class RequestHeaders(http.client.HTTPMessage):
    """A request's headers, parsed as nothing but headers (a handler's ``MessageClass``).

    The stdlib parses them as an e-mail message, and one whose Content-Type is multipart
    gets a regular expression compiled for its boundary, although no body is ever fed to
    it. A client picks a new boundary per upload, so the fake Imgur compiled one per
    upload: over a third of its CPU, which on a small machine the service measured beside
    it paid for. Reading the header is unchanged: ``headers["Content-Type"]`` is as sent."""

    def get_content_type(self) -> str:
        return "text/plain"


class LoopbackServer:
    handler: type
    handler_attribute: str
    server_base: type
    thread_name: str

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context=None):
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self._stopping = threading.Event()
        self._server = self._thread = None

    def start(self):
        self._stopping.clear()
        handler = type("Handler", (self.handler,), {self.handler_attribute: self})
        server_class = type("Server", (self.server_base,), {
            "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET})
        self._server = server_class((self.host, self.port), handler)
        if self.ssl_context is not None:
            # The handshake then happens on the first read, in the request's thread.
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"{self.thread_name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + ("" if path.startswith("/") else "/") + path
