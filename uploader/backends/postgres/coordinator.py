"""The shared state of a cluster: gate, budgets, dedup claims and the token, in PostgreSQL.

Same calls as the embedded ``sqlite.coordinator`` and ``sqlite.credentials``, same rules (``ratelimit``,
``credentials.renew``), but the state lives in rows every instance reaches, and every
process (each worker, the front end) talks to the database directly through a small
pool of its own (``Database.pool``, ``storage.shared_connections``), made lazily after
the process starts (the objects themselves pickle as their settings). The database's
clock is the gate's clock, so instances on hosts with skewed clocks keep one pace;
answers are turned into this machine's monotonic clock before they are returned.

- gate: one row (``gate.state``: JSON of ``GateState`` and of the grants in flight, by
  worker), changed by compare-and-set on ``gate.version``, so no lock is held while a
  busy worker process thinks; grants of a dead worker or a dead instance stop counting.
  Unpaced, a worker takes grants ahead as tickets and tells answers in batches
  (``tickets``), and a pause is announced with NOTIFY to void them everywhere
  (each instance's one listening connection hears it and tells its workers: ``heard``);
- dedup: ``dedup_claims`` holds bytes being uploaded (one owner per SHA-256) and, once
  published, their link until the result is committed to ``links``;
- token: one ``credentials`` row per configured credential, locked while one instance
  refreshes it, so the cluster refreshes once.
"""
import json
import logging
import time
from typing import List, Optional, Tuple

from ...coalesce import Combiner
from ...errors import StoreUnavailable
from ...ratelimit import GateRules, GateState
from . import queries
from .store import Database, as_columns, driver_errors
from .tickets import CHANNEL, Tickets

log = logging.getLogger(__name__)

OUTAGE_RETRY_SECONDS = 1.0
# A change that lost the compare-and-set this often is made with the row locked.
LOCK_AFTER_LOSSES = 2
_NO_ROW = object()  # ``_gate_locked``: there is no gate row


class Rows:
    """Transactions on the shared rows that outlast an outage: a call made while the
    database is unreachable waits for it (the URL stays in flight; nothing is lost)."""

    def __init__(self, database: Database):
        self.database = database

    def run(self, work, *, transaction: bool = False, patient: bool = True):
        """``work(conn)`` (in a transaction if asked), again and again until the database
        answers (``patient=False``: once, else ``StoreUnavailable``). Without a transaction
        each statement commits on its own."""
        warned = False
        while True:
            try:
                with driver_errors(), self.database.pool().connection() as conn:
                    if not transaction:
                        return work(conn)
                    with conn.transaction():
                        return work(conn)
            except StoreUnavailable as exc:
                if not patient:
                    raise
                if not warned:
                    log.warning("shared state unreachable (%s); waiting for the database", exc)
                    warned = True
                time.sleep(OUTAGE_RETRY_SECONDS)


