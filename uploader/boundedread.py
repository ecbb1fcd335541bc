"""A blocking read of the store that keeps its callers waiting a bounded time.

/healthz and /metrics must answer while the store hangs (PostgreSQL gone behind PgBouncer
holds a query until its ``query_wait_timeout``), when they matter most. So the read runs
on the reader threads, one at a time, and a caller waits for the read under way at most
``wait_seconds``; a read still under way goes on, and the next caller waits for that one
instead of starting another (a hung store holds one reader thread per bounded read, never
more).
"""
import asyncio


class BoundedRead:
    def __init__(self, read, executor, *, wait_seconds: float, on_done=None):
        """``read()``: blocking; run on ``executor``. ``on_done(future)`` is called with
        each finished read, whether a caller still waited for it or not."""
        self._read = read
        self._executor = executor
        self.wait_seconds = wait_seconds
        self._on_done = on_done
        self._reading = None  # the read under way (an asyncio future), or None

    async def __call__(self):
        """The finished read (an asyncio future: its result or exception), or None if it
        has not finished within ``wait_seconds``."""
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.get_running_loop().run_in_executor(
                self._executor, self._read)
            reading.add_done_callback(self._done)
        done, _ = await asyncio.wait({reading}, timeout=self.wait_seconds)
        return reading if done else None

    def _done(self, reading) -> None:
        self._reading = None
        if self._on_done is not None:
            self._on_done(reading)
