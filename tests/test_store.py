"""The SQLite store: job creation, dispatch, results, hand-back and the rendered job."""
import pytest

from uploader import jobs
from uploader.store import StoreReader, open_store

URLS = ["https://a.example/1.png", "https://a.example/2.png", "https://a.example/3.png"]


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    writer = open_store(path)
    with writer.transaction():
        writer.create_job("job-1", URLS, created=1000.0)
    return writer, StoreReader(path)


def test_new_job_is_pending_with_every_url_pending(store):
    writer, reader = store
    job = reader.job("job-1")
    assert job["status"] == "pending" and job["finished"] is None
    assert job["created"] == "1970-01-01T00:16:40.000Z"
    assert job["uploaded"] == {"pending": URLS, "complete": [], "failed": []}
    assert [u["attempts"] for u in job["urls"]] == [0, 0, 0]


def test_dispatch_then_results_complete_the_job_once(store):
    writer, reader = store
    with writer.transaction():
        tasks = writer.take_queued(2)
    assert [t.url for t in tasks] == URLS[:2] and all(t.attempt == 1 for t in tasks)
    assert reader.job("job-1")["status"] == "in-progress"
    with writer.transaction():
        writer.finish(tasks[0].url_id, jobs.COMPLETE, attempts=1, link="https://i.example/a.png",
                      sha256="aa", when=2000.0)
        writer.finish(tasks[1].url_id, jobs.FAILED, attempts=1, reason="HTTP 404 from source",
                      when=2000.0)
        (last,) = writer.take_queued(5)
    job = reader.job("job-1")
    assert job["status"] == "in-progress" and job["finished"] is None
    with writer.transaction():
        assert writer.finish(last.url_id, jobs.COMPLETE, attempts=1,
                             link="https://i.example/c.png", when=3000.0)
        assert not writer.finish(last.url_id, jobs.FAILED, attempts=2, reason="late", when=4000.0)
    job = reader.job("job-1")
    assert job["status"] == "complete"
    assert job["finished"] == "1970-01-01T00:50:00.000Z"
    assert job["uploaded"] == {"pending": [], "complete": ["https://i.example/a.png",
                                                          "https://i.example/c.png"],
                               "failed": [URLS[1]]}
    assert job["urls"][1]["reason"] == "HTTP 404 from source"
    assert [row[1] for row in reader.links_after(0, 10)] == ["https://i.example/a.png",
                                                             "https://i.example/c.png"]


def test_requeued_and_handed_back_urls_keep_their_attempts(store):
    writer, reader = store
    with writer.transaction():
        first = writer.take_queued(3)
        writer.requeue(first[0].url_id)
    with writer.transaction():
        assert writer.hand_back_in_flight(max_attempts=5, when=1) == (2, [])
    with writer.transaction():
        again = writer.take_queued(3)
    assert sorted(t.attempt for t in again) == [2, 2, 2]
    assert reader.job("job-1")["status"] == "in-progress"


def test_unknown_job_reads_as_none(store):
    assert store[1].job("nope") is None


def test_a_link_is_listed_once_even_if_two_urls_share_it(store):
    writer, reader = store
    with writer.transaction():
        a, b, _ = writer.take_queued(3)
        writer.finish(a.url_id, jobs.COMPLETE, attempts=1, link="https://i.example/same.png", when=1)
        writer.finish(b.url_id, jobs.COMPLETE, attempts=1, link="https://i.example/same.png", when=1)
    assert [row[1] for row in reader.links_after(0, 10)] == ["https://i.example/same.png"]


def test_a_stop_refunds_the_attempt_it_interrupted(store):
    writer, reader = store
    with writer.transaction():
        first = writer.take_queued(1)[0]
        writer.requeue(first.url_id, refund=True)
        again = writer.take_queued(1)[0]
    assert again.url_id == first.url_id and again.attempt == 1


def test_url_whose_every_attempt_was_cut_short_fails_instead_of_looping(store):
    writer, reader = store
    for _ in range(2):  # dispatched, then the whole service crashes; twice
        with writer.transaction():
            writer.take_queued(3)
            handed_back, failed = writer.hand_back_in_flight(max_attempts=2, when=5000.0)
    assert handed_back == 0 and [row[2] for row in failed] == URLS
    with writer.transaction():
        assert writer.take_queued(3) == []
    job = reader.job("job-1")
    assert job["status"] == "complete" and job["uploaded"]["failed"] == URLS
    assert "died while uploading, on each of 2 attempts" in job["urls"][0]["reason"]


def test_a_job_that_cannot_be_stored_leaves_nothing_and_spoils_nothing(store):
    writer, reader = store
    with writer.transaction():
        with pytest.raises(UnicodeEncodeError):
            writer.create_job("bad", ["https://a.example/ok.png", "https://a.example/\ud800"], 1)
        writer.create_job("good", ["https://a.example/ok.png"], 1)
    assert reader.job("bad") is None
    assert reader.job("good")["uploaded"]["pending"] == ["https://a.example/ok.png"]
