"""The service's exceptions: one base class and a short hierarchy.

Errors never cross a process boundary as live objects: a worker turns them into a
reason string (``str(exc)``) and, where it matters, a class name.
"""


class UploaderError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(UploaderError):
    """The configuration file or environment is invalid; the message names the key."""


class FetchError(UploaderError):
    """The source URL could not be fetched as an image; the message is the URL's failure reason.

    Each subclass names one way a fetch fails: ``failure_class`` is its word in metrics
    and logs, ``may_recover`` whether fetching again later might succeed. A bare
    FetchError counts as an unreachable source, as every unclassified failure did.
    """

    failure_class = "source_unreachable"
    may_recover = True


class InvalidSourceURL(FetchError):
    """The URL cannot name a source: bad syntax, scheme, host name, IP spelling or port."""

    failure_class = "invalid_url"
    may_recover = False


class SourceRefused(FetchError):
    """The address policy refuses the host or an address it resolves to (SSRF guard, host lists)."""

    failure_class = "refused"
    may_recover = False


class TooManyRedirects(FetchError):
    """The source redirected more often than ``fetch.max_redirects`` allows."""

    failure_class = "too_many_redirects"
    may_recover = False


class SourceUnreachable(FetchError):
    """No answer: the name did not resolve, or connecting, TLS or the connection failed."""

    failure_class = "source_unreachable"
    may_recover = True


class FetchTimeout(FetchError):
    """The download did not finish within ``fetch.timeout_seconds``."""

    failure_class = "timeout"
    may_recover = False


class SourceHTTPError(FetchError):
    """The source answered an HTTP ``status`` other than 200 or a redirect it could follow."""

    failure_class = "source_http_error"
    TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})  # a busy or restarting server

    def __init__(self, status, reason=None):
        super().__init__(reason or f"HTTP {status} from source")
        self.status = status

    def __reduce__(self):
        return type(self), (self.status, str(self))

    @property
    def may_recover(self):
        return self.status in self.TRANSIENT_STATUSES


class SourceTooLarge(FetchError):
    """The body is, or says it is, over ``fetch.max_bytes``."""

    failure_class = "too_large"
    may_recover = False


class SourceBroken(FetchError):
    """The body was cut short on the wire (fewer bytes than announced, a chunked body cut)."""

    failure_class = "source_broken"
    may_recover = True


class CorruptImage(FetchError):
    """The bytes start like an image but are cut short or broken inside (lengths, CRCs, markers)."""

    failure_class = "source_broken"
    may_recover = False  # the body arrived whole as the source has it: a retry gets the same


class TooManyPixels(FetchError):
    """The image's header declares more pixels (width x height) than ``images.max_pixels``."""

    failure_class = "too_many_pixels"
    may_recover = False


class NotAnImage(FetchError):
    """The body is no image, or an image format the image host does not take."""

    failure_class = "not_an_image"
    may_recover = False


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


class HostFull(HostError):
    """The image host has no room now (the local host's disk is full): the upload waits and
    is tried again, never failed for it."""


class AuthRejectedError(HostError):
    """The host rejected our credentials (401/403 on the token or client id)."""


class PoolBroken(UploaderError):
    """The multiprocessing manager is gone: no task can be sent, no worker started."""


class SharedStateLost(UploaderError):
    """A call to this instance's manager broke: the manager (the embedded shared state) is
    gone. Never a URL's failure."""


class StoreUnavailable(UploaderError):
    """The store cannot be reached (PostgreSQL down, connection lost): try again later."""


class StoreFull(StoreUnavailable):
    """The store has no room to write (its disk is full): nothing new is kept until there is."""


class StoreConflict(UploaderError):
    """A transaction lost a race with another instance (deadlock, serialization): run it again."""


class QueueFull(UploaderError):
    """An API key has as many URLs queued as ``server.max_queued_urls_per_key`` allows: a new
    job of it is refused, and nothing is created."""

    def __init__(self, *, queued: int, adding: int, limit: int):
        super().__init__(f"this API key has {queued:,} URLs queued and the limit is {limit:,}: "
                         f"a job of {adding:,} more is refused; submit it again once some have "
                         "been uploaded")
        self.queued, self.adding, self.limit = queued, adding, limit


class StartError(UploaderError):
    """The service cannot start as configured (a store it cannot open, a directory it cannot write)."""


class StoreInUse(UploaderError):
    """The embedded store is held by another running instance (embedded mode runs one)."""


def failure_class(exc: BaseException) -> str:
    """The class of a URL's failure: a small, stable vocabulary for metrics and logs (the
    reason has the detail), e.g. ``refused``, ``timeout``, ``host_rejected``."""
    if isinstance(exc, FetchError):
        return exc.failure_class
    if isinstance(exc, AuthRejectedError):
        return "auth_rejected"
    if isinstance(exc, PermanentHostError):
        return "host_rejected"
    if isinstance(exc, HostError):
        return "host_unavailable"
    return "internal"


def source_may_recover(exc: FetchError) -> bool:
    """True for a source failure worth another try: the server was busy, unreachable, or cut
    the body short. Refusals, limits, timeouts and wrong content are final."""
    return bool(getattr(exc, "may_recover", False))
