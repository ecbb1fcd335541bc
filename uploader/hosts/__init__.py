"""Image hosts: where fetched bytes are re-hosted.

Every host offers one call, ``upload(data, *, filename, mime) -> Uploaded``, and raises
``uploader.errors.HostError`` subclasses on failure. A host knows nothing of jobs,
queues or Tornado: the worker drives it.
"""
from dataclasses import dataclass, field
from typing import Optional, Protocol


@dataclass(frozen=True)
class RateLimitSnapshot:
    """Imgur's remaining budgets as read from one answer's ``X-RateLimit-*`` headers.

    Each ``*_remaining`` is None when the header was absent; each ``*_reset`` is
    seconds from now until that budget resets (normalised: Imgur documents a unix
    time but sends seconds).
    """

    user_limit: Optional[int] = None
    user_remaining: Optional[int] = None
    user_reset: Optional[float] = None
    client_limit: Optional[int] = None
    client_remaining: Optional[int] = None
    client_reset: Optional[float] = None
    post_limit: Optional[int] = None
    post_remaining: Optional[int] = None
    post_reset: Optional[float] = None


@dataclass(frozen=True)
class Uploaded:
    """A successful upload: the public link, and the host's rate-limit report if any."""

    link: str
    deletehash: Optional[str] = None
    rate: Optional[RateLimitSnapshot] = field(default=None, compare=False)


class ImageHost(Protocol):
    """What the worker needs of a host."""

    name: str

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """Upload ``data``; return its link or raise a ``HostError``."""
