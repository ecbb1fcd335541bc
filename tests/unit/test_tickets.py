"""Tickets of an unpaced gate (``backends.postgres.tickets``), against the gate's rules in memory:
taken ahead in one change and counted in flight, handed out without a trip, answers told
together, unused ones given back, none held across a pause or while pauses go unheard,
none taken from a budget's last uploads."""
import time

import pytest

from uploader.hosts.imgur import UPLOAD_CREDITS
from uploader.ratelimit import GateRules
from uploader.backends.postgres.tickets import Tickets

OWNER = (0, 1)


def report(**budgets):
    return {f"{name}_{field}": value for name, (remaining, reset) in budgets.items()
            for field, value in (("remaining", remaining), ("reset", reset))}


class MemoryGate:
    """The gate row in memory: each change applied at once (one "compare-and-set")."""

    def __init__(self, rules):
        self.rules = rules
        self.state = rules.new_state(time.monotonic())
        self.grants = {}
        self.changes = 0
        self.during_change = None  # called inside a change: what happens during the trip

    def change(self, change):
        self.changes += 1
        if self.during_change is not None:
            self.during_change()
        return change(self.state, self.grants, time.monotonic())

    @staticmethod
    def count(grants, owner, n):
        left = grants.get(owner, 0) + n
        if left > 0:
            grants[owner] = left
        else:
            grants.pop(owner, None)


@pytest.fixture
def make():
    """``make(remaining, batch)``: tickets on a gate whose budgets are known (no probe),
    telling only when asked; their threads are stopped after the test."""
    made = []

    def tickets_on_a_gate(remaining=10_000, batch=4):
        rules = GateRules(rate=0, burst=1, reserve={"user": 10, "client": 0, "post": 0},
                          costs=UPLOAD_CREDITS)
        gate = MemoryGate(rules)
        rules.learn(gate.state, time.monotonic(), report(user=(remaining, 3600)))
        tickets = Tickets(rules, gate.change, gate.count, batch, tell_seconds=3600)
        made.append(tickets)
        return gate, tickets
    yield tickets_on_a_gate
    for tickets in made:
        tickets.close()


def listening(tickets):
    """One grant (taken alone: nobody listens yet), then the instance's listener is up."""
    assert all(granted for granted, _, _ in tickets.reserve(1, OWNER))
    assert not tickets.listening
    tickets.heard(True)
    assert tickets.listening


