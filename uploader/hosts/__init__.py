"""Image hosts: where fetched bytes are re-hosted, and the policy of uploading there.

Three hosts: ``s3`` (S3-compatible object storage), ``imgur`` and ``local`` (files the
service serves itself). Every host client offers ``upload(data, *, filename, mime) ->
Uploaded`` and ``delete(deletehash) -> bool`` (False: not there), and raises
``uploader.errors.HostError`` subclasses on failure. A client knows nothing of
jobs, queues or Tornado. What a host asks of the rest of the service is decided here,
so the worker stays a generic pipeline: ``gate_settings`` (a shared upload gate: Imgur's
with a pace and credit costs, S3's with neither, for its pauses), ``credential_settings``
(a token shared and refreshed by all: Imgur's), ``build_uploader`` (the client wrapped in
its upload policy: ``citizen.PoliteUploader`` for Imgur and S3) and ``accepted_types``
(the image formats it takes).
"""
import email.utils
import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Protocol

from .. import imagetype
from ..errors import HostFull

log = logging.getLogger(__name__)

FULL_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)  # a host with no room is tried again after these


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
    """What the service needs of a host."""

    name: str  # its word in config, store and logs: imgur, local, s3
    label: str  # how people call it, in reasons the job body shows: "Imgur", "S3"

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """Upload ``data``; return its link or raise a ``HostError``."""

    def delete(self, deletehash: str) -> bool:
        """Delete an upload; False when the host does not have it (any more)."""


def retry_after_seconds(raw) -> Optional[float]:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date), or None."""
    raw = str(raw or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def accepted_types(config) -> frozenset:
    """The MIME types of the images the configured host takes: Imgur's list for Imgur; the
    other hosts serve browsers, which show WebP too."""
    if config.resolved_image_host == "imgur":
        return imagetype.ACCEPTED_BY_IMGUR
    return imagetype.ACCEPTED_BY_IMGUR | {imagetype.WEBP.mime}


def gate_settings(config) -> Optional[dict]:
    """``ratelimit.GateRules`` arguments when this host's uploads go through the shared gate."""
    host = config.resolved_image_host
    if host == "s3":  # no pace, no budgets: the gate is there for a SlowDown's pause
        return {"rate": 0, "burst": 1, "host": "S3"}
    if host != "imgur":
        return None  # the local host has no limits
    from .imgur import UPLOAD_CREDITS

    imgur = config.imgur
    return {"rate": imgur.rate_limit.uploads_per_second, "burst": imgur.rate_limit.burst,
            "reserve": {"user": imgur.reserve.user, "client": imgur.reserve.client,
                        "post": imgur.reserve.post},
            "costs": dict(UPLOAD_CREDITS), "host": "Imgur"}


def credential_settings(config) -> Optional[dict]:
    """``Credentials`` arguments when this host has a credential every worker shares."""
    if config.resolved_image_host != "imgur":
        return None
    imgur = config.imgur
    return {"api_url": imgur.api_url, "access_token": imgur.access_token,
            "client_id": imgur.client_id, "client_secret": imgur.client_secret,
            "refresh_token": imgur.refresh_token, "timeout_seconds": imgur.timeout_seconds}


class DirectUploader:
    """A host without limits or credentials: no gate, one try. But a host with no room (a
    full disk) is a wait, not a failure: the upload is tried again, ever less often (up to
    every 10 s), the wait shown in the job with its reason (and in /healthz), until there
    is room. Those tries are not attempts: space freed, the image goes up."""

    def __init__(self, host):
        self.host = host
        self.name = host.name

    def upload(self, data: bytes, *, filename: str, mime: str, report) -> Uploaded:
        tries = 0
        while True:
            try:
                uploaded = self.host.upload(data, filename=filename, mime=mime)
            except HostFull as exc:
                delay = FULL_RETRY_SECONDS[min(tries, len(FULL_RETRY_SECONDS) - 1)]
                if not tries:
                    log.warning("%s: %s; trying again until there is room", report.describe(), exc)
                report.waiting(time.time() + delay, f"{exc}; trying again", host_full=True)
                tries += 1
                time.sleep(delay)
                continue
            if tries:
                log.info("%s: stored after waiting for room", report.describe())
                report.waiting(None, None)
            return uploaded


def build_uploader(config, shared, owner: tuple):
    """The configured host's client, built in this process, wrapped in its upload policy.
    ``owner``: (worker, generation), whose gate grants these uploads are."""
    if config.resolved_image_host == "s3":
        from ..config import BackoffConfig
        from .citizen import PoliteUploader
        from .s3 import BACKOFF_SECONDS, MAX_ATTEMPTS, S3Host

        client = S3Host.from_config(config.s3, pool_size=config.workers.uploads_per_process)
        return PoliteUploader(client, coordinator=shared.coordinator, credentials=None,
                              owner=owner, max_attempts=MAX_ATTEMPTS,
                              backoff=BackoffConfig(*BACKOFF_SECONDS))
    if config.resolved_image_host == "imgur":
        from .citizen import PoliteUploader
        from .imgur import ImgurHost

        client = ImgurHost(api_url=config.imgur.api_url, access_token=config.imgur.access_token,
                           client_id=config.imgur.client_id,
                           timeout_seconds=config.imgur.timeout_seconds)
        return PoliteUploader(client, coordinator=shared.coordinator,
                              credentials=shared.credentials, owner=owner,
                              max_attempts=config.imgur.max_attempts,
                              backoff=config.imgur.backoff,
                              rate=config.imgur.rate_limit.uploads_per_second)
    from .local import LocalHost

    return DirectUploader(LocalHost(directory=config.local.directory,
                                    base_url=config.server.base_url))


def learn_limits(config, shared) -> None:
    """Ask the host what is left of its budgets, spending none, so the first uploads need
    not go one at a time to find out (Imgur: GET /3/credits). Blocking: run it aside."""
    if config.resolved_image_host != "imgur":
        return
    from ..errors import HostError
    from .imgur import ImgurHost

    token = shared.credentials.current()[0] if shared.credentials is not None else ""
    client = ImgurHost(api_url=config.imgur.api_url, access_token=token or config.imgur.access_token,
                       client_id=config.imgur.client_id, timeout_seconds=config.imgur.timeout_seconds)
    try:
        shared.coordinator.learn(client.credits())
    except HostError as exc:  # the first upload tells instead
        log.info("could not ask Imgur what is left of its budgets (%s); the first upload will tell", exc)


def build_deleter(config, shared):
    """``delete(deletehash) -> bool`` for the configured host, for the front end: Imgur's
    with the shared current token, S3's with a client made at the first deletion, the
    local host's on its directory."""
    if config.resolved_image_host == "s3":
        import functools

        @functools.lru_cache(maxsize=1)
        def client():
            from .s3 import S3Host
            return S3Host.from_config(config.s3)

        return lambda deletehash: client().delete(deletehash)
    if config.resolved_image_host == "imgur":
        from .imgur import ImgurHost

        def delete(deletehash: str) -> bool:
            token = shared.credentials.current()[0] if shared.credentials is not None else ""
            client = ImgurHost(api_url=config.imgur.api_url,
                               access_token=token or config.imgur.access_token,
                               client_id=config.imgur.client_id,
                               timeout_seconds=config.imgur.timeout_seconds)
            return client.delete(deletehash)

        return delete
    from .local import LocalHost

    return LocalHost(directory=config.local.directory, base_url=config.server.base_url).delete
