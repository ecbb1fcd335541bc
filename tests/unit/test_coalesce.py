"""Threads of one worker asking at once share trips, each with its own answer: through a
line's own thread, or made by whichever asker gets the turn (a combiner)."""
import queue
import threading
import time

import pytest

from uploader.coalesce import Combiner, Line, next_batch

WAYS = {"line": lambda call_many: Line(call_many, "test-line"), "combiner": Combiner}


@pytest.fixture(params=sorted(WAYS))
def way(request):
    return WAYS[request.param]


class SlowGate:
    """Numbers its answers and takes 20 ms a trip, so askers pile up behind a trip."""

    def __init__(self, fail_on_trip=None):
        self.trips, self.issued, self.fail_on_trip = [], 0, fail_on_trip
        self.lock = threading.Lock()

    def reserve_many(self, asks):
        if not asks:  # the line opening its way
            return []
        time.sleep(0.02)
        with self.lock:
            self.trips.append(len(asks))
            if len(self.trips) == self.fail_on_trip:
                raise ConnectionError("manager gone")
            first, self.issued = self.issued, self.issued + len(asks)
        return [(True, float(n), ask) for n, ask in enumerate(asks, first)]


def ask_together(line, threads):
    start, answers, errors = threading.Barrier(threads), [], []

    def ask(n):
        start.wait()
        try:
            answers.append((n, line(n)))
        except ConnectionError as exc:
            errors.append(exc)

    workers = [threading.Thread(target=ask, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    return answers, errors


def test_askers_at_the_same_moment_share_trips_and_each_gets_its_own_answer(way):
    gate = SlowGate()
    answers, errors = ask_together(way(gate.reserve_many), 32)
    assert not errors
    assert all(answer[2] == n for n, answer in answers)  # each got the answer to its item
    assert sorted(answer[1] for _, answer in answers) == [float(n) for n in range(32)]
    assert sum(gate.trips) == 32 and len(gate.trips) < 8  # not one trip each


def test_a_lone_asker_goes_at_once_and_later_askers_still_get_through(way):
    gate = SlowGate()
    line = way(gate.reserve_many)
    assert line("a") == (True, 0.0, "a")
    assert line("b") == (True, 1.0, "b")
    assert gate.trips == [1, 1]


def test_a_failed_trip_fails_its_askers_and_the_next_trip_still_goes(way):
    gate = SlowGate(fail_on_trip=1)
    line = way(gate.reserve_many)
    answers, errors = ask_together(line, 16)
    assert len(errors) == gate.trips[0] and len(answers) == 16 - gate.trips[0]
    assert line("after")[0]


def test_a_batch_is_what_waits_up_to_its_limit_and_waits_for_a_first():
    asks = queue.SimpleQueue()
    for n in range(5):
        asks.put(n)
    assert next_batch(asks, limit=3) == [0, 1, 2]
    assert next_batch(asks) == [3, 4]
    threading.Timer(0.05, asks.put, args=("late",)).start()
    assert next_batch(asks) == ["late"]  # waited for it
