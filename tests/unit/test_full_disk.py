"""A full disk is a wait with its reason, never a failure, as the dispatcher, the uploader and
the health see it (a host or store that says it is full). The real disks, filled under a
running service: tests/system/test_full_disk.py.
"""
import time
from concurrent.futures import Future

from uploader import jobs
from uploader.config import config_from_dict
from uploader.dispatcher import Dispatcher, _Submit
from uploader.errors import HostFull, StoreFull
from uploader.hosts import DirectUploader
from uploader.jobs import Result, Waiting
from uploader.backends import open_store
from uploader.service import dispatcher_settings

from tests.doubles import StubPool


class Report:
    """What DirectUploader tells the job: its waits."""

    def __init__(self):
        self.waits = []

    def describe(self):
        return "job j: http://a.example/1.png"

    def waiting(self, until, why, *, host_full=False):
        self.waits.append((until is not None, why, host_full))


def test_a_host_with_no_room_is_waited_for_not_failed(monkeypatch):
    class FullTwice:
        name = "local"
        tries = 0

        def upload(self, data, *, filename, mime):
            self.tries += 1
            if self.tries <= 2:
                raise HostFull("the local image directory is full (No space left on device)")
            return "uploaded"

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    report, host = Report(), FullTwice()
    assert DirectUploader(host).upload(b"x", filename="a.png", mime="image/png",
                                       report=report) == "uploaded"
    assert host.tries == 3 and slept == [1.0, 2.0]  # backing off
    why = "the local image directory is full (No space left on device); trying again"
    assert report.waits == [(True, why, True), (True, why, True), (False, None, False)]


def embedded(tmp_path):
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 2},
                               "storage": {"path": str(tmp_path / "s.sqlite3")}}, environ={})
    store = open_store(config.storage, "me")
    dispatcher = Dispatcher(store=store, pool=StubPool(1), **dispatcher_settings(config))
    dispatcher.recover()
    return store, dispatcher


def test_the_health_hears_of_urls_waiting_for_room_until_they_are_done(tmp_path):
    store, dispatcher = embedded(tmp_path)
    try:
        dispatcher._turn([_Submit("job-1", ["https://example.test/a.png",
                                            "https://example.test/b.png"], Future())])
        first, second = dispatcher.state.assigned[0].values()
        why = "the local image directory is full (No space left on device); trying again"
        dispatcher._turn([Waiting(task.url_id, time.time() + 5, why, host_full=True)
                          for task in (first, second)])
        assert dispatcher.host_full() == f"{why} (2 URLs waiting)"
        dispatcher._turn([Waiting(first.url_id, None)])  # stored after all
        assert dispatcher.host_full() == f"{why} (1 URL waiting)"
        dispatcher._turn([Waiting(first.url_id, time.time() + 5, "paced by imgur.rate_limit")])
        assert dispatcher.host_full() == f"{why} (1 URL waiting)"  # another kind of wait
        generation = dispatcher.pool.workers[0].generation
        dispatcher._turn([Result(url_id=second.url_id, worker=0, generation=generation,
                                 state=jobs.COMPLETE, attempts=1, link="https://i.test/b.png")])
        assert dispatcher.host_full() is None
    finally:
        store.close()


def test_a_full_store_is_said_to_be_full_while_its_retry_is_not_due(tmp_path):
    """The first POST meets the full disk; one just after is refused at once, as full too."""
    store, dispatcher = embedded(tmp_path)
    try:
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
        store._writer.execute(f"PRAGMA max_page_count = {pages}")
        refused = [Future(), Future()]
        for n, future in enumerate(refused):
            dispatcher._turn([_Submit(f"job-{n}", [f"https://example.test/{n}/{i}.png"
                                                   for i in range(1000)], future)])
        assert [type(future.exception()) for future in refused] == [StoreFull, StoreFull]
    finally:
        store.close()
