"""What ``/metrics`` says of the store: its queue, and whether it is up.

A scrape must answer while the store is down, when it matters most, so it never waits on
the store for long: the figures are read on the reader threads, one read at a time, and a
scrape waits for the read under way at most ``wait_seconds``. A read that failed, or that
has not finished by then, says the store is down, and the queue's figures stay the last
ones read; a read still under way goes on, and the next scrape waits for that one instead
of starting another (a hung store holds one reader thread for /metrics, never more).
"""
import asyncio
import logging

from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class StoreGauges:
    def __init__(self, read, executor, *, wait_seconds: float = 1.0):
        """``read()``: (URLs queued, seconds the oldest has waited, credential rejected),
        blocking; run on ``executor``."""
        self._read = read
        self._executor = executor
        self.wait_seconds = wait_seconds
        self._reading = None  # the read under way (an asyncio future), or None
        self.queued, self.oldest_queued, self.credential_rejected = 0, 0.0, False

    async def refresh(self) -> bool:
        """Read the figures afresh if the store answers in time: True when it did."""
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.get_running_loop().run_in_executor(
                self._executor, self._read)
            reading.add_done_callback(self._done)
        done, _ = await asyncio.wait({reading}, timeout=self.wait_seconds)
        return bool(done) and reading.exception() is None

    def _done(self, reading) -> None:
        self._reading = None
        failure = reading.exception()
        if failure is None:
            self.queued, self.oldest_queued, self.credential_rejected = reading.result()
        elif not isinstance(failure, StoreUnavailable):
            log.error("the store's figures for /metrics could not be read",
                      exc_info=(type(failure), failure, failure.__traceback__))
