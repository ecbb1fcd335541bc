"""The service operations without Tornado: the real dispatcher (its thread, no workers) and
store; what each operation refuses, and what deleting an image does besides the store."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from uploader import jobs
from uploader.config import config_from_dict
from uploader.dispatcher import Dispatcher
from uploader.errors import QueueFull
from uploader.operations import Conflict, NotFound, Operations
from uploader.render import job_document
from uploader.service import dispatcher_settings
from uploader.backends import open_store

from tests.doubles import StubPool

LINK, SHA = "http://localhost:8000/i/AbCd123.png", "aa" * 32


@pytest.fixture
def parts(tmp_path):
    """(operations, store, forgotten): a store holding job-1 with one image uploaded and
    one URL failed; the dispatcher has no worker, so nothing submitted is claimed."""
    config = config_from_dict({"storage": {"path": str(tmp_path / "s.sqlite3")},
                               "server": {"max_queued_urls_per_key": 2}}, environ={})
    store = open_store(config.storage, "me")
    with store.transaction():
        store.create_job("job-1", ["https://a.example/cat.png", "https://a.example/gone.png"])
        done, gone = store.claim(2)
        store.finish(done, jobs.COMPLETE, attempts=1, link=LINK, sha256=SHA, host="local")
        store.finish(gone, jobs.FAILED, attempts=1, reason="HTTP 404 from source")
    dispatcher = Dispatcher(store=store, pool=StubPool(0), **dispatcher_settings(config))
    dispatcher.start()
    readers, forgotten = ThreadPoolExecutor(2), []
    operations = Operations(store=store, writer=dispatcher, readers=readers,
                            forget=lambda sha256, account: forgotten.append((sha256, account)),
                            host="local")
    yield operations, store, forgotten
    dispatcher.stop(0, immediate=True)
    assert dispatcher.stopped.wait(10)
    readers.shutdown()
    store.close()


def document(store, job_id):
    return job_document(*store.read_job(job_id))


def test_deleting_an_image_records_it_and_drops_it_from_dedup(parts):
    operations, store, forgotten = parts
    image_id = document(store, "job-1")["urls"][0]["image_id"]
    assert asyncio.run(operations.delete_image(image_id, "")) == LINK
    assert document(store, "job-1")["urls"][0]["deleted"] is True
    assert store.link_for(SHA, "local") is None and forgotten == [(SHA, "")]
    with pytest.raises(NotFound, match=f"no image with id {image_id!r}"):
        asyncio.run(operations.delete_image(image_id, ""))
    assert forgotten == [(SHA, "")]  # forgotten once


def test_an_image_on_another_host_is_refused_and_kept(parts):
    operations, store, forgotten = parts
    image_id = document(store, "job-1")["urls"][0]["image_id"]
    operations.host = "s3"  # the service moved to another host since the upload
    with pytest.raises(Conflict, match="on the local host, which this service no longer uses"):
        asyncio.run(operations.delete_image(image_id, ""))
    assert document(store, "job-1")["urls"][0]["deleted"] is False and forgotten == []


def test_retry_makes_a_job_of_exactly_the_failed_urls_and_refuses_the_rest(parts):
    operations, store, _ = parts
    with pytest.raises(NotFound):
        asyncio.run(operations.retry("job-none", ""))
    again = asyncio.run(operations.retry("job-1", ""))
    retried = document(store, again)
    assert [entry["url"] for entry in retried["urls"]] == ["https://a.example/gone.png"]
    assert retried["retry_of"] == "job-1"
    with pytest.raises(Conflict, match=f"job {again} is pending: only a complete job"):
        asyncio.run(operations.retry(again, ""))
    assert asyncio.run(operations.cancel(again, "")) == 1  # its queued URL failed
    with pytest.raises(NotFound):
        asyncio.run(operations.cancel("job-none", ""))
    with pytest.raises(QueueFull):  # the key's cap (2 queued) holds for operations too
        asyncio.run(operations.submit([f"https://a.example/{n}.png" for n in range(3)], ""))
