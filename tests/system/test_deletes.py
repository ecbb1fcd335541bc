"""Deleting an image, in-process on both stores: the real handler, store and courier, a
host that records what it is asked. The deletion is recorded first; the host hears of it
only from the outbox, so a store that cannot record it leaves everything as it was."""
import asyncio
import contextlib
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import tornado.httpserver
import tornado.netutil

from uploader import jobs
from uploader.app import make_app
from uploader.config import Config, LocalConfig, StorageConfig
from uploader.courier import Courier
from uploader.metrics import Metrics
from uploader.operations import Operations
from uploader.render import job_document
from uploader.backends import open_store
from uploader.service import courier_settings

from tests.doubles import OneWriter
from tests.support import wait_until

LINK, DELETEHASH, SHA = "http://localhost:8000/i/AbCd123.png", "AbCd123.png", "aa" * 32


@contextlib.contextmanager
def serving(app):
    """The app on a free loopback port, its IOLoop on a thread of its own; its base URL."""
    loop, ready, held = asyncio.new_event_loop(), threading.Event(), {}

    def run():
        asyncio.set_event_loop(loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        held["server"] = tornado.httpserver.HTTPServer(app)
        held["server"].add_sockets(sockets)
        held["port"] = sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="app", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{held['port']}"
    finally:
        loop.call_soon_threadsafe(held["server"].stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def service(storage, tmp_path):
    """A stand-in service with a real store holding one uploaded image, a writer that can
    be told to fail, and a courier (not started) that removes bytes at a host recording
    what it is asked."""
    store = open_store(StorageConfig(**storage), "me")
    with store.transaction():
        store.create_job("job-1", ["https://a.example/cat.png"])
        (task,) = store.claim(1)
        store.finish(task, jobs.COMPLETE, attempts=1, link=LINK, sha256=SHA, host="local",
                     deletehash=DELETEHASH)
    config = Config(local=LocalConfig(directory=str(tmp_path / "images")))
    asked, forgotten = [], []

    def delete_at_host(deletehash):
        asked.append(deletehash)
        return True

    writer = OneWriter(store)
    courier = Courier(call=writer.call, store=store, metrics=Metrics(),
                      delete_at_host=delete_at_host, **courier_settings(config, store))
    readers = ThreadPoolExecutor(2)
    operations = Operations(store=store, writer=writer, readers=readers,
                            forget=lambda sha256, account: forgotten.append(sha256),
                            host=config.resolved_image_host)
    stand_in = types.SimpleNamespace(
        config=config, stopping=False, store=store, readers=readers, metrics=Metrics(),
        dispatcher=writer, courier=courier, delete_at_host=delete_at_host, asked=asked,
        forgotten=forgotten, operations=operations)
    yield stand_in  # (the test starts the courier)
    courier.stop()
    readers.shutdown()
    store.close()


def listed(store):
    with store.links(10) as pages:
        return [link for page in pages for link in page]


def test_a_deletion_the_store_cannot_record_changes_nothing_anywhere(service):
    store = service.store
    image_id = job_document(*store.read_job("job-1"))["urls"][0]["image_id"]
    with serving(make_app(service)) as url:
        service.dispatcher.fail_next = 1
        failed = requests.delete(f"{url}/v1/images/{image_id}", timeout=10)
        assert failed.status_code == 503 and failed.headers["Retry-After"]
        # nothing happened: the link is live everywhere, and no deletion is owed the host
        assert listed(store) == [LINK] and store.link_for(SHA, "local") == LINK
        assert job_document(*store.read_job("job-1"))["urls"][0]["deleted"] is False
        assert store.next_effect_in() is None and service.forgotten == []
        assert service.asked == []  # the bytes are still there too
        service.courier.start()  # (not before: its claims would take the failure meant above)

        answer = requests.delete(f"{url}/v1/images/{image_id}", timeout=10)
        assert answer.status_code == 202 and answer.json() == {"image_id": image_id, "link": LINK}
        # recorded in one commit: gone from the listing and from dedup, deleted in the job
        assert listed(store) == [] and store.link_for(SHA, "local") is None
        assert job_document(*store.read_job("job-1"))["urls"][0]["deleted"] is True
        assert service.forgotten == [SHA]
        service.courier.wake()
        wait_until(lambda: service.asked == [DELETEHASH])  # then, the bytes at the host
        assert requests.delete(f"{url}/v1/images/{image_id}", timeout=10).status_code == 404
    wait_until(lambda: store.next_effect_in() is None)  # the outbox settled: done
    assert service.asked == [DELETEHASH]


def test_bytes_uploaded_again_before_the_courier_came_stay_at_the_host(service):
    """A host that names objects by their bytes (S3) gives a re-upload the deleted link
    back: the courier, finding the link live again, leaves the bytes where they are."""
    store = service.store
    image_id = job_document(*store.read_job("job-1"))["urls"][0]["image_id"]
    with store.transaction():
        assert store.delete_image(image_id, "") == (LINK, "local", False)
        store.create_job("job-2", ["https://a.example/cat-again.png"])
        (task,) = store.claim(1)
        store.finish(task, jobs.COMPLETE, attempts=1, link=LINK, sha256=SHA, host="local",
                     deletehash=DELETEHASH)  # the same bytes, the same link, live again
    service.courier.start()
    wait_until(lambda: deletions(store) == ["done"])  # the owed deletion was settled ...
    assert service.asked == []  # ... without asking the host
    assert listed(store) == [LINK]


def deletions(store):
    """The states of the host deletions in the outbox."""
    with store.reading() as conn:
        return [state for (state,) in conn.execute(
            "SELECT state FROM outbox WHERE kind = 'host_delete'").fetchall()]
