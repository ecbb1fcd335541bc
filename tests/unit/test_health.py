"""/healthz in-process (the real ``make_app`` and ``Health`` over stand-in parts): a store
that hangs is reported within the probe's wait, one probe at a time, and healthy again once
it answers."""
import threading
import types
from concurrent.futures import ThreadPoolExecutor

from uploader.boundedread import BoundedRead
from uploader.health import Health

from tests.inprocess import AppTestCase


class HungStore:
    """``problem()`` blocks until released (PostgreSQL gone behind PgBouncer), then answers."""

    def __init__(self):
        self.released, self.probes = threading.Event(), 0

    def problem(self):
        self.probes += 1
        self.released.wait(30)
        return None


class HealthTest(AppTestCase):
    def stand_in(self):
        self.store, self.readers = HungStore(), ThreadPoolExecutor(4)
        service = super().stand_in()
        workers = service.config.workers.processes
        dispatcher = types.SimpleNamespace(
            store_problem=None, ready_workers=lambda: workers, host_full=lambda: None,
            refused_workers=lambda: [])
        pool = types.SimpleNamespace(manager_alive=lambda: True, pids=lambda: [1, 2],
                                     manager_pid=lambda: 3)
        service.health = Health(
            instance="i", store_probe=BoundedRead(self.store.problem, self.readers,
                                                  wait_seconds=0.1),
            dispatcher=dispatcher, pool=pool, workers_expected=workers,
            credential_problem=lambda: None, stopping=lambda: False, readers=self.readers)
        return service

    def tearDown(self):
        self.store.released.set()
        self.readers.shutdown()
        super().tearDown()

    def test_a_hung_store_is_reported_not_waited_out(self):
        for _ in range(3):
            answer = self.fetch("/healthz")
            assert answer.code == 503
            assert "the store did not answer within 0.1 s" in answer.body.decode()
        assert self.store.probes == 1  # each check waited for the probe under way
        self.store.released.set()  # the store answers again
        self.readers.submit(lambda: None).result()
        answer = self.fetch("/healthz")
        assert answer.code == 200, answer.body
