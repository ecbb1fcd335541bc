"""One upload pace for every worker of every instance, driven by our limit and the host's reports.

The rules (``GateRules``) are pure: they read and change a ``GateState`` at a moment
``now`` given by the caller. Each backend keeps that state where its workers share it:
the embedded one in its multiprocessing manager (``backends/sqlite/gate.py``, on the
monotonic clock every process of the machine shares), PostgreSQL in a database row for a
cluster (``backends/postgres/coordinator.py``, on the database's clock). Either way every worker draws from the same state: per-worker limits would
multiply the rate by the pool size.

A worker asks ``reserve()`` before each upload and is told whether it got a slot, when
to send and why it must wait; nobody holds the gate while sleeping. Every granted slot
is closed by exactly one ``observe()`` when the upload's answer (or failure) is in. Three
things can make an upload wait:

- the token bucket (``imgur.rate_limit``: uploads per second and burst);
- a pause, set when any worker sees a 429 or "too fast" (S3: SlowDown) (``pause``),
  honouring Retry-After;
- the host's budgets, as each answer reports what is left (``observe``). What was last
  reported, less the cost of every upload still in flight and of the next one, may not
  fall below the configured reserve; when it would, every upload waits for that budget's
  reset. While the host has not yet said what is left (at start, after a reset), one
  upload goes first as a probe. So the service never knowingly sends the request that
  exhausts a budget.

A host with no budgets and no pace (S3: ``rate`` 0, no ``costs``) passes every upload at
once; only a pause holds them.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

UNKNOWN_RESET_SECONDS = 60.0  # wait this long when a budget is spent but its reset unknown
PROBE_POLL_SECONDS = 0.05

Answer = Tuple[bool, float, str]  # (granted, when, why): a moment on the caller's clock


class Budget:
    """What we believe is left of one of the host's budgets."""

    def __init__(self, name: str, reserve: int, remaining: Optional[float] = None,
                 reset_at: Optional[float] = None, reported: bool = False):
        self.name = name
        self.reserve = reserve
        self.remaining = remaining  # unknown until the host reports it
        self.reset_at = reset_at  # when the budget refills (on the gate's clock)
        self.reported = reported  # has the host ever reported this budget?

    def update(self, remaining: float, reset_at: Optional[float]) -> None:
        """Take a report. Answers arrive out of order: within one budget period the lowest
        figure is the latest truth; a later reset means a new period."""
        same_period = (self.remaining is not None and reset_at is not None
                       and self.reset_at is not None and reset_at <= self.reset_at + 1.0)
        self.remaining = min(self.remaining, remaining) if same_period else remaining
        self.reset_at = reset_at
        self.reported = True

    def blocked_until(self, now: float, cost: int) -> float:
        """0 when ``cost`` more credits fit above the reserve, else when they will fit again."""
        if self.reset_at is not None and now >= self.reset_at:
            self.remaining, self.reset_at = None, None  # refilled; the host will tell us anew
        if self.remaining is None or self.remaining - cost >= self.reserve:
            return 0.0
        return self.reset_at if self.reset_at is not None else now + UNKNOWN_RESET_SECONDS


@dataclass
class GateState:
    """What the gate remembers between calls (``in_flight`` is kept by its owner)."""

    tokens: float
    last: float
    paused_until: float = 0.0
    pause_why: str = ""
    observed: int = 0  # answers seen since start: until the first, one upload goes alone
    budgets: Dict[str, list] = field(default_factory=dict)  # name -> [remaining, reset_at, reported]

    def to_dict(self) -> dict:
        return vars(self).copy()

    @classmethod
    def from_dict(cls, data: dict) -> "GateState":
        return cls(**data)


