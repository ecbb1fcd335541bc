"""Grants of an unpaced cluster gate taken ahead of need, a paced one's moments confirmed
without a trip, and answers told in batches.

Without a pace (``imgur.rate_limit.uploads_per_second: 0``) a grant is no more than "one
more upload in flight", its moment now. So a worker process need not change the gate row
for every upload and every answer: when its slots ask and it holds no tickets, it takes
what they ask for plus a batch more in the same compare-and-set, and hands the rest out
as its slots ask again; the answers' budgets are kept and told together every
``TELL_SECONDS``, with any tickets left unused since the last telling given back. One
compare-and-set per batch of uploads instead of about one per upload.

Paced (the default), a grant is a moment in the pace, and the pace is the gate row's: no
tickets are taken ahead. But the answers are kept and told as unpaced (most ride on the
process's next grant), and a moment is confirmed here when it comes, without a trip,
while no pause can have been set since it was granted: the process hears pauses
(``heard``) and has heard none since it asked for the grants now due. Else the gate
itself confirms, as before. Three changes of the gate row per upload become about one.

Nothing the gate guarantees is weakened:

- budgets: the gate counts every ticket, held or in use, as an upload in flight until its
  answer is told, so the reserve is kept exactly as if each had been asked for alone (a
  told answer's reset times are aged by how long it was kept). Answers are kept only while
  the gate last had room for a batch of tickets ahead, and a batch of them at most: near a
  budget's reserve, in a pause or a probe, each is told as it comes, as before tickets;
- pauses: ``coordinator.pause`` voids every ticket held in every process of every
  instance (a notification on ``CHANNEL``, heard by each instance's one listening
  connection and passed on to its worker processes: ``heard``), so a ticket is used
  during a pause only if it was handed out before the notice arrived, as a grant taken
  just before a pause is (a paced moment likewise: confirmed here only if due before the
  notice arrived); a process that does not hear (its instance is not listening, or
  cannot: a transaction pooler) takes no tickets ahead and confirms every moment at the
  gate;
- a probe refuses the extra tickets, and none are taken from a budget's last uploads (room
  for a batch beyond them is required), so those go to whichever slot asks first; a worker
  that dies takes its tickets with it (``release_owner``), and one that ends in good order
  tells what it kept (``close``); one killed (or cut short by its service's stop) loses
  the answers it kept, at most a batch, taken while the gate had room for two.
"""
import copy
import logging
import threading
import time

from ...ratelimit import GateState

log = logging.getLogger(__name__)

CHANNEL = "uploader_gate_pause"
# A telling is a compare-and-set on the gate row (two statements then, one now): every
# 0.25 s, eight instances' 32 worker processes made it 2 of 6.8 statements per URL. What the gate has not been told
# only makes it count more in flight (a batch at most): a longer wait weakens nothing.
TELL_SECONDS = 1.0
CLOSE_SECONDS = 2.0  # how long a closing process waits for its last telling
# Paced: a moment granted is due for confirming this little before it comes (a sleep's
# rounding); one not confirmed (used at once) is forgotten this long after it.
DUE_SLACK_SECONDS, STALE_SECONDS = 0.005, 60.0
# Paced: moments are taken ahead (half a batch) only when the pace's queue is this long,
# so the process's next slots to ask get them before they come.
PACED_LEAD_SECONDS = 0.25


