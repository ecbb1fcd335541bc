"""A stranger cannot starve the service: the real service under a lowered open-file limit,
flooded with connections that dribble their headers and with bodies far over the limit."""
import re
import resource
import socket
import uuid

import requests

from uploader.config import load_config
from uploader.connections import connection_limit

from tests.support import ServiceProcess

OPEN_FILES = 256
HUGE = 50 * 1024 * 1024
CHUNK = 64 * 1024


def lowered_open_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024


def dribbler(address):
    """A connection that has sent part of its request's headers, and goes on slowly."""
    client = socket.create_connection(address)
    client.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
    return client


def closed_by_server(client, timeout=30.0) -> bool:
    client.settimeout(timeout)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_slow_connections_and_huge_bodies_leave_it_answering(make_config):
    # Headers may take two minutes here: the flood stays unless the cap makes way.
    path = make_config(server={"header_timeout_seconds": 120})
    service = ServiceProcess(path, preexec_fn=lowered_open_files).start()
    address = ("127.0.0.1", int(service.url.rsplit(":", 1)[1]))
    clients = []
    try:
        health = requests.get(f"{service.url}/healthz", timeout=10).json()
        # The start names the store and the instance.
        config = load_config(path, environ={})
        store = (f"PostgreSQL at {config.storage.url}" if config.storage.url
                 else f"SQLite at {config.storage.path}")
        assert f"instance {health['instance']}; store: {store}" in service.read_log()
        cap = connection_limit(config, OPEN_FILES)
        assert f"at most {cap} connections at once (open-file limit {OPEN_FILES}" \
            in service.read_log()

        # More slow connections than the cap, then more dribbled bytes on each: the
        # health check still answers, and the oldest made way for the newer.
        clients = [dribbler(address) for _ in range(cap + 150)]
        for client in clients:
            try:
                client.send(b"x")
            except OSError:
                pass  # made way already
        answer = requests.get(f"{service.url}/healthz", timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        assert closed_by_server(clients[0])
        for client in clients:
            client.close()

        # Bodies far over the limit: answered 413 before they are sent, or cut off.
        before = resident_bytes(service.proc.pid)
        for target in ("/healthz", f"/v1/images/upload/{uuid.uuid4()}/retry"):
            with socket.create_connection(address) as client:
                client.sendall(f"POST {target} HTTP/1.1\r\nHost: here\r\nContent-Type: "
                               f"application/json\r\nContent-Length: {HUGE}\r\n\r\n".encode())
                assert client.recv(4096).startswith(b"HTTP/1.1 413 "), target
        with socket.create_connection(address) as client:
            client.sendall(b"POST /v1/images/upload/%s/retry HTTP/1.1\r\nHost: here\r\n"
                           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                           % str(uuid.uuid4()).encode())
            sent = 0
            try:
                while sent < HUGE:
                    client.sendall(b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK))
                    sent += CHUNK
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert sent < HUGE / 2  # cut off; what was sent lay mostly in kernel buffers
        assert resident_bytes(service.proc.pid) - before < 20 * 1024 * 1024

        log = service.read_log()
        assert "Traceback" not in log and "could not accept" not in log
        made_way = [line for line in log.splitlines() if "to make way for new ones" in line]
        assert 1 <= len(made_way) <= 10  # a line a second with a count, not a line each
    finally:
        for client in clients:
            client.close()
        service.stop()
