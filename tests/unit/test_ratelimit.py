"""The pool's upload gate, in-process: pace, pauses, Imgur's budgets and the probe."""
import time

import pytest

from uploader.hosts.imgur import UPLOAD_CREDITS
from uploader.backends.sqlite.gate import UploadGate as _UploadGate


def UploadGate(**kwargs):
    """The gate with Imgur's credit costs (what the service gives it for Imgur)."""
    return _UploadGate(costs=UPLOAD_CREDITS, **kwargs)


def report(**budgets):
    return {f"{name}_{field}": value for name, (remaining, reset) in budgets.items()
            for field, value in (("remaining", remaining), ("reset", reset))}


def test_rate_and_burst_are_shared_by_every_caller():
    gate = UploadGate(rate=10, burst=2)
    waits = []
    for _ in range(5):
        asked = time.monotonic()
        granted, when, why = gate.reserve()
        assert granted and why == "paced by imgur.rate_limit: 10 uploads a second for the whole service"
        waits.append(max(0.0, when - asked))
        gate.observe(None)
    assert waits[:2] == pytest.approx([0.0, 0.0], abs=0.01)
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3], abs=0.02)


def test_first_upload_is_a_probe_then_budgets_decide():
    gate = UploadGate(rate=0, burst=1, reserve={"user": 10})
    assert gate.reserve()[0]
    granted, wait, why = gate.reserve()
    assert not granted and why == ""  # wait for the probe's answer
    gate.observe(report(user=(50, 30)))
    grants = 0
    while gate.reserve()[0]:
        grants += 1
    assert grants == 4  # 50 - 4 * 10 = 10 is the reserve; the fifth would dip into it


def test_budget_at_reserve_holds_every_upload_until_its_reset():
    gate = UploadGate(rate=0, burst=1, reserve={"client": 100})
    assert gate.reserve()[0]
    gate.observe(report(client=(105, 0.3)))
    granted, when, why = gate.reserve()
    assert not granted and 0.2 < when - time.monotonic() <= 0.3
    assert "client budget is down to its reserve of 100" in why
    time.sleep(when - time.monotonic())
    assert gate.reserve()[0]  # reset: one probe goes
    assert not gate.reserve()[0]


def test_pause_holds_everyone_and_is_never_shortened():
    gate = UploadGate(rate=0, burst=1)
    gate.pause(0.5, "Imgur asked us to slow down")
    gate.pause(0.1, "shorter")
    granted, when, why = gate.reserve()
    assert not granted and 0.4 < when - time.monotonic() <= 0.5
    assert why == "Imgur asked us to slow down"


def test_a_host_without_budget_headers_is_not_serialised():
    gate = UploadGate(rate=0, burst=1)
    assert gate.reserve()[0]
    gate.observe(None)
    assert all(gate.reserve()[0] for _ in range(10))


def test_a_stale_report_arriving_late_does_not_raise_the_estimate():
    gate = UploadGate(rate=0, burst=1, reserve={"user": 10})
    assert gate.reserve()[0]
    gate.observe(report(user=(50, 30)))
    while gate.reserve()[0]:
        pass
    gate.observe(report(user=(20, 30)))  # answers come back out of order
    gate.observe(report(user=(40, 30)))
    assert not gate.reserve()[0]  # 20 - 2 in flight * 10 - 10 < reserve


def test_a_reservation_made_before_a_pause_is_withdrawn_when_its_moment_comes():
    gate = UploadGate(rate=10, burst=1)
    assert gate.reserve()[0]
    gate.observe(None)  # the probe's answer: no budget headers
    assert gate.reserve()[0]
    granted, when, _ = gate.reserve()
    assert granted and when > time.monotonic()  # a reservation for later
    gate.pause(1.0, "Imgur asked us to slow down")
    time.sleep(max(0.0, when - time.monotonic()))
    ok, until, why = gate.confirm()
    assert not ok and until - time.monotonic() > 0.5 and why == "Imgur asked us to slow down"
    gate.observe(None)  # the answer to the grant that was used
    assert gate.in_flight == 0  # the withdrawn grant no longer counts as in flight


def test_a_grant_given_back_no_longer_counts_and_teaches_nothing():
    gate = UploadGate(rate=0, burst=1)
    assert gate.reserve(("w0", 1))[0]  # the probe
    assert not gate.reserve(("w0", 1))[0]
    gate.withdraw(("w0", 1))  # given back unused: no answer came
    assert gate.in_flight == 0
    assert gate.reserve(("w0", 1))[0]  # so another probe goes, and alone
    assert not gate.reserve(("w0", 1))[0]


def test_a_dead_workers_grants_stop_counting_as_in_flight():
    gate = UploadGate(rate=0, burst=1, reserve={"user": 10})
    assert gate.reserve(("w0", 1))[0]
    gate.observe(report(user=(30, 30)), ("w0", 1))
    assert gate.reserve(("w0", 1))[0] and gate.reserve(("w1", 1))[0]
    assert not gate.reserve(("w1", 1))[0]  # 30 - 3 * 10 = 0 would dip into the reserve of 10
    gate.release(("w0", 1))  # worker 0 died mid-upload: its grant will never be answered
    assert gate.in_flight == 1
    assert gate.reserve(("w1", 1))[0]


def test_reservations_asked_together_are_those_asked_one_after_another():
    together, alone = UploadGate(rate=10, burst=2), UploadGate(rate=10, burst=2)
    for gate in (together, alone):
        gate.observe(report(user=(100, 60), client=(1000, 60), post=(100, 60)))
    many = together.reserve_many(4, ("w0", 1))
    single = [alone.reserve(("w0", 1)) for _ in range(4)]
    assert [granted for granted, _, _ in many] == [granted for granted, _, _ in single] == [True] * 4
    spacing = [round(b[1] - a[1], 2) for a, b in zip(many, many[1:])]
    assert spacing == [0.0, 0.1, 0.1]  # the burst of 2 at once, then the gate's pace
    assert together.in_flight == alone.in_flight == 4


def test_while_probing_a_batch_sends_one_upload_and_holds_the_rest():
    gate = UploadGate(rate=0, burst=1)
    answers = gate.reserve_many(3, ("w0", 1))
    assert [granted for granted, _, _ in answers] == [True, False, False]
    assert gate.in_flight == 1
    gate.observe(report(user=(100, 60), client=(1000, 60), post=(100, 60)), ("w0", 1))
    assert all(granted for granted, _, _ in gate.reserve_many(3, ("w0", 1)))


def test_a_host_without_budgets_never_probes():
    gate = _UploadGate(rate=0, burst=1, host="S3")  # what S3 gets: no pace, no budgets
    answers = gate.reserve_many(3, ("w0", 1))
    assert [granted for granted, _, _ in answers] == [True] * 3  # nobody waits for a first answer
    gate.pause(60, "S3 asked us to slow down")
    granted, _, why = gate.reserve(("w0", 1))
    assert not granted and why == "S3 asked us to slow down"  # a pause still holds everyone
