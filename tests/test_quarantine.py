"""Suspects of a crash run alone; other workers keep their slots."""
from uploader.quarantine import Quarantine


def test_no_suspects_changes_nothing():
    q = Quarantine()
    assert q.plan({0: 4, 1: 4}, {0: 0, 1: 0}) == ({0: 4, 1: 4}, None)


def test_crowd_crash_makes_suspects_that_run_one_at_a_time_on_an_empty_worker():
    q = Quarantine()
    q.crashed([11, 12], crowd=True)
    free, start = q.plan({0: 2, 1: 4}, {0: 2, 1: 0})
    assert start == (11, 1) and free == {0: 2, 1: 0}
    q.started(11, 1)
    free, start = q.plan({0: 2, 1: 3}, {0: 2, 1: 1})
    assert start is None and free == {0: 2, 1: 0}  # 12 waits until 11 is done
    q.finished(11)
    free, start = q.plan({0: 2, 1: 4}, {0: 2, 1: 0})
    assert start == (12, 1)
    q.started(12, 1)
    q.finished(12)
    assert q.plan({0: 2, 1: 4}, {0: 2, 1: 0}) == ({0: 2, 1: 4}, None)


def test_a_lone_crash_is_not_suspicious_but_a_suspect_stays_one():
    q = Quarantine()
    q.crashed([5], crowd=False)
    assert not q.queued
    q.crashed([6, 7], crowd=True)
    q.started(6, 0)
    q.crashed([6], crowd=False)  # died alone again: still a suspect, queued for another try
    assert q.queued == {6, 7} and not q.running


def test_quarantine_worker_drains_before_a_suspect_starts():
    q = Quarantine()
    q.crashed([1, 2], crowd=True)
    free, start = q.plan({0: 1, 1: 2}, {0: 3, 1: 2})  # nobody is empty yet
    assert start is None and free[1] == 0 and free[0] == 1  # worker 1 takes no new work
