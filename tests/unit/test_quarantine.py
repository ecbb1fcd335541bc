"""Suspects of a crash run alone; other workers keep their slots."""
from uploader.quarantine import Quarantine


def test_no_suspects_changes_nothing():
    q = Quarantine()
    assert q.plan({0: 4, 1: 4}, {0: 0, 1: 0}, waiting=False) == ({0: 4, 1: 4}, None)


def test_suspects_run_one_at_a_time_on_a_worker_kept_empty_for_them():
    q = Quarantine()
    free, start = q.plan({0: 2, 1: 4}, {0: 2, 1: 0}, waiting=True)
    assert start == 1 and free == {0: 2, 1: 0}
    q.started(11, 1)
    free, start = q.plan({0: 2, 1: 3}, {0: 2, 1: 1}, waiting=True)
    assert start is None and free == {0: 2, 1: 0}  # the next suspect waits until 11 is done
    q.finished(11)
    free, start = q.plan({0: 2, 1: 4}, {0: 2, 1: 0}, waiting=True)
    assert start == 1
    q.started(12, 1)
    q.finished(12)
    assert q.plan({0: 2, 1: 4}, {0: 2, 1: 0}, waiting=False) == ({0: 2, 1: 4}, None)


def test_a_running_suspect_keeps_its_worker_to_itself_when_none_waits():
    q = Quarantine()
    q.plan({0: 2, 1: 4}, {0: 2, 1: 0}, waiting=True)
    q.started(7, 1)
    free, start = q.plan({0: 2, 1: 3}, {0: 2, 1: 1}, waiting=False)
    assert start is None and free == {0: 2, 1: 0}


def test_quarantine_worker_drains_before_a_suspect_starts():
    q = Quarantine()
    free, start = q.plan({0: 1, 1: 2}, {0: 3, 1: 2}, waiting=True)  # nobody is empty yet
    assert start is None and free[1] == 0 and free[0] == 1  # worker 1 takes no new work


def test_a_copy_is_independent():
    q = Quarantine()
    twin = q.copy()
    twin.started(3, 0)
    assert q.running == {} and twin.running == {3: 0}