def test_tickets_are_taken_ahead_in_one_change_and_count_as_in_flight(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    before = gate.changes
    answers = tickets.reserve(2, OWNER)
    assert [granted for granted, _, _ in answers] == [True, True]
    assert all(abs(when - time.monotonic()) < 1 for _, when, _ in answers)  # unpaced: now
    assert gate.changes == before + 1
    assert gate.grants[OWNER] == 1 + 2 + 4  # the first grant, these two, four held
    assert tickets.held(OWNER) == 4

    assert [granted for granted, _, _ in tickets.reserve(3, OWNER)] == [True] * 3
    assert gate.changes == before + 1  # handed out without a trip
    assert tickets.held(OWNER) == 1
    assert [granted for granted, _, _ in tickets.reserve(2, OWNER)] == [True] * 2
    assert gate.changes == before + 2  # the one held, and one more from the gate (and 4 ahead)
    assert gate.grants[OWNER] == 1 + 2 + 4 + 1 + 4 and tickets.held(OWNER) == 4


def test_answers_are_told_together_and_their_resets_aged(make):
    gate, tickets = make()
    listening(tickets)
    tickets.reserve(2, OWNER)
    in_flight, before = gate.grants[OWNER], gate.changes
    tickets.answered([(report(user=(500, 100.0)), OWNER)])
    answered = time.monotonic()
    tickets.answered([(report(user=(490, 100.0)), OWNER)])
    time.sleep(0.3)
    assert gate.changes == before and gate.grants[OWNER] == in_flight  # kept, not told yet

    tickets.tell()
    assert gate.changes == before + 1
    assert gate.grants[OWNER] == in_flight - 2
    remaining, reset_at, _ = gate.state.budgets["user"]
    assert remaining == 490  # the lowest of one period is the latest truth
    # reset 100 s after the answer, not after the telling 0.3 s later
    assert reset_at == pytest.approx(answered + 100.0, abs=0.1)


def test_tickets_unused_since_the_last_telling_are_given_back(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    tickets.reserve(1, OWNER)
    assert tickets.held(OWNER) == 4
    tickets.tell()  # handed out since the last telling: kept
    assert tickets.held(OWNER) == 4 and gate.grants[OWNER] == 2 + 4
    tickets.tell()  # none handed out since: the worker has no use for them
    assert tickets.held(OWNER) == 0 and gate.grants[OWNER] == 2


def test_a_pause_heard_voids_the_tickets_held(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    tickets.reserve(1, OWNER)
    assert tickets.held(OWNER) == 4
    gate.rules.pause(gate.state, time.monotonic(), 30, "Imgur asked us to slow down")
    tickets.heard(True)  # as another process's pause is heard
    assert tickets.held(OWNER) == 0

    granted, when, why = tickets.reserve(1, OWNER)[0]
    assert not granted and why == "Imgur asked us to slow down" and when > time.monotonic() + 20
    assert gate.grants[OWNER] == 2  # the voided four given back with that trip


def test_tickets_granted_before_a_pause_heard_during_the_trip_are_not_kept(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    gate.during_change = tickets.void  # the pause's notice arrives while the trip is made
    assert tickets.reserve(1, OWNER)[0][0]  # the asker's own grant: used, as one just before
    assert tickets.held(OWNER) == 0
    gate.during_change = None
    tickets.tell()
    assert gate.grants[OWNER] == 2  # the four given back


def test_no_tickets_are_taken_ahead_while_pauses_go_unheard(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    tickets.reserve(1, OWNER)
    tickets.heard(False)  # the instance's listening connection was lost
    assert not tickets.listening and tickets.held(OWNER) == 0
    before = gate.changes
    tickets.reserve(1, OWNER)
    tickets.reserve(1, OWNER)
    assert gate.changes == before + 2 and tickets.held(OWNER) == 0  # one trip each, as before
    assert gate.grants[OWNER] == 4  # three asked for, the one held before given back
    tickets.heard(True)  # listening again
    tickets.reserve(1, OWNER)
    assert tickets.held(OWNER) == 4


def test_the_last_uploads_a_budget_allows_are_not_taken_ahead(make):
    # 110 credits left, 10 kept back, 10 an upload: ten uploads fit
    gate, tickets = make(remaining=110, batch=4)
    listening(tickets)  # one in flight
    tickets.reserve(1, OWNER)  # two, and room beyond four more for four more: four ahead
    assert tickets.held(OWNER) == 4 and gate.grants[OWNER] == 6
    tickets.reserve(4, OWNER)
    tickets.reserve(1, OWNER)  # seven in flight: room for three, none beyond: none ahead
    assert tickets.held(OWNER) == 0 and gate.grants[OWNER] == 7
    answers = tickets.reserve(5, (1, 1))  # another worker's slots get the last three
    assert [granted for granted, _, _ in answers] == [True] * 3 + [False] * 2
    assert "user budget is down to its reserve of 10" in answers[4][2]


def test_a_failed_trip_keeps_the_answers_for_the_next_telling(make):
    gate, tickets = make()
    listening(tickets)
    tickets.reserve(1, OWNER)
    tickets.answered([(None, OWNER)])
    in_flight = gate.grants[OWNER]

    def unreachable():
        raise ConnectionError("the database went away")
    gate.during_change = unreachable
    with pytest.raises(ConnectionError):
        tickets.tell()
    gate.during_change = None
    tickets.tell()
    assert gate.grants[OWNER] == in_flight - 1 - 4  # the answer, and the unused four


def test_closing_tells_the_gate_what_was_held_and_kept(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    tickets.reserve(2, OWNER)  # four more held
    tickets.answered([(report(user=(420, 100.0)), OWNER)])
    tickets.close()  # a worker ending in good order
    assert gate.grants[OWNER] == 1 + 2 - 1  # the four held given back, the answer told
    assert gate.state.budgets["user"][0] == 420


def test_without_room_ahead_each_answer_is_told_as_it_comes(make):
    gate, tickets = make(remaining=110, batch=4)  # ten uploads fit: room for no batch
    listening(tickets)  # one in flight
    tickets.reserve(4, OWNER)  # five, and room beyond four more for one more: one ahead
    tickets.reserve(2, OWNER)  # the one held and one more: seven, no room for any ahead
    assert tickets.held(OWNER) == 0 and gate.grants[OWNER] == 7
    before = gate.changes
    tickets.answered([(report(user=(60, 100.0)), OWNER)])
    assert gate.changes == before + 1 and gate.grants[OWNER] == 6  # told at once
    assert gate.state.budgets["user"][0] == 60
    tickets.answered([(report(user=(50, 100.0)), OWNER), (report(user=(40, 100.0)), OWNER)])
    assert gate.changes == before + 2 and gate.grants[OWNER] == 4  # together: one change


def test_a_batch_of_answers_kept_is_told_at_once(make):
    gate, tickets = make(batch=4)
    listening(tickets)
    tickets.reserve(4, OWNER)  # four in use (and the first), four held
    before = gate.changes
    for n in range(3):
        tickets.answered([(None, OWNER)])
    assert gate.changes == before  # kept
    tickets.answered([(None, OWNER)])  # the fourth: a batch
    assert gate.changes == before + 1 and gate.grants[OWNER] == 1 + 4 + 4 - 4


@pytest.fixture
def paced(make):
    """``paced(remaining, rate)``: tickets on a gate paced at 50 uploads a second (burst
    1), its budgets known, its pauses heard (batch 4)."""
    def tickets_on_a_paced_gate(remaining=10_000, rate=50.0):
        gate, tickets = make(remaining=remaining)
        tickets.rules.rate = rate
        tickets.paced = True
        listening(tickets)
        return gate, tickets
    return tickets_on_a_paced_gate


def moments(tickets, count):
    """``count`` grants of the paced gate, all granted, the last one's moment ahead."""
    answers = tickets.reserve(count, OWNER)
    assert all(granted for granted, _, _ in answers)
    assert answers[-1][1] > time.monotonic()
    return [when for _, when, _ in answers]


def at(moment):
    time.sleep(max(0.0, moment - time.monotonic()))


def test_paced_no_tickets_are_taken_ahead_and_answers_ride_on_the_next_grant(paced):
    gate, tickets = paced()
    before, in_flight = gate.changes, gate.grants[OWNER]
    moments(tickets, 2)
    assert tickets.held(OWNER) == 0 and gate.grants[OWNER] == in_flight + 2
    tickets.answered([(report(user=(500, 100.0)), OWNER)])
    assert gate.changes == before + 1  # kept: the budgets had room for a batch beyond
    tokens = gate.state.tokens
    moments(tickets, 1)
    assert gate.state.tokens > tokens - 2  # one spent: looking for room beyond spent none
    assert gate.changes == before + 2  # the answer told with the grant: one change
    assert gate.grants[OWNER] == in_flight + 2 - 1 + 1
    assert gate.state.budgets["user"][0] == 500


def test_paced_near_a_budgets_reserve_each_answer_is_told_as_it_comes(paced):
    gate, tickets = paced(remaining=110)  # ten uploads fit
    moments(tickets, 5)  # six in flight: room for four more, none beyond a batch
    before = gate.changes
    tickets.answered([(report(user=(60, 100.0)), OWNER)])
    assert gate.changes == before + 1 and gate.state.budgets["user"][0] == 60


def test_paced_a_moment_is_confirmed_without_a_trip_until_a_pause_is_heard(paced):
    gate, tickets = paced(rate=20.0)
    first, second, third = moments(tickets, 3)[-3:]
    before = gate.changes
    at(first)
    assert tickets.confirm(OWNER)[0]
    assert gate.changes == before  # no pause heard since it was granted: no trip
    tickets.heard(True)  # a pause somewhere: granted before it, the others ask the gate
    at(second)
    assert tickets.confirm(OWNER) is None
    later = moments(tickets, 1)[0]  # granted after the pause was heard
    at(third)
    assert tickets.confirm(OWNER) is None
    at(later)
    assert tickets.confirm(OWNER)[0]


def test_paced_a_moment_granted_while_a_pause_was_heard_asks_the_gate(paced):
    gate, tickets = paced()
    gate.during_change = tickets.void  # the pause's notice arrives while the trip is made
    when = moments(tickets, 2)[-1]
    gate.during_change = None
    at(when)
    assert tickets.confirm(OWNER) is None


def test_paced_moments_are_confirmed_here_only_while_pauses_are_heard(paced):
    gate, tickets = paced()
    tickets.heard(False)  # the instance's listening connection was lost
    when = moments(tickets, 2)[-1]
    at(when)
    assert tickets.confirm(OWNER) is None


def test_paced_with_a_long_queue_the_next_moments_are_taken_ahead(paced):
    gate, tickets = paced(rate=10.0)
    asked = moments(tickets, 5)  # the last 0.5 s ahead: a queue long enough
    assert tickets.held(OWNER) == 2  # half a batch more, in the same change
    assert gate.grants[OWNER] == 1 + 5 + 2
    before = gate.changes
    handed = moments(tickets, 2)
    assert gate.changes == before and tickets.held(OWNER) == 0  # handed out without a trip
    assert asked[-1] < handed[0] < handed[1]  # the pace's next moments
    at(handed[0])
    assert tickets.confirm(OWNER)[0] and gate.changes == before  # confirmed here too

    moments(tickets, 5)
    assert tickets.held(OWNER) == 2
    tickets.heard(True)  # a pause somewhere: the moments held are given back
    assert tickets.held(OWNER) == 0


def test_paced_moments_held_until_they_come_are_given_back_not_handed_out(paced):
    gate, tickets = paced(rate=10.0)
    asked = moments(tickets, 3)  # 0.3 s ahead: two more held
    assert tickets.held(OWNER) == 2
    in_flight = gate.grants[OWNER]
    at(asked[-1] + 0.25)  # both held moments have come unused
    fresh = moments(tickets, 1)
    assert fresh[0] > time.monotonic()  # a new moment from the gate, not a passed one
    assert gate.grants[OWNER] == in_flight - 2 + 1  # the two given back with that change


def test_a_grant_given_back_rides_on_the_next_change(paced):
    gate, tickets = paced()
    moments(tickets, 2)
    in_flight, before = gate.grants[OWNER], gate.changes
    tickets.give_back(OWNER)  # a slot held up past its moment: not used
    assert gate.changes == before and gate.grants[OWNER] == in_flight  # counts until told
    moments(tickets, 1)
    assert gate.changes == before + 1 and gate.grants[OWNER] == in_flight - 1 + 1