class Tickets:
    """One process's tickets and untold answers, by owner (a worker process's grants).

    ``change_gate(change)``: one compare-and-set applying ``change(state, grants, now)``
    (its answer on this machine's clock); ``count(grants, owner, n)``: the grants in
    flight for ``owner`` changed by ``n``. Pauses are told by ``heard``."""

    def __init__(self, rules, change_gate, count, batch: int,
                 tell_seconds: float = TELL_SECONDS):
        self.rules = rules
        self._change_gate = change_gate
        self._count = count
        self.batch = batch
        self.tell_seconds = tell_seconds
        self._held = {}  # owner -> tickets held, not handed out yet
        self._given_back = {}  # owner -> tickets voided or unused, the gate not told yet
        self._answers = []  # (report, owner, when answered) not told yet
        self._handed_out = False  # since the last telling
        self._ahead = False  # did the gate's last grants leave room for tickets ahead?
        self._listening = False
        self._voided = 0  # pauses heard: tickets granted before one are not kept after it
        self.paced = rules.rate > 0  # no tickets ahead then: moments, confirmed here
        self._moments = {}  # paced: owner -> [(moment handed out, pauses heard before)]
        self._held_moments = {}  # paced: owner -> [(moment held, pauses heard, why)]
        self._lock = threading.Lock()
        self._started = False
        self._closed = threading.Event()

    @property
    def listening(self) -> bool:
        """Hearing pauses: only then are tickets taken ahead."""
        return self._listening

    def held(self, owner: tuple) -> int:
        return self._held.get(owner, 0)

    def reserve(self, count: int, owner: tuple) -> list:
        """``count`` grants for ``owner``: from the tickets held, and for what they lack from
        the gate, taking a batch more (if the gate grants them) while at it."""
        with self._lock:
            self._start()
            if self.paced:
                self._give_back_passed(owner, time.monotonic())
            take = min(self._held.get(owner, 0), count)
            if take:
                self._held[owner] -= take
                self._handed_out = True
            if self.paced:  # the earliest moments held, each confirmed as it comes
                moments = self._held_moments.get(owner, [])
                self._held_moments[owner] = moments[take:]
                self._keep_moments(owner, [(when, voided) for when, voided, _ in moments[:take]])
                from_tickets = [(True, when, why) for when, _, why in moments[:take]]
            else:
                from_tickets = [(True, time.monotonic(), "")] * take
            need = count - take
            if not need:
                return from_tickets
            told, self._answers = self._answers, []
            given_back, self._given_back = self._given_back, {}
            extra = (self.batch // 2 if self.paced else self.batch) if self._listening else 0
            voided = self._voided

        room = {}  # paced: did the budgets have room for a batch beyond? (the last try's)

        def change(state, grants, now):
            self._tell(state, grants, now, told, given_back)
            in_flight = sum(grants.values())
            answers = self.rules.reserve_slots(state, now, in_flight, need)
            clear = all(granted for granted, _, _ in answers)
            if self.paced:
                ahead = self._room(state, now, in_flight + need, self.batch) if clear else 0
                room["ahead"] = ahead > 0
                if extra and ahead and answers[-1][1] >= now + PACED_LEAD_SECONDS:
                    answers += [answer for answer in self.rules.reserve_slots(
                        state, now, in_flight + need, min(extra, ahead)) if answer[0]]
            elif extra and clear:
                answers += [(True, now, "")] * self._room(state, now, in_flight + need, extra)
            self._count(grants, owner, sum(granted for granted, _, _ in answers))
            return answers
        try:
            answers = self._change_gate(change)
        except BaseException:
            self._keep_untold(told, given_back)
            raise
        with self._lock:
            more = len(answers) - need
            # room for a batch beyond, when the gate last said
            self._ahead = room.get("ahead", False) if self.paced else more > 0
            self._keep_moments(owner, [(when, voided) for granted, when, _ in answers[:need]
                                       if granted])
            if more and self._listening and voided == self._voided:
                self._held[owner] = self._held.get(owner, 0) + more
                self._handed_out = True
                if self.paced:
                    self._held_moments.setdefault(owner, []).extend(
                        (when, voided, why) for _, when, why in answers[need:])
            elif more:  # a pause was heard, or the listener fell silent, meanwhile
                self._given_back[owner] = self._given_back.get(owner, 0) + more
        return from_tickets + answers[:need]

    def _room(self, state, now, in_flight: int, extra: int) -> int:
        """How many tickets to take ahead: up to ``extra``, leaving room in every budget
        for ``extra`` more uploads beyond them, so the last uploads a budget allows go to
        whichever slot asks first, not to one process's tickets. (Unpaced, a reservation
        changes nothing but a refilled budget's figures, so asking hypothetically is safe;
        paced, it would spend the pace's tokens: it asks a copy.)"""
        if self.paced:
            state = GateState.from_dict(copy.deepcopy(state.to_dict()))
        room = self.rules.reserve_slots(state, now, in_flight, 2 * extra)
        return max(0, sum(granted for granted, _, _ in room) - extra)

    def _keep_moments(self, owner: tuple, moments) -> None:
        """Paced: the moments handed out, (when, pauses heard before it was asked for)
        each, so that ``confirm`` knows whether a pause may have been set since."""
        if not self.paced:
            return
        now = time.monotonic()
        kept = [m for m in self._moments.get(owner, []) if m[0] > now - STALE_SECONDS]
        kept += [(when, voided) for when, voided in moments if when > now]
        self._moments[owner] = kept

    def _give_back_passed(self, owner: tuple, now: float) -> None:
        """Paced: moments held that have come (or nearly) unused are given back: a slot
        handed one now could not wait for it, and would crowd the next one's."""
        moments = self._held_moments.get(owner, [])
        ahead = [m for m in moments if m[0] > now + DUE_SLACK_SECONDS]
        passed = len(moments) - len(ahead)
        if passed:
            self._held_moments[owner] = ahead
            self._held[owner] -= passed
            self._given_back[owner] = self._given_back.get(owner, 0) + passed

    def confirm(self, owner: tuple):
        """Paced: a grant whose moment has come, confirmed here without a trip when no
        pause can have been set since it was granted: this process hears every pause
        (listening), and has heard none since it asked for any grant now due. Else None:
        the gate itself is asked (``GateRules.confirm``). A pause set elsewhere voids the
        grants only once its notice arrives, as it voids tickets."""
        now = time.monotonic()
        with self._lock:
            moments = self._moments.get(owner, [])
            due = [m for m in moments if m[0] <= now + DUE_SLACK_SECONDS]
            if not due:
                return None
            moments.remove(min(due))  # the earliest: the one confirmed, or older
            if self._listening and all(voided == self._voided for _, voided in due):
                return True, now, ""
        return None

    def answered(self, answers) -> None:
        """Uploads' answers, (the host's budgets or None, owner) each, kept for the next
        telling, or told at once (in one change): when the gate last had no room for
        tickets ahead (a budget near its reserve, a pause, a probe: as before tickets, it
        hears the answers as they come), or when a batch of answers is kept (what the gate
        does not know yet stays within the room it had)."""
        moment = time.monotonic()
        with self._lock:
            self._answers.extend((report, owner, moment) for report, owner in answers)
            at_once = not self._ahead or len(self._answers) >= self.batch
        if at_once:
            self.tell()

    def give_back(self, owner: tuple) -> None:
        """A grant given back unused: the gate hears it with its next change (until then
        it counts in flight, as a ticket held does)."""
        with self._lock:
            self._given_back[owner] = self._given_back.get(owner, 0) + 1

    def void(self) -> None:
        """A pause began: no ticket held is handed out; the gate hears them given back."""
        with self._lock:
            self._void()

    def heard(self, listening: bool) -> None:
        """From the instance's listening connection: a pause somewhere, or listening begun
        (a pause may have been missed before) or ended. Each voids the tickets held; only
        while listening are tickets taken ahead."""
        with self._lock:
            self._listening = listening and not self._closed.is_set()
            self._void()

    def _void(self) -> None:
        self._voided += 1
        self._give_back_held()

    def _give_back_held(self) -> None:
        for owner, held in self._held.items():
            if held:
                self._given_back[owner] = self._given_back.get(owner, 0) + held
        self._held = {}
        self._held_moments = {}

    def tell(self) -> None:
        """Tell the gate the answers kept and the tickets given back, and give back those
        not handed out since the last telling (the worker has no use for them now)."""
        with self._lock:
            if not self._handed_out:
                self._give_back_held()
            self._handed_out = False
            told, self._answers = self._answers, []
            given_back, self._given_back = self._given_back, {}
        if not told and not given_back:
            return
        try:
            self._change_gate(lambda state, grants, now: self._tell(
                state, grants, now, told, given_back))
        except BaseException:
            self._keep_untold(told, given_back)
            raise

    def _tell(self, state, grants, now, told, given_back) -> None:
        moment = time.monotonic()
        for report, owner, answered in told:
            self._count(grants, owner, -1)
            self.rules.observe(state, now, _aged(report, moment - answered))
        for owner, count in given_back.items():
            self._count(grants, owner, -count)

    def _keep_untold(self, told, given_back) -> None:
        with self._lock:
            self._answers[:0] = told
            for owner, count in given_back.items():
                self._given_back[owner] = self._given_back.get(owner, 0) + count

    def _start(self) -> None:
        """The telling thread, in the process that reserves (not the parent whose copy
        was pickled)."""
        if self._started:
            return
        self._started = True
        threading.Thread(target=self._tell_often, name="gate-tell", daemon=True).start()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop telling, after telling the gate what is held and untold, if it answers
        within ``timeout``: a worker that ends in good order leaves the gate its last
        answers' budgets, not only fewer grants."""
        self._closed.set()
        with self._lock:
            self._void()

        def tell_last():
            try:
                self.tell()
            except Exception:
                log.exception("could not tell the gate about %d answers", len(self._answers))
        last = threading.Thread(target=tell_last, name="gate-tell-last", daemon=True)
        last.start()
        last.join(timeout)

    def _tell_often(self) -> None:
        while not self._closed.wait(self.tell_seconds):
            try:
                self.tell()
            except Exception:
                log.exception("could not tell the gate about %d answers", len(self._answers))


def _aged(report, age: float):
    """A host's report kept ``age`` seconds: its resets that much nearer."""
    if not report:
        return report
    return {key: value - age if key.endswith("_reset") and value is not None else value
            for key, value in report.items()}
