"""One upload pace for the whole pool.

The bucket lives in the multiprocessing manager, so every worker process draws from the
same tokens (Celery-style per-worker limits would multiply the rate by the pool size).
Callers reserve a token and are told how long to wait before using it, so no process
holds the manager while it sleeps. ``pause`` stops every reservation until a moment,
which is how one worker's 429 becomes the whole pool's pause.
"""
import threading
import time


class TokenBucket:
    """A token bucket with reservations; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, burst: int):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before the upload may start."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._paused_until)
            if self.rate <= 0:
                return start - now
            start = max(start, self._last)
            self._tokens = min(self.burst, self._tokens + (start - self._last) * self.rate)
            self._last = start
            self._tokens -= 1.0
            debt = -self._tokens / self.rate if self._tokens < 0 else 0.0
            return start - now + debt

    def pause(self, seconds: float) -> None:
        """Hold every reservation for ``seconds`` from now (never shortens a longer pause)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        with self._lock:
            return max(0.0, self._paused_until - time.monotonic())
