"""A turn's wait notes (``uploader.waits``): the job document shows a URL's wait while it
waits and nothing once it ends, with one write per turn at most, and none where nothing a
client could see changes (a wait that began and ended within the turn, a URL finished in
it)."""
import time
from concurrent.futures import Future

from uploader import jobs
from uploader.config import config_from_dict
from uploader.dispatcher import Dispatcher, _Submit
from uploader.jobs import Result, Waiting
from uploader.backends import open_store
from uploader.render import job_document
from uploader.service import dispatcher_settings

from tests.doubles import StubPool

PACED = "paced by imgur.rate_limit"


def recorded(store, call: str) -> list:
    """What ``store.<call>`` is asked from now on, one entry a call (still done)."""
    asked, real = [], getattr(store, call)

    def record(items):
        asked.append(list(items))
        return real(items)
    setattr(store, call, record)
    return asked


def embedded(tmp_path):
    """An embedded store and its dispatcher with a job's three URLs in flight; the waits
    written from then on, as {URL id: until} a call."""
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 3},
                               "storage": {"path": str(tmp_path / "s.sqlite3")}}, environ={})
    store = open_store(config.storage, "me")
    dispatcher = Dispatcher(store=store, pool=StubPool(1), **dispatcher_settings(config))
    dispatcher.recover()
    dispatcher._turn([_Submit("job", [f"https://example.test/{n}.png" for n in range(3)],
                              Future())])
    return store, dispatcher, list(dispatcher.state.assigned[0].values())


def written(asked) -> list:
    return [{task.url_id: until for task, until, _ in waits} for waits in asked]


def waits_shown(store):
    return [entry["waiting"] and entry["waiting"]["reason"]
            for entry in job_document(*store.read_job("job"))["urls"]]


def result(dispatcher, task):
    return Result(url_id=task.url_id, worker=0, generation=dispatcher.pool.workers[0].generation,
                  state=jobs.COMPLETE, attempts=1, link=f"https://i.test/{task.url_id}.png")


def test_the_waits_of_a_turn_are_written_together_and_shown_until_they_end(tmp_path):
    store, dispatcher, (a, b, c) = embedded(tmp_path)
    try:
        writes, later = recorded(store, "set_waiting_many"), time.time() + 30
        dispatcher._turn([Waiting(a.url_id, later, PACED), Waiting(b.url_id, later, PACED)])
        assert written(writes) == [{a.url_id: later, b.url_id: later}]
        assert waits_shown(store) == [PACED, PACED, None]
        dispatcher._turn([Waiting(a.url_id, None), Waiting(c.url_id, later, PACED)])
        assert written(writes[1:]) == [{a.url_id: None, c.url_id: later}]
        assert waits_shown(store) == [None, PACED, PACED]
    finally:
        store.close()


def test_a_wait_begun_and_ended_in_one_turn_is_not_written(tmp_path):
    store, dispatcher, (a, _, _) = embedded(tmp_path)
    try:
        writes = recorded(store, "set_waiting_many")
        dispatcher._turn([Waiting(a.url_id, time.time() + 2, PACED), Waiting(a.url_id, None)])
        assert writes == [] and waits_shown(store) == [None, None, None]
        dispatcher._turn([Waiting(a.url_id, None)])  # its end told again: still nothing shown
        assert writes == []
    finally:
        store.close()


def test_a_url_finished_in_the_turn_needs_no_wait_written(tmp_path):
    """Its finish clears what it showed; the results of the turn stay one batch."""
    store, dispatcher, (a, b, _) = embedded(tmp_path)
    try:
        writes, later = recorded(store, "set_waiting_many"), time.time() + 30
        dispatcher._turn([Waiting(a.url_id, later, PACED), Waiting(b.url_id, later, PACED)])
        finishes = recorded(store, "finish_many")
        dispatcher._turn([Waiting(a.url_id, None), result(dispatcher, a),
                          Waiting(b.url_id, None), result(dispatcher, b)])
        assert len(writes) == 1 and [len(batch) for batch in finishes] == [2]
        assert [u["state"] for u in job_document(*store.read_job("job"))["urls"]] == [
            jobs.COMPLETE, jobs.COMPLETE, jobs.IN_FLIGHT]
        assert waits_shown(store) == [None, None, None]
    finally:
        store.close()
