"""The service's exceptions: one base class and a short hierarchy.

Errors never cross a process boundary as live objects: a worker turns them into a
reason string (``str(exc)``) and, where it matters, a class name.
"""


class UploaderError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(UploaderError):
    """The configuration file or environment is invalid; the message names the key."""


class FetchError(UploaderError):
    """The source URL could not be fetched as an image; the message is the URL's failure reason."""


class HostError(UploaderError):
    """The image host refused or failed an upload; the message is the host's reason."""


class RetryableHostError(HostError):
    """A transient host failure (429, 5xx, over capacity, network) worth trying again.

    ``retry_after`` is the number of seconds the host asked us to wait, when it said so.
    ``pool_wide`` is true when the whole pool should pause (a rate limit), not only this upload.
    """

    def __init__(self, reason, *, retry_after=None, pool_wide=False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.pool_wide = pool_wide


class PermanentHostError(HostError):
    """The host rejected this file for good (type, size, corrupt): retrying cannot help."""


class AuthRejectedError(HostError):
    """The host rejected our credentials (401/403 on the token or client id)."""


class PoolBroken(UploaderError):
    """The multiprocessing manager is gone: no task can be sent, no worker started."""


class StoreUnavailable(UploaderError):
    """The store cannot be reached (PostgreSQL down, connection lost): try again later."""


class StoreConflict(UploaderError):
    """A transaction lost a race with another instance (deadlock, serialization): run it again."""


class StoreInUse(UploaderError):
    """The embedded store is held by another running instance (embedded mode runs one)."""


# Failure classes: a small, stable vocabulary for metrics and logs (the reason has the detail).
_FETCH_CLASSES = (
    ("refused:", "refused"),
    ("too large", "too_large"),
    ("timed out", "timeout"),
    ("not an image", "not_an_image"),
    ("unsupported image format", "not_an_image"),
    ("HTTP ", "source_http_error"),
    ("truncated", "source_broken"),
    ("invalid", "invalid_url"),
    ("unsupported URL scheme", "invalid_url"),
    ("too many redirects", "too_many_redirects"),
)


def failure_class(exc: BaseException) -> str:
    """The class of a URL's failure, e.g. ``refused``, ``timeout``, ``host_rejected``."""
    if isinstance(exc, FetchError):
        text = str(exc)
        for prefix, name in _FETCH_CLASSES:
            if text.startswith(prefix):
                return name
        return "source_unreachable"
    if isinstance(exc, AuthRejectedError):
        return "auth_rejected"
    if isinstance(exc, PermanentHostError):
        return "host_rejected"
    if isinstance(exc, HostError):
        return "host_unavailable"
    return "internal"


_TRANSIENT_SOURCE_STATUS = ("HTTP 429 ", "HTTP 500 ", "HTTP 502 ", "HTTP 503 ", "HTTP 504 ")


def source_may_recover(exc: FetchError) -> bool:
    """True for a source failure worth another try: the server was busy, unreachable, or cut
    the body short. Refusals, limits, timeouts and wrong content are final."""
    text = str(exc)
    return text.startswith(_TRANSIENT_SOURCE_STATUS) or failure_class(exc) in (
        "source_unreachable", "source_broken")
