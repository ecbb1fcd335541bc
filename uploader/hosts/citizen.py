"""Uploading as a good citizen of a host: the shared gate, retries, and the shared token.

``PoliteUploader`` wraps a wire client (``imgur.ImgurHost``, ``s3.S3Host``) with the
policy the whole service (every worker of every instance) follows for each upload:

    wait at the gate -> upload -> answer: budgets (if the host reports any) back to the gate
                          | transient error (429, 5xx, network): back off and try again,
                          |   up to max_attempts; a pool-wide one (Imgur's 429 or "too
                          |   fast", S3's SlowDown) pauses everyone
                          | token refused: refresh once for everyone (a host with a shared
                          |   token: Imgur), then try again

The host decides what its gate holds (``hosts.gate_settings``): Imgur's has a pace and
credit budgets; S3's is unpaced with no budgets, so it only ever holds uploads for a pause.

Each grant of the gate is closed exactly once: by an observation here for a try that is
retried, by the worker's ``coordinator.end_many`` for the last one (``report.grant_open``),
or by a withdrawal when it is given back unused: a grant that could not be used soon after
its moment (this process was held up) is not used late, so the pace holds for what Imgur
sees; the upload waits for a new moment. A worker's slots asking the gate at the same
moment share one trip (``coalesce``).
"""
import logging
import random
import threading
import time

from ..errors import AuthRejectedError, HostError, RetryableHostError
from ..coalesce import Line

log = logging.getLogger(__name__)

GATE_POLL_SECONDS = 5.0  # re-ask the gate at least this often during a long pause
WAIT_WORTH_NOTING = 1.0  # waits longer than this are shown in the job body
# A grant is used at most this share of the pace's spacing after its moment (and this many
# seconds, for fast paces: a busy process's sleep overruns by a few ms), else given back.
LATE_SHARE, LATE_FLOOR_SECONDS = 0.25, 0.02


class PoliteUploader:
    def __init__(self, host, *, coordinator, credentials, owner: tuple, max_attempts: int,
                 backoff, rate: float = 0.0):
        self.host = host
        self.name = host.name
        self.label = host.label  # the host as people call it, in what the job body shows
        self.coordinator = coordinator
        self.credentials = credentials
        self.owner = owner  # (worker, generation): whose grants these are
        # this worker's slots asking at once share one trip to the gate
        self._reserve = Line(lambda asks: coordinator.reserve_many(len(asks), owner), "gate-line")
        self.max_attempts = max_attempts
        self.backoff = backoff
        # how late after its moment a grant may still be used (None: no pace to keep)
        self.late_after = max(LATE_SHARE / rate, LATE_FLOOR_SECONDS) if rate > 0 else None
        self._token = None  # (token, version, rejected) as last read from the shared credential
        self._first_read = threading.Lock()  # slots starting together read it once

    def upload(self, data: bytes, *, filename: str, mime: str, report):
        """Upload with retries of transient host errors; ``report`` keeps attempts, budgets
        and whether a grant is still open, and tells the job about retries and waits."""
        refreshed = False
        while True:
            moment = self._wait_at_gate(report)
            version = self._use_current_token()
            # given back once at most: a process slow at every turn still uploads
            if not report.grants_given_back and self._held_up(moment, report):
                continue
            try:
                uploaded = self.host.upload(data, filename=filename, mime=mime)
            except HostError as exc:
                report.rate = _budgets(getattr(exc, "rate", None)) or report.rate
                if isinstance(exc, AuthRejectedError) and self.credentials is not None \
                        and not refreshed:
                    refreshed = True
                    self._close_grant(report)
                    self._token = self.credentials.refresh(version, str(exc))  # once for all
                    continue
                if not isinstance(exc, RetryableHostError) or report.attempts >= self.max_attempts:
                    raise
                self._close_grant(report)
                delay = self._backoff(report.attempts, exc.retry_after)
                log.info("%s: %s; retrying in %.1f s", report.describe(), exc, delay)
                if exc.pool_wide:
                    self.coordinator.pause(delay, f"{self.label} asked us to slow down: {exc}")
                else:
                    time.sleep(delay)
                report.retrying()
                continue
            report.rate = _budgets(uploaded.rate) or report.rate
            return uploaded

    def _held_up(self, moment: float, report) -> bool:
        """True, and the grant given back, when this process was held up (starved of CPU,
        a slow first read of the token) so long past the grant's moment that sending now
        would crowd the next grant's: the pace holds for what Imgur sees, not only for the
        moments granted. The moment itself is spent; the upload waits for a new one. Done
        once per upload: where every turn is slow (say, each confirmation a slow round
        trip), the next grant is used late rather than never."""
        late = time.monotonic() - moment
        if self.late_after is None or late <= self.late_after:
            return False
        log.debug("%s: %.0f ms past the gate's moment; giving it back", report.describe(),
                  late * 1000)
        self.coordinator.withdraw(self.owner)
        report.grant_open = False
        report.grants_given_back += 1  # counted: workers short of CPU show in the metrics
        return True

    def _close_grant(self, report) -> None:
        """Tell the gate a try is over (it is being retried), with the host's latest budgets."""
        if report.grant_open:
            self.coordinator.observe(report.rate, self.owner)
            report.grant_open = False

    def _use_current_token(self):
        """Point the client at the shared current token (a host with one: Imgur); fail at
        once if the host refused it for good. The token is read once, and again only after
        the host refuses it, so a refresh done by another worker costs this one a single
        refused request; the slots starting together share the first read."""
        if self.credentials is None:
            return None
        if self._token is None:
            with self._first_read:
                if self._token is None:
                    self._token = self.credentials.current()
        token, version, rejected = self._token
        if rejected:
            raise AuthRejectedError(rejected)
        if token:
            self.host.access_token = token
        return version

    def _wait_at_gate(self, report) -> float:
        """Wait for the shared gate; a long wait is shown in the job body with its reason.
        Returns the granted moment."""
        noted = False
        while True:
            granted, when, why = self._reserve()
            delay = when - time.monotonic()
            if granted:
                report.grant_open = True
                if delay > 0:  # a reservation for later: still valid once its moment comes?
                    if delay > WAIT_WORTH_NOTING and not noted:
                        report.waiting(time.time() + delay, why)
                        noted = True
                    time.sleep(delay)
                    if not self.coordinator.confirm(self.owner)[0]:
                        report.grant_open = False  # a pause began meanwhile: withdrawn
                        continue
                if noted:
                    report.waiting(None, None)
                return when
            if delay > WAIT_WORTH_NOTING and not noted:
                report.waiting(time.time() + delay, why)
                noted = True
            time.sleep(min(max(delay, 0.0), GATE_POLL_SECONDS))

    def _backoff(self, attempt: int, retry_after) -> float:
        """Exponential backoff with full jitter; the host's own Retry-After wins when given."""
        if retry_after is not None:
            return float(retry_after)
        b = self.backoff
        return random.uniform(0, min(b.max_seconds, b.base_seconds * 2 ** (attempt - 1)))


def _budgets(rate):
    """The host's budgets from a RateLimitSnapshot (Imgur's), as the plain dict the gate takes."""
    return None if rate is None else vars(rate)
