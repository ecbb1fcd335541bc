"""Worker pieces that need no process: the first round's order, and the inbox at a stop."""
import queue
import threading

from uploader.worker import FirstRound, _read_inbox


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
