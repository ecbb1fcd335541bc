"""The cluster's Imgur credential: one row per configured credential, locked while one
instance refreshes it, so the cluster refreshes once (``backends.credentials.renew``)."""
import hashlib

from ..credentials import RefreshSettings, Token, renew
from . import queries
from .coordinator import Rows
from .store import Database


class PgCredentials(Rows):
    """The cluster's Imgur credential, one row per configured credential."""

    def __init__(self, database: Database, *, api_url: str, access_token: str = "",
                 client_id: str = "", client_secret: str = "", refresh_token: str = "",
                 timeout_seconds: float = 30.0):
        super().__init__(database)
        self.args = dict(api_url=api_url, access_token=access_token, client_id=client_id,
                         client_secret=client_secret, refresh_token=refresh_token,
                         timeout_seconds=timeout_seconds)
        self.settings = RefreshSettings(api_url, client_id, client_secret, timeout_seconds)
        self.configured = Token(access_token, refresh_token)
        # The configured credential names its row: configure a new one and it starts afresh.
        self.key = hashlib.sha256("\0".join((access_token, refresh_token, client_id))
                                  .encode()).hexdigest()

    def __getstate__(self):
        return {"database": self.database, "args": self.args}

    def __setstate__(self, state):
        self.__init__(state["database"], **state["args"])

    def current(self, patient: bool = True) -> tuple:
        return self.run(lambda conn: self._token(conn, lock=False).current(), patient=patient)

    def refresh(self, seen_version: int, reason: str) -> tuple:
        def work(conn):
            token = self._token(conn, lock=True)  # the others wait here while we refresh
            renew(token, self.settings, seen_version, reason)
            conn.execute(queries.TOKEN_WRITE,
                         (token.access_token, token.refresh_token, token.version,
                          token.rejected, self.key))
            return token.current()
        return self.run(work, transaction=True)

    def forgive(self) -> None:
        """At an instance's start: try a credential given up on again (as a restart of the
        embedded service does)."""
        self.run(lambda conn: conn.execute(queries.TOKEN_FORGIVE, (self.key,)))

    def _token(self, conn, *, lock: bool) -> Token:
        query = queries.TOKEN_LOCK if lock else queries.TOKEN_READ
        row = conn.execute(query, (self.key,)).fetchone()
        if row is None:
            conn.execute(queries.TOKEN_FIRST,
                         (self.key, self.configured.access_token, self.configured.refresh_token))
            row = conn.execute(query, (self.key,)).fetchone()
        return Token(*row)