class PgCoordinator(Rows):
    """Gate and dedup for a cluster; see ``protocols.Coordinator`` for each call."""

    def __init__(self, database: Database, instance: str, *, lease_seconds: float,
                 gate: Optional[dict] = None, dedup_host: Optional[str] = None,
                 tickets: int = 0):
        super().__init__(database)
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.gate = gate
        self.rules = GateRules(**gate) if gate is not None else None
        self.dedup_host = dedup_host
        # this process's threads changing the gate at once share one compare-and-set
        self._gate_changes = Combiner(self._change_gate)
        # answers told in batches; unpaced, grants taken ``tickets`` ahead; paced, moments
        # confirmed without a trip while no pause can have begun (``tickets.py``)
        self.tickets = tickets
        self._tickets = None
        self._seen = None  # the gate row as this process's last statement found it (_gate)
        if self.rules is not None and tickets > 0:
            self._tickets = Tickets(self.rules, self._gate_changes, self._count, tickets)

    def __getstate__(self):
        return {"args": (self.database, self.instance), "lease_seconds": self.lease_seconds,
                "gate": self.gate, "dedup_host": self.dedup_host, "tickets": self.tickets}

    def __setstate__(self, state):
        self.__init__(*state.pop("args"), **state)

    # -- dedup and gate around one upload ----------------------------------------------------
    def claim_many(self, claims) -> List[Tuple[str, Optional[str]]]:
        if self.dedup_host is None or not claims:
            return [("upload", None)] * len(claims)
        return self.run(lambda conn: self._claim(conn, claims))

    def end_many(self, ends) -> None:
        """What uploads owe once over: (sha256, account, link, report, owner, observe)
        each. The gate hears every open grant's answer in one compare-and-set (shared with
        this process's reservations of the moment); links are published, claims released."""
        observed = [(report, owner[:2]) for _, _, _, report, owner, observe in ends if observe]
        if observed and self.rules is not None:
            self._observe_many(observed)
        if self.dedup_host is None:
            return

        def work(conn):
            published = [(sha256, account, link) for sha256, account, link, *_ in ends if link]
            if published:  # a claim locked by another is being deleted: its link committed
                conn.execute(queries.PUBLISH,
                             (*as_columns(published), self.dedup_host, self.dedup_host))
            for sha256, account, link, *_ in ends:
                if not link:
                    self._release(conn, sha256, account)
        self.run(work)

    def forget(self, sha256: str, account: str) -> None:
        """These bytes' link was deleted (committed already): nothing is kept here to forget,
        since a published link leaves ``dedup_claims`` when it is committed to ``links``."""

    def _claim(self, conn, claims) -> List[Tuple[str, Optional[str]]]:
        """Claim first, then look for a committed link: the result that commits a link also
        deletes its claim, in one transaction, so whichever way the two race, nobody
        uploads bytes that already have a link. One statement claims the whole batch and
        looks up the links of the claims it won (``queries.CLAIM``: the lookup reads with
        a snapshot of its own, taken after the claim's row is in); claims held already
        take a statement more (by whom), and one of ours already a third (its link). The
        answers are those of claiming one after the other, in order. Claims are inserted
        in the order of their bytes, so two batches never wait for each other in a cycle."""
        # owner: (worker, generation, URL id); the column ``thread`` holds the URL id (it
        # once held the claiming thread's, but a thread may claim the same bytes for two URLs)
        rows = [(sha256, account, self.instance, *owner) for sha256, account, owner in claims]
        won = {tuple(row[:6]): row[6] for row in conn.execute(
            queries.CLAIM, (self.dedup_host, *as_columns(rows))).fetchall()}
        answers = [None if row in won else ("wait", None) for row in rows]
        lost = [i for i, answer in enumerate(answers) if answer is not None]
        if lost:  # held already: by whom, and is its link published?
            holders = {(row[0], row[1]): row[2:] for row in conn.execute(
                queries.HOLDERS,
                (self.dedup_host, *as_columns([rows[i][:2] for i in lost]))).fetchall()}
            for i in lost:
                holder = holders.get(rows[i][:2])
                if holder is not None and holder[4]:
                    answers[i] = ("reuse", holder[4])  # published by its uploader
                elif holder is not None and tuple(holder[:4]) == rows[i][2:]:
                    answers[i] = None  # ours already (asked again)
                # else released between our two statements, or another's: ask again
        links = {rows[i][:2]: link for i, row in enumerate(rows) if (link := won.get(row))}
        again = [i for i, answer in enumerate(answers) if answer is None and rows[i] not in won]
        if again:  # ours already: its committed link
            links.update(((row[0], row[1]), row[2]) for row in conn.execute(
                queries.LINKS_OF,
                (self.dedup_host, *as_columns([rows[i][:2] for i in again]))).fetchall()
                if row[2])
        for i, answer in enumerate(answers):
            if answer is None:
                link = links.get(rows[i][:2])
                answers[i] = ("reuse", link) if link else ("upload", None)
                if link:
                    self._release(conn, *rows[i][:2])
        return answers

    def _release(self, conn, sha256: str, account: str) -> None:
        """Drop this instance's unpublished claim on these bytes: a statement of its own,
        which holds no other row while it waits for this one (a result's commit may be
        deleting it, holding others): no deadlock."""
        conn.execute(queries.RELEASE, (sha256, self.dedup_host, account, self.instance))

    # -- the gate ----------------------------------------------------------------------------
    def reserve(self, owner: tuple) -> Optional[tuple]:
        return self.reserve_many(1, owner)[0] if self.rules is not None else None

    def reserve_many(self, count: int, owner: tuple) -> List[tuple]:
        if self.rules is None or not count:
            return [(True, 0.0, "")] * count
        if self._tickets is not None:
            return self._tickets.reserve(count, owner)

        def change(state, grants, now):
            answers = self.rules.reserve_slots(state, now, sum(grants.values()), count)
            self._count(grants, owner, sum(granted for granted, _, _ in answers))
            return answers
        return self._gate_changes(change)

    def confirm(self, owner: tuple) -> tuple:
        if self.rules is None:
            return True, 0.0, ""
        answer = self._tickets.confirm(owner) if self._tickets is not None else None
        if answer is not None:  # no pause can have begun since it was granted
            return answer

        def change(state, grants, now):
            answer = self.rules.confirm(state, now)
            if not answer[0]:
                self._count(grants, owner, -1)  # withdrawn
            return answer
        return self._gate_changes(change)

    def observe(self, report: Optional[dict], owner: tuple) -> None:
        if self.rules is not None:
            self._observe_many([(report, owner)])

    def _observe_many(self, observed: list) -> None:
        """Open grants answered: (the host's budgets, owner) each; told at once, or with
        the next telling of the tickets."""
        if self._tickets is None:
            self._gate_changes(self._answered(observed))
            return
        self._tickets.answered(observed)

    def withdraw(self, owner: tuple) -> None:
        if self._tickets is not None:
            self._tickets.give_back(owner)  # with the next change: it counts until then
        elif self.rules is not None:
            self._gate_changes(lambda state, grants, now: self._count(grants, owner, -1))

    def pause(self, seconds: float, why: str) -> None:
        """Every upload waits; every process of every instance hears it and voids the
        tickets it holds (``tickets``)."""
        if self.rules is None:
            return
        if self._tickets is not None:
            self._tickets.void()

        def work(conn):
            self._gate(conn, lambda state, grants, now: self.rules.pause(state, now, seconds, why))
            conn.execute(f"NOTIFY {CHANNEL}")
        self.run(work)

    def learn(self, report: Optional[dict]) -> None:
        """The host's budgets, asked without spending any (at start)."""
        if self.rules is not None:
            self.run(lambda conn: self._gate(
                conn, lambda state, grants, now: self.rules.learn(state, now, report)))

    def release_owner(self, worker: int, generation: int) -> None:
        """A worker process of this instance ended: its claims and grants are void."""
        def work(conn):
            conn.execute(queries.RELEASE_OWNER, (self.instance, worker, generation))
            if self.rules is not None:
                self._gate(conn, lambda state, grants, now: grants.pop(
                    self._key((worker, generation)), None))
        self.run(work)

    def heard(self, listening: bool) -> None:
        """News from this instance's listening connection: a pause announced by any
        process of any instance (``listening`` True), or listening begun or ended. Each
        voids the tickets held; only while listening are tickets taken ahead."""
        if self._tickets is not None:
            self._tickets.heard(listening)

    def close(self) -> None:
        """Tell the gate what this process's tickets hold and have kept, and stop their
        threads: a worker calls it as it ends."""
        if self._tickets is not None:
            self._tickets.close()

    def _answered(self, observed: list):
        """The gate change for open grants answered: (the host's budgets, owner) each."""
        def change(state, grants, now):
            for report, owner in observed:
                self._count(grants, owner, -1)
                self.rules.observe(state, now, report)
        return change

    def _change_gate(self, changes: list) -> list:
        """Changes asked by this process's threads at once, in one compare-and-set; their
        answers on this machine's monotonic clock."""
        def all_of_them(state, grants, now):
            return [_local(change(state, grants, now), now) for change in changes]
        return self.run(lambda conn: self._gate(conn, all_of_them)) if changes else []

    def _gate(self, conn, change):
        """Compare-and-set on the gate row: ``change(state, grants, now)`` is applied to a
        fresh copy until our write wins (no lock is held while this process thinks); its
        answer is returned. ``grants``: uploads granted and not yet answered, by worker
        of a live instance; those of instances found dead are dropped on the way.

        Each try is one statement (``queries.GATE_WRITE``): it writes if the row is still the
        version changed, and returns the row as it found it, with the clock and the live
        instances. So the next change starts from what the last statement saw (our own
        write, when it won), its clock moved on by this machine's; only the first reads."""
        seen, lost = self._seen, 0
        while True:
            if lost >= LOCK_AFTER_LOSSES:  # many processes changing it at once
                answer = self._gate_locked(conn, change)
                if answer is not _NO_ROW:
                    return answer
                seen, lost = None, 0
            if seen is None:
                row = conn.execute(queries.GATE_READ, (self.lease_seconds,)).fetchone()
                if row is None:
                    now = conn.execute(queries.CLOCK).fetchone()[0]
                    first = {"gate": self.rules.new_state(now).to_dict(), "grants": {}}
                    conn.execute(queries.GATE_FIRST, (json.dumps(first),))
                    continue
                seen = (*row, time.monotonic())
            version, text, then, live, at = seen
            answer, text = _changed(change, text, then + (time.monotonic() - at), live)
            row = conn.execute(queries.GATE_WRITE,
                               (text, version, self.lease_seconds)).fetchone()
            if row is None:  # no gate row (deleted by hand): made anew
                seen = self._seen = None
                continue
            written, *found = row
            if written is not None:
                self._seen = (written, text, found[2], found[3], time.monotonic())
                return answer
            seen = self._seen = (*found, time.monotonic())
            lost += 1

    def _gate_locked(self, conn, change):
        """The change made with the gate row locked (four statements, and no more), after
        it lost the compare-and-set ``LOCK_AFTER_LOSSES`` times: with many processes
        changing the row at once, trying on costs a statement a try, and tries lose more
        often the busier the machine. ``_NO_ROW`` when there is no gate row."""
        with conn.transaction():
            row = conn.execute(queries.GATE_READ_LOCKED, (self.lease_seconds,)).fetchone()
            if row is None:
                return _NO_ROW
            version, text, now, live = row
            answer, text = _changed(change, text, now, live)
            conn.execute(queries.GATE_WRITE_LOCKED, (version + 1, text))
        self._seen = (version + 1, text, now, live, time.monotonic())
        return answer

    def _key(self, owner: tuple) -> str:
        worker, generation = owner
        return f"{self.instance}/{worker}/{generation}"

    def _count(self, grants: dict, owner: tuple, change: int) -> None:
        key = self._key(owner)
        left = grants.get(key, 0) + change
        if left > 0:
            grants[key] = left
        else:
            grants.pop(key, None)


def _changed(change, text: str, now: float, live) -> tuple:
    """``change(state, grants, now)`` applied to the gate row's ``text``: its answer and
    the row's new text. Grants of instances not ``live`` are dropped on the way."""
    data = json.loads(text)
    state = GateState.from_dict(data["gate"])
    grants = {key: n for key, n in data["grants"].items() if key.split("/", 1)[0] in live}
    answer = change(state, grants, now)
    return answer, json.dumps({"gate": state.to_dict(), "grants": grants})


def _local(answer, now: float):
    """A gate's answer (``(granted, when, why)``, a list of them, or None) with its moments
    on this machine's monotonic clock instead of the database's."""
    if isinstance(answer, list):
        return [_local(one, now) for one in answer]
    if isinstance(answer, tuple):
        granted, when, why = answer
        return granted, time.monotonic() + (when - now), why
    return answer
