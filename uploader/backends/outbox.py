"""The outbox: effects the service owes the outside world, kept until they are done.

A webhook delivery (``kind`` ``webhook``: POST the job document to ``target``) is added
in the very transaction that completes its job; a host deletion that could not be done
at once (``host_delete``) when the image is marked deleted. So an effect exists exactly
when the change that owes it is committed, and survives kill -9 and restarts.

    pending --claim (holder = an instance, held for a while, attempts + 1)--> being carried out
            --record: done | pending again (next_at: a backoff later) | failed (out of tries)

A claim is a lease like a URL's: an effect held by an instance that died (as the queue
judges it) or past ``held_until`` is taken by another one (or the same, restarted) and
carried out again: at least once. Like a URL's, an attempt is counted when it is claimed,
so one cut short by a crash counts too: ``attempts`` never falls short of the requests a
receiver saw, and ``max_attempts`` bounds them. ``courier.Courier`` is the one that
claims, carries out and records.
"""
import uuid
from dataclasses import dataclass
from typing import List, Optional

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class Effect:
    id: str
    kind: str
    job_id: Optional[str]
    target: str
    attempts: int  # made before this one (this one is counted already)
    body: Optional[str]


class OutboxQueries:
    """Mixed into ``SqlStore``: the writer side runs in the dispatcher's transactions."""

    def add_effect(self, kind: str, target: str, *, job_id: Optional[str] = None,
                   body: Optional[str] = None) -> str:
        effect_id = str(uuid.uuid4())
        self._execute(
            ADD_EFFECT,
            (effect_id, kind, job_id, target, PENDING, body))
        self.outbox_added = True
        return effect_id

    def claim_effects(self, limit: int, hold_seconds: float) -> List[Effect]:
        """Take up to ``limit`` effects that are due and not held by a live claim (one whose
        time is not up, of an instance still alive)."""
        dead, params = self._dead_owners("holder")
        rows = self._execute(
            CLAIM_EFFECTS.replace("{dead}", dead),
            (*params, limit, self.instance, hold_seconds)).fetchall()
        return [Effect(*row) for row in rows]

    def set_effect_body(self, effect_id: str, body: str) -> None:
        """The exact bytes of a delivery, fixed at its first attempt for every retry."""
        self._execute(SET_EFFECT_BODY, (body, effect_id))

    def record_effect(self, effect_id: str, *, state: str, error: Optional[str],
                      retry_in: float = 0.0, attempted: bool = True) -> bool:
        """One attempt is over: ``done``, ``failed`` for good, or ``pending`` again in
        ``retry_in`` seconds (``attempted`` False: the claim's attempt was never made, so it
        is not counted). False when our claim had run out (someone else has it)."""
        return self._execute(
            RECORD_EFFECT,
            (state, error, int(not attempted), retry_in, state, effect_id,
             self.instance)).rowcount == 1

    def next_effect_in(self) -> Optional[float]:
        """Seconds until the next pending effect no live claim holds is due (0 if one is:
        ``claim_effects`` would take it), None if none waits. (One being carried out is
        not due: its outcome is.)"""
        dead, params = self._dead_owners("holder")
        with self.reading() as conn:
            row = conn.execute(self.q(NEXT_EFFECT_IN.replace("{dead}", dead)), params).fetchone()
        return None if row[0] is None else max(0.0, row[0])


ADD_EFFECT = ("INSERT INTO outbox (id, kind, job_id, target, state, next_at, created, body)"
              " VALUES (?, ?, ?, ?, ?, {now}, {now}, ?)")
# Due effects no live claim holds ({dead}: the backend's condition that the holder is dead).
CLAIM_EFFECTS = (
    "WITH picked AS MATERIALIZED (SELECT id FROM outbox WHERE state = 'pending'"
    " AND next_at <= {now} AND (held_until IS NULL OR held_until < {now} OR {dead})"
    " ORDER BY next_at LIMIT ? {skip_locked})"
    " UPDATE outbox SET holder = ?, held_until = {now} + ?, attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM picked)"
    " RETURNING id, kind, job_id, target, attempts - 1, body")
SET_EFFECT_BODY = "UPDATE outbox SET body = ? WHERE id = ? AND body IS NULL"
RECORD_EFFECT = ("UPDATE outbox SET state = ?, last_error = ?, attempts = attempts - ?,"
                 " next_at = {now} + ?, holder = NULL, held_until = NULL,"
                 " done = CASE WHEN ? = 'pending' THEN NULL ELSE {now} END"
                 " WHERE id = ? AND holder = ? AND state = 'pending'")
# When the next effect CLAIM_EFFECTS would take is due ({dead}: as there).
NEXT_EFFECT_IN = ("SELECT MIN(next_at) - {now} FROM outbox WHERE state = 'pending'"
                  " AND (held_until IS NULL OR held_until < {now} OR {dead})")
