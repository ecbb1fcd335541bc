"""Helpers for tests that run the real service (``python -m uploader``) as a subprocess."""
import contextlib
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent

# Fetching is allowed on loopback (the fakes live there) and denied everywhere else, so no
# test can make the service connect beyond this machine, whatever URL it names.
EVERYWHERE_BUT_LOOPBACK = [
    str(network) for everything, loopback in [("0.0.0.0/0", "127.0.0.0/8"), ("::/0", "::1/128")]
    for network in ipaddress.ip_network(everything).address_exclude(ipaddress.ip_network(loopback))]
STARTED = re.compile(r"Starting Server on (http://\S+)")


@contextlib.contextmanager
def loopback_only(monkeypatch):
    """``with loopback_only(monkeypatch) as made:`` every (address, port) any socket of this
    process connects to, in ``made``; a connection anywhere but 127.0.0.0/8 or ::1 fails
    the test at once, so a refusal test can prove that no connection was even tried."""
    import pytest

    made, strays = [], []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            loopback = False  # a name: nothing here may connect by name
        if not loopback:
            strays.append(address)
            pytest.fail(f"attempted a connection to non-loopback {address}")
        made.append((host, address[1]))

    def connect(sock, address):
        check(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield made
    assert strays == []  # even if something swallowed the failure above


def polling_pauses(first: float = 0.02, longest: float = 0.2):
    """Pauses between polls: short at first (most waits end soon), then ever longer, so a
    long wait does not spend the suite's CPU asking 20 times a second."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 1.5, longest)


def write_config(directory: Path, **sections) -> Path:
    """A config file for a test: fast, loopback-friendly defaults plus ``sections``."""
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "workers": {"processes": 2, "uploads_per_process": 4, "shutdown_grace_seconds": 5},
        "image_host": "local",
        "imgur": {"rate_limit": {"uploads_per_second": 0, "burst": 1},
                  "backoff": {"base_seconds": 0.05, "max_seconds": 0.2}},
        "fetch": {"allow_private_networks": True, "timeout_seconds": 5,
                  "denied_hosts": EVERYWHERE_BUT_LOOPBACK},
        "storage": {"path": str(directory / "store.sqlite3")},
        "local": {"directory": str(directory / "images")},
        "logging": {"level": "INFO"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ServiceProcess:
    """The service in its own process group; ``stop()``/``kill()`` and cleanup of every child."""

    def __init__(self, config_path: Path, *, command=None, env=None, log_path=None,
                 preexec_fn=None):
        self.config_path = config_path
        self.preexec_fn = preexec_fn  # run in the child before the service starts
        self.command = command or [sys.executable, "-m", "uploader", "--config", str(config_path)]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or config_path.with_suffix(".log")
        self.url = None
        self.proc = None

    def start(self, timeout: float = 30.0) -> "ServiceProcess":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self.log, cwd=REPO, env=self.env,
            start_new_session=True, preexec_fn=self.preexec_fn,
        )
        found = threading.Event()

        def read_stdout():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                match = STARTED.search(line)
                if match and not found.is_set():
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise AssertionError(f"service did not start; log:\n{self.read_log()}")
        return self

    def read_log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def children(self):
        """Pids of every live process in the service's process group (zombies do not count)."""
        if self.proc is None:
            return []
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
        return [int(pid) for pid, pgid, stat in (line.split() for line in out.splitlines())
                if int(pgid) == self.proc.pid and not stat.startswith("Z")]

    def signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.cleanup()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a power cut or OOM killer would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.cleanup()

    def cleanup(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self.log.close()

    # -- API helpers -----------------------------------------------------------
    def post_job(self, urls) -> str:
        answer = requests.post(f"{self.url}/v1/images/upload", json={"urls": urls}, timeout=10)
        assert answer.status_code == 202, answer.text
        return answer.json()["jobId"]

    def job(self, job_id) -> dict:
        answer = requests.get(f"{self.url}/v1/images/upload/{job_id}", timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_job(self, job_id, timeout: float = 30.0, on_poll=None) -> dict:
        deadline = time.monotonic() + timeout
        pauses = polling_pauses()
        while True:
            job = self.job(job_id)
            if on_poll:
                on_poll(job)
            if job["status"] == "complete":
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job not complete after {timeout} s: {json.dumps(job)[:2000]}")
            time.sleep(next(pauses))

    def query(self, sql: str, params=()) -> list:
        """Rows of a query on this service's store, whichever backend it is (``?`` marks)."""
        storage = yaml.safe_load(Path(self.config_path).read_text())["storage"]
        if storage.get("url"):
            import psycopg
            with psycopg.connect(storage["url"]) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        with contextlib.closing(sqlite3.connect(storage["path"])) as conn:
            return conn.execute(sql, params).fetchall()

    def links(self) -> list:
        answer = requests.get(f"{self.url}/v1/images", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()["uploaded"]


def wait_until(predicate, timeout=20.0, interval=None):
    """``predicate()``'s first true value; asked ever less often (up to every 0.2 s: most
    predicates ask the service over HTTP, and a suite's polling costs CPU), or every
    ``interval`` seconds if given."""
    deadline = time.monotonic() + timeout
    pauses = polling_pauses() if interval is None else itertools.repeat(interval)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(next(pauses))
    raise AssertionError("condition not met in time")


def worker_pids(service):
    return requests.get(f"{service.url}/healthz", timeout=5).json()["workers"]["pids"]


def slow_urls(image_source, prefix, count):
    image_source.latency = 0.15  # every fetch takes a while, so work is in flight when we strike
    return [image_source.url_for(f"/img/{prefix}-{n}.png") for n in range(count)]


def imgur_config(fake_imgur, **imgur):
    settings = {"api_url": fake_imgur.url, "access_token": "test-token",
                "rate_limit": {"uploads_per_second": 0, "burst": 1},
                "backoff": {"base_seconds": 0.05, "max_seconds": 0.2}}
    settings.update(imgur)
    return {"image_host": "imgur", "imgur": settings}


def most_in_window(times, window=1.0):
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))
