"""What ``/metrics`` says of the store: its queue, and whether it is up.

A scrape must answer while the store is down, when it matters most, so it never waits on
the store for long (``BoundedRead``). A read that failed, or that has not finished in
``wait_seconds``, says the store is down, and the queue's figures stay the last ones read.
"""
import logging

from .boundedread import BoundedRead
from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class StoreGauges:
    def __init__(self, read, executor, *, wait_seconds: float = 1.0):
        """``read()``: (URLs queued, seconds the oldest has waited, credential rejected),
        blocking; run on ``executor``."""
        self._bounded = BoundedRead(read, executor, wait_seconds=wait_seconds, on_done=self._done)
        self.queued, self.oldest_queued, self.credential_rejected = 0, 0.0, False

    async def refresh(self) -> bool:
        """Read the figures afresh if the store answers in time: True when it did."""
        reading = await self._bounded()
        return reading is not None and reading.exception() is None

    def _done(self, reading) -> None:
        failure = reading.exception()
        if failure is None:
            self.queued, self.oldest_queued, self.credential_rejected = reading.result()
        elif not isinstance(failure, StoreUnavailable):
            log.error("the store's figures for /metrics could not be read",
                      exc_info=(type(failure), failure, failure.__traceback__))
