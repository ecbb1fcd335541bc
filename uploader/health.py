"""What ``/healthz`` says of an instance: ``ok``; ``degraded`` (serving, but uploads cannot
succeed or go slower: the host refuses our credential or has no room, PostgreSQL refuses
some connections); or ``unhealthy`` (503: the store, a worker or the manager is down, or
it is shutting down), each with its reasons. Built by the service from the parts that
know; nothing here waits on the store longer than its probe allows."""
import asyncio
from typing import Callable, Tuple

from .backends.postgres.refusals import refusals

# How long /healthz waits on the store: a hung store (PostgreSQL gone behind PgBouncer, which
# holds a query for its query_wait_timeout) is reported as such, not waited out.
HEALTH_PROBE_SECONDS = 3


class Health:
    def __init__(self, *, instance: str, store_probe, dispatcher, pool, workers_expected: int,
                 credential_problem: Callable, stopping: Callable[[], bool], readers):
        """``store_probe``: a ``BoundedRead`` of the store's problem; ``credential_problem``:
        blocking, run on ``readers``; ``stopping``: whether a stop was asked for."""
        self.instance = instance
        self.store_probe = store_probe
        self.dispatcher = dispatcher
        self.pool = pool
        self.workers_expected = workers_expected
        self.credential_problem = credential_problem
        self.stopping = stopping
        self.readers = readers

    async def report(self) -> Tuple[int, dict]:
        """(HTTP status, body): 200 while serving (ok or degraded), else 503."""
        problems = []
        probe = await self.store_probe()
        store_problem = (probe.result() if probe is not None else "the store did not answer "
                         f"within {self.store_probe.wait_seconds:g} s")
        if store_problem:
            problems.append(store_problem)
        elif self.dispatcher.store_problem:
            problems.append(f"the last commit failed: {self.dispatcher.store_problem}")
        expected = self.workers_expected
        alive = self.dispatcher.ready_workers()
        if alive < expected:
            problems.append(f"{expected - alive} of {expected} worker processes are down "
                            "or still starting")
        if not self.pool.manager_alive():
            problems.append("the multiprocessing manager is down")
        if self.stopping():
            problems.append("shutting down")
        credential = None if problems else await asyncio.get_running_loop().run_in_executor(
            self.readers, self.credential_problem)
        degraded = [reason for reason in (credential, self.dispatcher.host_full(),
                                          refusals.summary(),
                                          *self.dispatcher.refused_workers()) if reason]
        status = "unhealthy" if problems else "degraded" if degraded else "ok"
        body = {"status": status, "instance": self.instance,
                "workers": {"alive": alive, "expected": expected, "pids": self.pool.pids()},
                "manager": {"pid": self.pool.manager_pid()}}
        if problems:
            body["problems"] = problems
        if degraded:  # serving, but no upload can succeed until this is fixed, or slower,
            body["degraded"] = degraded  # short of connections (and saying why)
        return (200 if not problems else 503), body
