"""The one Imgur credential of a pool (or cluster): shared, refreshed once for everyone, or given up on.

When an upload is refused for its token, the worker calls ``refresh(version)`` with the
version it used: the first caller refreshes (one request at ``/oauth2/token``), every
later caller with the same version just gets the new token. Without a refresh token, or
when the refresh fails, the credential is marked rejected and every upload fails at once
with that reason instead of hammering Imgur with a token it already refused.

``renew`` is the rule; ``sqlite.credentials`` keeps the token in the multiprocessing
manager (embedded mode), ``postgres.credentials`` in a database row that every instance
locks in turn.
"""
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

log = logging.getLogger(__name__)

Current = Tuple[str, int, Optional[str]]  # (access token, its version, why it was rejected)


@dataclass
class Token:
    access_token: str
    refresh_token: str
    version: int = 0
    rejected: Optional[str] = None

    def current(self) -> Current:
        return self.access_token, self.version, self.rejected


@dataclass(frozen=True)
class RefreshSettings:
    """What a refresh needs besides the token (the application's own credentials)."""

    api_url: str
    client_id: str = ""
    client_secret: str = ""
    timeout_seconds: float = 30.0


def renew(token: Token, settings: RefreshSettings, seen_version: int, reason: str) -> None:
    """Imgur refused the token of ``seen_version``: refresh it, once, in place."""
    if token.version != seen_version or token.rejected:
        return  # someone refreshed (or gave up) already
    if not (token.refresh_token and settings.client_id and settings.client_secret):
        token.rejected = f"Imgur rejected the access token ({reason}); no refresh token is configured"
    else:
        from ..hosts.imgur import ImgurHost  # the manager imports requests only if needed
        client = ImgurHost(api_url=settings.api_url, client_id=settings.client_id,
                             timeout_seconds=settings.timeout_seconds)
        try:
            answer = client.refresh_access_token(refresh_token=token.refresh_token,
                                                 client_id=settings.client_id,
                                                 client_secret=settings.client_secret)
        except Exception as exc:  # AuthRejectedError, or Imgur unreachable
            token.rejected = f"Imgur rejected the access token ({reason}) and the refresh failed: {exc}"
            log.error("%s", token.rejected)
        else:
            token.access_token = answer["access_token"]
            token.refresh_token = answer.get("refresh_token") or token.refresh_token
            log.info("refreshed the Imgur access token for every worker")
    token.version += 1

