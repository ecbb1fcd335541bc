"""Loopback servers that speak raw bytes (plain or TLS), and resolvers that name them: for
the tests of the fetcher and of webhooks, which must see exactly what goes over the wire."""
import contextlib
import socket
import threading


# A self-signed certificate for image.test and 127.0.0.1, valid 2000-2999 (test use only).
CERT = """-----BEGIN CERTIFICATE-----
MIIBXjCCAQSgAwIBAgIUJYVIGWGUrHflKEkFIckI/YRTCTcwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKaW1hZ2UudGVzdDAgFw0wMDAxMDEwMDAwMDBaGA8yOTk5MTIz
MTAwMDAwMFowFTETMBEGA1UEAwwKaW1hZ2UudGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABC1zQivXtw7CFT6JSkp/6rA5DvUNB2J2GyY8sWCFuext97teZzpm
qS1RAfGjx44psQ7VdWcgVVP+ncBlQ1paeYijMDAuMA8GA1UdEwEB/wQFMAMBAf8w
GwYDVR0RBBQwEoIKaW1hZ2UudGVzdIcEfwAAATAKBggqhkjOPQQDAgNIADBFAiA2
/26WXf7PAhdx+NUX0T6/jM68P7IQuzmeTKXenFxNOgIhAJOOnK55f07a3cYWLxnM
MdGG8X25Cq2N+Ct2fXnAWzRA
-----END CERTIFICATE-----
"""


KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmVCgVpevcsdEWWGr
W4UvSZwsRNnoyWca46t8/fN1aiGhRANCAAQtc0Ir17cOwhU+iUpKf+qwOQ71DQdi
dhsmPLFghbnsbfe7Xmc6ZqktUQHxo8eOKbEO1XVnIFVT/p3AZUNaWnmI
-----END PRIVATE KEY-----
"""


def resolver_for(mapping, calls=None):
    """A resolver answering from ``mapping`` (name -> list, or callable for changing answers)."""
    def resolve(host, port):
        if calls is not None:
            calls.append(host)
        answer = mapping.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer() if callable(answer) else list(answer)
    return resolve


@contextlib.contextmanager
def raw_server(handle, host="127.0.0.1", port=0):
    """A one-connection-at-a-time TCP server running ``handle(conn)`` in a thread."""
    listener = socket.create_server((host, port))
    stop = threading.Event()

    def loop():
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                try:
                    handle(conn, stop)
                except OSError:
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