class GateRules:
    """The gate's rules. ``rate`` 0 turns the token bucket off (budgets still apply);
    ``costs``: what one upload takes from each budget the host reports."""

    def __init__(self, rate: float, burst: int, reserve: Optional[dict] = None,
                 costs: Optional[dict] = None, host: str = "Imgur"):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.host = host
        self.costs = dict(costs or {})
        self.reserve = {name: int((reserve or {}).get(name, 0)) for name in self.costs}

    def new_state(self, now: float) -> GateState:
        return GateState(tokens=float(self.burst), last=now)

    def _budgets(self, state: GateState) -> Dict[str, Budget]:
        return {name: Budget(name, self.reserve[name], *state.budgets.get(name, (None, None, False)))
                for name in self.costs}

    @staticmethod
    def _keep(state: GateState, budgets: Dict[str, Budget]) -> None:
        state.budgets = {name: [b.remaining, b.reset_at, b.reported] for name, b in budgets.items()}

    def reserve_slot(self, state: GateState, now: float, in_flight: int) -> Answer:
        """Granted: send at ``when`` (our own pace); the caller counts one more in flight.
        Not granted: the host's limits hold every upload; ask again at ``when``. Either
        way ``why`` says what sets ``when``, for the job body."""
        start, why = now, ""
        if state.paused_until > start:
            start, why = state.paused_until, state.pause_why
        budgets = self._budgets(state)
        for budget in budgets.values():
            until = budget.blocked_until(now, self.costs[budget.name] * (in_flight + 1))
            if until > start:
                start = until
                why = (f"{self.host}'s {budget.name} budget is down to its reserve of "
                       f"{budget.reserve} credits; waiting for its reset")
        self._keep(state, budgets)
        if start > now:
            return False, start, why
        if in_flight and self._probing(state, budgets):
            return False, now + PROBE_POLL_SECONDS, ""
        if self.rate <= 0:
            return True, now, ""
        start = max(now, state.last)
        state.tokens = min(self.burst, state.tokens + (start - state.last) * self.rate)
        state.last = start
        state.tokens -= 1.0
        return True, start + max(0.0, -state.tokens / self.rate), (
            f"paced by imgur.rate_limit: {self.rate:g} uploads a second for the whole service")

    def reserve_slots(self, state: GateState, now: float, in_flight: int,
                      count: int) -> List[Answer]:
        """``count`` reservations in a row, as ``count`` callers asking one after another
        would get them: the first refusal answers the rest too."""
        answers: List[Answer] = []
        while len(answers) < count:
            answer = self.reserve_slot(state, now, in_flight + len(answers))
            if not answer[0]:
                return answers + [answer] * (count - len(answers))
            answers.append(answer)
        return answers

    def confirm(self, state: GateState, now: float) -> Answer:
        """For a grant whose moment lay ahead, asked at that moment: is the way still clear?
        Not granted means the grant is withdrawn (the caller counts one less in flight):
        no reservation made before a pause is used during it."""
        if state.paused_until > now:
            return False, state.paused_until, state.pause_why
        return True, now, ""

    def observe(self, state: GateState, now: float, report: Optional[dict]) -> None:
        """One upload ended (the caller counts one less in flight); ``report`` holds the
        host's budgets from its answer, reset times in seconds from now (or None)."""
        self.learn(state, now, report)

    def learn(self, state: GateState, now: float, report: Optional[dict]) -> None:
        """The host said what is left (an answer, or a question that spends nothing): no
        probe upload is needed to find out."""
        state.observed += 1
        if not report:
            return
        budgets = self._budgets(state)
        for name, budget in budgets.items():
            remaining = report.get(f"{name}_remaining")
            if remaining is None:
                continue
            reset = report.get(f"{name}_reset")
            budget.update(remaining, now + reset if reset is not None else None)
        self._keep(state, budgets)

    @staticmethod
    def pause(state: GateState, now: float, seconds: float, why: str) -> None:
        """Hold every upload for ``seconds`` from now (never shortens a longer pause)."""
        until = now + seconds
        if until > state.paused_until:
            state.paused_until, state.pause_why = until, why

    def _probing(self, state: GateState, budgets: Dict[str, Budget]) -> bool:
        """True while a budget the host reports is unknown (the next answer tells). A host
        without budgets (S3) has nothing to find out: it never probes."""
        return bool(budgets) and (state.observed == 0 or any(
            b.reported and b.remaining is None for b in budgets.values()))
