"""The embedded credential: one token in the multiprocessing manager, refreshed once for all
(``backends.credentials.renew``)."""
import threading

from ..credentials import Current, RefreshSettings, Token, renew


class Credentials:
    """The embedded credential, in the multiprocessing manager."""

    def __init__(self, *, api_url: str, access_token: str = "", client_id: str = "",
                 client_secret: str = "", refresh_token: str = "", timeout_seconds: float = 30.0):
        self.settings = RefreshSettings(api_url, client_id, client_secret, timeout_seconds)
        self.token = Token(access_token, refresh_token)
        self._lock = threading.Lock()

    def current(self, patient: bool = True) -> Current:
        with self._lock:
            return self.token.current()

    def refresh(self, seen_version: int, reason: str) -> Current:
        with self._lock:
            renew(self.token, self.settings, seen_version, reason)
            return self.token.current()
