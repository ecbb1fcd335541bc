"""A throwaway PostgreSQL server for tests, drills and benchmarks.

Debian's server binaries (package ``postgresql``), ``initdb`` into a temporary directory
(run as the ``postgres`` user when we are root: PostgreSQL refuses to run as root),
trust authentication, a free loopback port, fsync off (commits still reach the operating
system before they are acknowledged, so a killed server loses none). ``kill()`` stops it the way a
crash would (``pg_ctl stop -m immediate``) and ``start()`` brings it back on the same
port and data, so tests can take the database away under a running service.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start (the message says why)."""


def server_binaries() -> Path:
    """The newest installed PostgreSQL's bin directory (where ``initdb`` and ``pg_ctl`` are)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("PostgreSQL server binaries not found: install Debian's "
                              "`postgresql` package (.ci/run does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``with PostgresServer() as pg: url = pg.create_database()``."""

    def __init__(self, port: int = 0, *, max_connections: int = 400, extensions=()):
        """``extensions``: preloaded libraries (``shared_preload_libraries``), such as
        ``pg_stat_statements``."""
        self.bin = server_binaries()
        self.port = port or free_port()
        self.max_connections = max_connections
        self.extensions = tuple(extensions)
        self.root = Path(tempfile.mkdtemp(prefix="uploader-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = None  # run the server as this user (None: as ourselves)
        if os.geteuid() == 0:
            self.user = "postgres"
            account = pwd.getpwnam(self.user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._initdb()

    def _run(self, *command, check=True):
        if self.user:
            command = ("runuser", "-u", self.user, "--", *command)
        done = subprocess.run(command, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(command)} failed ({done.returncode}):\n"
                                      f"{done.stdout}{done.stderr}{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _initdb(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust",
                  "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync")

    def start(self) -> "PostgresServer":
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   f"-c full_page_writes=off -c max_connections={self.max_connections}")
        if self.extensions:
            options += f" -c shared_preload_libraries={','.join(self.extensions)}"
        self._run(str(self.bin / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.log), "-o", options)
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w",
                  check=False)

    def kill(self) -> None:
        """Stop at once, like a crash: no shutdown checkpoint, clients cut off."""
        self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate",
                  "-w")

    def pids(self) -> list:
        """The server's processes (the postmaster and its children), for measuring CPU."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)],
                                  capture_output=True, text=True).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str = "") -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate",
                  "-w", check=False)  # its data goes next: nothing to save
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.destroy()
