"""The pool's one Imgur credential: shared, refreshed once for everyone, or given up on.

Lives in the multiprocessing manager. When an upload is refused for its token, the
worker calls ``refresh(version)`` with the version it used: the first caller refreshes
(one request at ``/oauth2/token``), every later caller with the same version just gets
the new token. Without a refresh token, or when the refresh fails, the credential is
marked rejected and every upload fails at once with that reason instead of hammering
Imgur with a token it already refused.
"""
import logging
import threading
from typing import Optional, Tuple

log = logging.getLogger(__name__)


class Credentials:
    def __init__(self, *, api_url: str, access_token: str = "", client_id: str = "",
                 client_secret: str = "", refresh_token: str = "", timeout_seconds: float = 30.0):
        self.api_url = api_url
        self.access_token = access_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.timeout_seconds = timeout_seconds
        self.version = 0
        self.rejected: Optional[str] = None
        self._lock = threading.Lock()

    def current(self) -> Tuple[str, int, Optional[str]]:
        """(access token, its version, why it was rejected or None)."""
        with self._lock:
            return self.access_token, self.version, self.rejected

    def refresh(self, seen_version: int, reason: str) -> Tuple[str, int, Optional[str]]:
        """Imgur refused the token of ``seen_version``: refresh it once for the whole pool."""
        with self._lock:
            if self.version != seen_version or self.rejected:
                return self.access_token, self.version, self.rejected
            if not (self.refresh_token and self.client_id and self.client_secret):
                self.rejected = f"Imgur rejected the access token ({reason}); no refresh token is configured"
            else:
                self._refresh_locked(reason)
            self.version += 1
            return self.access_token, self.version, self.rejected

    def _refresh_locked(self, reason: str) -> None:
        from .hosts.imgur import ImgurHost  # the manager process imports requests only if needed
        host = ImgurHost(api_url=self.api_url, client_id=self.client_id,
                         timeout_seconds=self.timeout_seconds)
        try:
            answer = host.refresh_access_token(refresh_token=self.refresh_token,
                                               client_id=self.client_id,
                                               client_secret=self.client_secret)
        except Exception as exc:  # AuthRejectedError, or Imgur unreachable
            self.rejected = f"Imgur rejected the access token ({reason}) and the refresh failed: {exc}"
            log.error("%s", self.rejected)
            return
        self.access_token = answer["access_token"]
        self.refresh_token = answer.get("refresh_token") or self.refresh_token
        log.info("refreshed the Imgur access token for the whole pool")
