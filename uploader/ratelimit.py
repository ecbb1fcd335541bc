"""One upload pace for the whole pool, driven by our own limit and by Imgur's reports.

The gate lives in the multiprocessing manager, so every worker process draws from the
same state (Celery-style per-worker limits would multiply the rate by the pool size).
A worker asks ``reserve()`` before each upload and is told whether it got a slot, how long
to wait and why; no process holds the manager while it sleeps. Every granted slot is
closed by exactly one ``observe()`` when the upload's answer (or failure) is in. Three things can make it wait:

- the token bucket (``imgur.rate_limit``: uploads per second and burst);
- a pause, set when any worker sees a 429 or "too fast" (``pause``), honouring Retry-After;
- Imgur's budgets: each answer's remaining user, client and post credits (``observe``).
  What was last reported, less the cost of every upload still in flight and of the next
  one, may not fall below the configured reserve; when it would, every upload waits for
  that budget's reset. While Imgur has not yet said what is left (at start, after a
  reset), one upload goes first as a probe. So the service never knowingly sends the
  request that exhausts a budget.
"""
import threading
import time
from typing import Optional, Tuple

UPLOAD_CREDITS = {"user": 10, "client": 10, "post": 1}  # what one upload costs
UNKNOWN_RESET_SECONDS = 60.0  # wait this long when a budget is spent but its reset unknown
PROBE_POLL_SECONDS = 0.05


class Budget:
    """What we believe is left of one of Imgur's budgets."""

    def __init__(self, name: str, reserve: int):
        self.name = name
        self.reserve = reserve
        self.remaining: Optional[float] = None  # unknown until Imgur reports it
        self.reported = False  # has Imgur ever reported this budget?
        self.reset_at: Optional[float] = None  # monotonic time of the next refill

    def update(self, remaining: float, reset_at: Optional[float]) -> None:
        """Take a report. Answers arrive out of order: within one budget period the lowest
        figure is the latest truth; a later reset means a new period."""
        same_period = (self.remaining is not None and reset_at is not None
                       and self.reset_at is not None and reset_at <= self.reset_at + 1.0)
        self.remaining = min(self.remaining, remaining) if same_period else remaining
        self.reset_at = reset_at
        self.reported = True

    def blocked_until(self, now: float, cost: int) -> float:
        """0 when ``cost`` more credits fit above the reserve, else when they will fit again."""
        if self.reset_at is not None and now >= self.reset_at:
            self.remaining, self.reset_at = None, None  # refilled; Imgur will tell us anew
        if self.remaining is None or self.remaining - cost >= self.reserve:
            return 0.0
        return self.reset_at if self.reset_at is not None else now + UNKNOWN_RESET_SECONDS


class UploadGate:
    """The pool's shared gate; ``rate`` 0 turns the token bucket off (budgets still apply)."""

    def __init__(self, rate: float, burst: int, reserve: Optional[dict] = None):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._pause_why = ""
        reserve = reserve or {}
        self._budgets = {name: Budget(name, int(reserve.get(name, 0))) for name in UPLOAD_CREDITS}
        self._in_flight = 0
        self._observed = 0
        self._lock = threading.Lock()

    def reserve(self) -> Tuple[bool, float, str]:
        """(granted, when, why), ``when`` a ``time.monotonic()`` moment (one clock for every
        process on the machine, so a caller's lag in hearing the answer does not shift it).
        Granted: send at ``when`` (our own pace). Not granted: Imgur's limits hold every
        upload; ask again at ``when``."""
        with self._lock:
            now = time.monotonic()
            start, why = now, ""
            if self._paused_until > start:
                start, why = self._paused_until, self._pause_why
            for budget in self._budgets.values():
                until = budget.blocked_until(now, UPLOAD_CREDITS[budget.name] * (self._in_flight + 1))
                if until > start:
                    start = until
                    why = (f"Imgur's {budget.name} budget is down to its reserve of "
                           f"{budget.reserve} credits; waiting for its reset")
            if start > now:
                return False, start, why
            if self._in_flight and self._probing():
                return False, now + PROBE_POLL_SECONDS, ""
            self._in_flight += 1
            if self.rate <= 0:
                return True, now, ""
            start = max(now, self._last)
            self._tokens = min(self.burst, self._tokens + (start - self._last) * self.rate)
            self._last = start
            self._tokens -= 1.0
            return True, start + max(0.0, -self._tokens / self.rate), ""

    def confirm(self) -> Tuple[bool, float, str]:
        """For a grant whose moment lay ahead, asked at that moment: is the way still clear?

        A grant for later is a reservation; if a pause began since (another worker's 429),
        the grant is withdrawn here (no longer in flight) and the answer says until when to
        wait, so no reservation made before a pause is used during it."""
        with self._lock:
            now = time.monotonic()
            if self._paused_until > now:
                self._in_flight = max(0, self._in_flight - 1)
                return False, self._paused_until, self._pause_why
            return True, now, ""

    def _probing(self) -> bool:
        """True while a budget Imgur reports is unknown (the next answer tells)."""
        return self._observed == 0 or any(
            b.reported and b.remaining is None for b in self._budgets.values())

    def observe(self, report: Optional[dict]) -> None:
        """One upload ended; ``report`` holds Imgur's budgets from its answer (or None)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._observed += 1
            if not report:
                return
            now = time.monotonic()
            for name, budget in self._budgets.items():
                remaining = report.get(f"{name}_remaining")
                if remaining is None:
                    continue
                reset = report.get(f"{name}_reset")
                budget.update(remaining, now + reset if reset is not None else None)

    def pause(self, seconds: float, why: str) -> None:
        """Hold every upload for ``seconds`` from now (never shortens a longer pause)."""
        with self._lock:
            until = time.monotonic() + seconds
            if until > self._paused_until:
                self._paused_until, self._pause_why = until, why
