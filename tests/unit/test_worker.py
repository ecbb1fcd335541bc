"""Worker pieces that need no process: the first round's order, the inbox at a stop, the
dedup claim a fetch thread makes for each URL, and the bytes it hashes for it."""
import hashlib
import io
import queue
import threading

import pytest
from PIL import Image

from testbed.fakes.image_source import make_image
from uploader import imagetype, metadata
from uploader.backends import Shared
from uploader.backends.memory import MemoryCoordinator, MemoryStore
from uploader.backends.sqlite.coordinator import Guarded
from uploader.config import load_config
from uploader.jobs import COMPLETE, Task
from uploader.worker import SHARED_STATE_LOST, FirstRound, Worker, _read_inbox, _Ready

from tests.support import write_config


def test_fetching_ahead_begins_once_as_many_urls_as_slots_are_prepared():
    first_round = FirstRound(slots=3)
    began = threading.Event()
    threading.Thread(target=lambda: (first_round.wait(), began.set()), daemon=True).start()
    first_round.prepared()
    first_round.prepared()
    assert not began.wait(0.2)
    first_round.prepared()  # fetched and claimed, or finished already: either counts
    assert began.wait(5)
    first_round.prepared()  # after the first round nothing waits and nothing changes


def test_a_stop_before_the_first_round_is_prepared_releases_the_threads_fetching_ahead():
    class Gone:
        def recv_bytes(self):
            raise EOFError  # the front end is gone (a stop's empty message does the same)

    first_round, tasks = FirstRound(slots=4), queue.SimpleQueue()
    first_round.prepared()  # a worker that got fewer URLs than it has slots
    _read_inbox(Gone(), tasks, 8, first_round)
    assert first_round.wait(5)  # the ahead threads go on to take their stop from the queue
    assert [tasks.get_nowait() for _ in range(8)] == [None] * 8
    assert tasks.empty()


class Discard:
    def put(self, record):
        pass


def test_a_fetch_thread_claiming_bytes_again_for_another_url_waits_for_the_first_upload(
        tmp_path, image_source):
    # Fetch threads hand images to upload slots, so one thread may fetch the same bytes for
    # a second URL while a slot still uploads them for the first: the second must wait for
    # that upload's link, not upload the bytes again.
    coordinator = MemoryCoordinator(store=MemoryStore())  # the store has no link for them yet
    worker = Worker(0, 1, load_config(write_config(tmp_path)), Discard(), Shared(coordinator))
    image = make_image("png", "twice")
    tasks = []
    for url_id, name in ((1, "a"), (2, "b")):
        image_source.add(f"/twice/{name}.png", image, content_type="image/png")
        tasks.append(Task(url_id, "job", image_source.url_for(f"/twice/{name}.png"), 1))
    prepared = queue.SimpleQueue()

    def one_fetch_thread():
        for task in tasks:
            prepared.put(worker.prepare(task))
    threading.Thread(target=one_fetch_thread, daemon=True).start()

    first = prepared.get(timeout=10)
    assert isinstance(first, _Ready)  # its bytes are this URL's to upload
    with pytest.raises(queue.Empty):
        prepared.get(timeout=0.5)  # the same bytes again: they wait, they are not uploaded
    link = "https://i.imgur.com/abcdefg.png"
    coordinator.end_many([(first.digest, "", link, None, first.owner, False)])  # uploaded
    second = prepared.get(timeout=10)
    assert (second.state, second.link, second.reused) == (COMPLETE, link, True)


def test_a_broken_trip_to_the_manager_ends_the_worker_instead_of_failing_the_url(
        tmp_path, image_source, monkeypatch):
    # The manager died: its proxies raise a connection error. That is not the URL's fault,
    # so no failed Result is sent; the worker ends with SHARED_STATE_LOST (the front end then
    # hands its URLs back, tests/system/test_state_machine.py). A source's or a host's own network
    # errors still fail the URL: only calls to the manager are guarded.
    class ManagerGone(MemoryCoordinator):
        def claim_many(self, claims):
            raise BrokenPipeError(32, "Broken pipe")

    def exit_now(code):
        raise SystemExit(code)
    monkeypatch.setattr("uploader.worker.os._exit", exit_now)
    coordinator = ManagerGone(store=MemoryStore())
    worker = Worker(0, 1, load_config(write_config(tmp_path)), Discard(),
                    Shared(Guarded(coordinator)))  # as ``worker.run`` holds a manager proxy
    image_source.add("/gone.png", make_image("png", "gone"), content_type="image/png")
    with pytest.raises(SystemExit) as ended:
        worker.prepare(Task(1, "job", image_source.url_for("/gone.png"), 1))
    assert ended.value.code == SHARED_STATE_LOST


@pytest.mark.parametrize("strip", [True, False])
def test_the_digest_names_the_bytes_to_store_stripped_unless_turned_off(tmp_path, image_source, strip):
    # dedup and a content-addressed host key by the digest: it must be that of the bytes stored
    coordinator = MemoryCoordinator(store=MemoryStore())
    config = load_config(write_config(tmp_path, images={"strip_metadata": strip}))
    worker = Worker(0, 1, config, Discard(), Shared(coordinator))
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG", comment=b"taken at home")
    photo = out.getvalue()
    image_source.add("/photo.jpg", photo, content_type="image/jpeg")
    ready = worker.prepare(Task(1, "job", image_source.url_for("/photo.jpg"), 1))
    stored = metadata.strip(photo, imagetype.JPEG) if strip else photo
    assert (b"taken at home" in ready.fetched.data) is not strip
    assert ready.fetched.data == stored and ready.digest == hashlib.sha256(stored).hexdigest()
