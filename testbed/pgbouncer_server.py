"""A throwaway PgBouncer in transaction pooling mode, in front of a test PostgreSQL.

Debian's ``pgbouncer`` (``.ci/run`` installs it), run as the ``postgres`` user when we
are root (it refuses to run as root), with an ini file of its own in a temporary
directory: ``auth_type = trust`` on a free loopback port, every database of the server
behind it, ``pool_mode = transaction``: the way teams share one database among many
replicas, and where session state (prepared statements, ``SET``, ``LISTEN``) breaks.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .postgres_server import PostgresUnavailable, free_port

BINARY = "/usr/sbin/pgbouncer"


class PgBouncer:
    """``with PgBouncer(postgres) as bouncer: url = bouncer.url(database)``."""

    def __init__(self, postgres, *, pool_size: int = 20):
        if not os.path.exists(BINARY):
            raise PostgresUnavailable(f"{BINARY} not found: install Debian's `pgbouncer` "
                                      "package (.ci/run does it)")
        self.postgres = postgres
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="uploader-pgbouncer-"))
        self.log = self.root / "pgbouncer.log"
        self.pidfile = self.root / "pgbouncer.pid"
        (self.root / "users.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={postgres.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 2000\nmax_db_connections = 0\n"
            # after a failed login to the server, try again within a second (not 15 s), and
            # answer a query that waits for a server connection with an error after 10 s
            # (not 120 s): what docs/operating-postgresql.md advises
            "server_login_retry = 1\nquery_wait_timeout = 10\n"
            f"logfile = {self.log}\npidfile = {self.pidfile}\n")
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            account = pwd.getpwnam(self.user)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.proc = None

    def start(self) -> "PgBouncer":
        command = [BINARY, str(self.root / "pgbouncer.ini")]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.destroy()
                    raise PostgresUnavailable(f"PgBouncer did not start ({exc}):\n"
                                              f"{self._log_tail()}") from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def behind(self, server_url: str) -> str:
        """The URL of ``server_url``'s database (on the server behind us) through us."""
        parts = urlsplit(server_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}"))

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:  # PgBouncer itself: runuser, signalled, waits 2 s before it kills its child
                os.kill(int(self.pidfile.read_text().split()[0]), signal.SIGTERM)
                self.proc.wait(10)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)  # runuser and PgBouncer: their group
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgBouncer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.destroy()
