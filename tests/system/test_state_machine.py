"""Property test: any interleaving of submissions, results, worker deaths, restarts and (on
PostgreSQL) lost leases keeps every job's state valid. Drives the real Dispatcher and store
of each backend, with a stub pool in place of processes, one turn at a time."""
import os
import tempfile
import uuid
from concurrent.futures import Future

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uploader import jobs
from uploader.config import config_from_dict
from uploader.dispatcher import Dispatcher, _Call, _Submit, _Wake
from uploader.jobs import Result, WorkerExited
from uploader.backends import memory, open_store
from uploader.service import dispatcher_settings
from uploader.worker import SHARED_STATE_LOST
from tests.doubles import StubPool

pytestmark = pytest.mark.system  # starts processes or servers

MAX_ATTEMPTS = 3
STATUS_RANK = {s: i for i, s in enumerate(jobs.JOB_STATUS_ORDER)}
POSTGRES = {}  # the session's PostgreSQL server, for the shared-store machine


class JobLifecycle(RuleBasedStateMachine):
    """On the embedded store; ``SharedJobLifecycle`` runs the same rules on PostgreSQL."""

    def __init__(self):
        super().__init__()
        self.storage = self.make_storage()
        self.config = config_from_dict({"workers": {"processes": 2, "uploads_per_process": 2},
                                        "imgur": {"max_attempts": MAX_ATTEMPTS},
                                        "storage": self.storage}, environ={})
        self.store = None
        self.dispatcher = self._new_instance()
        self.jobs = 0
        self.final = {}        # url id -> final state once seen
        self.states = {}       # url id -> state at the last check (one step per turn at most)
        self.status = {}       # job id -> last status seen
        self.finished = {}     # job id -> finished once set
        self.lost = set()      # leases taken back from this instance while it worked

    def make_storage(self):
        self.dir = tempfile.TemporaryDirectory()
        return {"path": f"{self.dir.name}/s.sqlite3"}

    def teardown(self):
        self.store.close()
        self.dir.cleanup()

    def _new_instance(self):
        """A (re)started front end: a new instance on the same store."""
        if self.store is not None:
            self.store.close()
        self.store = open_store(self.config.storage, str(uuid.uuid4()))
        dispatcher = Dispatcher(store=self.store, pool=StubPool(2),
                                **dispatcher_settings(self.config))
        dispatcher.recover()
        self._take_back_the_dead(dispatcher)
        dispatcher._turn([])
        return dispatcher

    def _take_back_the_dead(self, dispatcher):
        """Embedded: ``recover`` did it. Shared: the turn's duties will, the lease being out."""

    def rows(self, sql, params=()):
        with self.store.reading() as conn:
            return [tuple(r) for r in conn.execute(self.store.q(sql), params).fetchall()]

    def _in_flight(self):
        return [(w, t) for w, tasks in self.dispatcher.state.assigned.items() for t in tasks.values()]

    @rule(size=st.integers(1, 4))
    def submit(self, size):
        self.jobs += 1
        urls = [f"https://example.test/{self.jobs}/{n}.png" for n in range(size)]
        self.dispatcher._turn([_Submit(f"job-{self.jobs}", urls, Future())])

    @precondition(lambda self: self._in_flight())
    @rule(pick=st.integers(0, 100), ok=st.booleans())
    def result(self, pick, ok):
        worker, task = self._in_flight()[pick % len(self._in_flight())]
        generation = self.dispatcher.pool.workers[worker].generation
        self.dispatcher._turn([Result(
            url_id=task.url_id, worker=worker, generation=generation,
            state=jobs.COMPLETE if ok else jobs.FAILED, attempts=task.attempt,
            link=f"https://i.test/{task.url_id}.png" if ok else None,
            reason=None if ok else "HTTP 404 from source")])

    @rule(worker=st.integers(0, 1))
    def worker_dies(self, worker):
        generation = self.dispatcher.pool.workers[worker].generation
        self.dispatcher._turn([WorkerExited(worker, generation, -9)])

    @precondition(lambda self: self.rows(
        "SELECT COUNT(*) FROM urls WHERE state IN ('complete', 'failed')")[0][0])
    @rule(pick=st.integers(0, 100))
    def late_duplicate_result(self, pick):
        rows = self.rows("SELECT id FROM urls WHERE state IN ('complete', 'failed') ORDER BY id")
        url_id = rows[pick % len(rows)][0]
        self.dispatcher._turn([Result(url_id=url_id, worker=0, generation=0,
                                      state=jobs.COMPLETE, attempts=1, link="https://i.test/late")])

    @rule()
    def front_end_dies_and_restarts(self):
        self.dispatcher = self._new_instance()

    @invariant()
    def states_are_consistent(self):
        for url_id, state, attempts in self.rows("SELECT id, state, attempts FROM urls"):
            before = self.states.get(url_id, jobs.QUEUED)
            assert state == before or memory.can_move(before, state), f"{before} -> {state}"
            self.states[url_id] = state
            assert 0 <= attempts <= MAX_ATTEMPTS
            if url_id in self.final:
                assert state == self.final[url_id], "a final state changed"
            elif state in jobs.FINAL_STATES:
                self.final[url_id] = state
        in_flight = {r[0] for r in self.rows(
            "SELECT id FROM urls WHERE state = 'in_flight' AND owner = ?", (self.store.instance,))}
        assert in_flight == {t.url_id for _, t in self._in_flight() if t.lease not in self.lost}
        for job_id, status, finished, remaining in self.rows(
                "SELECT id, status, finished, remaining FROM jobs"):
            states = [r[0] for r in self.rows("SELECT state FROM urls WHERE job_id = ?", (job_id,))]
            # A job whose URLs were all handed back stays in-progress: status never goes back.
            assert STATUS_RANK[status] >= STATUS_RANK[memory.job_status(states)]
            assert (status == jobs.JOB_COMPLETE) == (memory.job_status(states) == jobs.JOB_COMPLETE)
            assert remaining == sum(s not in jobs.FINAL_STATES for s in states)
            assert STATUS_RANK[status] >= STATUS_RANK[self.status.get(job_id, jobs.JOB_PENDING)]
            self.status[job_id] = status
            assert (finished is not None) == (status == jobs.JOB_COMPLETE)
            if job_id in self.finished:
                assert finished == self.finished[job_id], "finished was set twice"
            elif finished is not None:
                self.finished[job_id] = finished
        for url_id, worker in self.dispatcher.state.quarantine.running.items():
            assert list(self.dispatcher.state.assigned[worker]) == [url_id], \
                "a suspect ran in company"
        links = [r[0] for r in self.rows("SELECT link FROM links")]
        assert "https://i.test/late" not in links


class SharedJobLifecycle(JobLifecycle):
    """The same rules on PostgreSQL, where a restart is a new instance whose predecessor's
    URLs come back when its lease runs out, and an instance may lose its lease while working
    (its results are then refused)."""

    def make_storage(self):
        self.database = POSTGRES["server"].create_database()
        return {"url": self.database, "lease_seconds": 3}

    def teardown(self):
        self.store.close()
        POSTGRES["server"].drop_database(self.database.rsplit("/", 1)[1])

    def _take_back_the_dead(self, dispatcher):
        dispatcher.upkeep.lease_seconds = 0  # the previous instance's lease is out
        dispatcher.upkeep.connected_since = float("-inf")

    @precondition(lambda self: self._in_flight())
    @rule()
    def lease_runs_out_while_working(self):
        """Another instance takes back everything this one holds; its results are refused."""
        self.lost |= {t.lease for _, t in self._in_flight()}
        other = open_store(self.config.storage, "other-" + str(uuid.uuid4()))
        try:
            other.lease_seconds = 0
            with other.transaction():
                other.reap(MAX_ATTEMPTS)
        finally:
            other.close()


# Examples per run: enough for every push; THOROUGH=1 runs eight times as many (before a
# release, or after changing the dispatcher or the store's claims).
SCALE = 8 if os.environ.get("THOROUGH") == "1" else 1
JobLifecycle.TestCase.settings = settings(max_examples=30 * SCALE, stateful_step_count=30,
                                          deadline=None)
TestJobLifecycle = JobLifecycle.TestCase

SharedJobLifecycle.TestCase.settings = settings(max_examples=10 * SCALE, stateful_step_count=30,
                                                deadline=None)


@pytest.fixture
def postgres_for_machine(postgres):
    POSTGRES["server"] = postgres
    yield
    POSTGRES.clear()


@pytest.mark.usefixtures("postgres_for_machine")
class TestSharedJobLifecycle(SharedJobLifecycle.TestCase):
    pass


def test_a_worker_that_lost_the_manager_stops_the_instance_and_fails_no_url(tmp_path):
    # A worker whose trip to the manager broke ends with SHARED_STATE_LOST instead of
    # failing the URL it was handling: the instance stops as on the manager's death, and
    # every URL it held goes back to the queue, its attempt given back.
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 2},
                               "storage": {"path": str(tmp_path / "s.sqlite3")}}, environ={})
    store = open_store(config.storage, "me")
    fatal = []
    dispatcher = Dispatcher(store=store, pool=StubPool(1), on_fatal=fatal.append,
                            **dispatcher_settings(config))
    dispatcher.recover()
    dispatcher._turn([_Submit("job-1", ["https://example.test/a.png",
                                        "https://example.test/b.png"], Future())])
    assert len(dispatcher.state.assigned[0]) == 2
    try:
        dispatcher._turn([WorkerExited(0, dispatcher.pool.workers[0].generation,
                                       SHARED_STATE_LOST)])
        assert len(fatal) == 1 and fatal[0].startswith("multiprocessing manager lost")
        with store.reading() as conn:
            rows = conn.execute("SELECT state, attempts, suspect FROM urls").fetchall()
        assert [tuple(row) for row in rows] == [("queued", 0, 0)] * 2
    finally:
        store.close()


def test_a_drained_shared_queue_is_looked_at_again_once_told_of_work(postgres):
    """Every turn with a free slot claimed: at the end of each instance's share of a job
    (eight instances), claims that took nothing were a fifth of the statements per URL.
    Found drained, the queue is looked at again only when there may be work: a
    notification (another instance added some), a poll due, or work added here. Whether
    a suspect waits is asked only after such news (a suspect is queued by a requeue),
    not at every claim: with a pace, one claim a URL."""
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 4},
                               "storage": {"url": postgres.create_database(),
                                           "poll_seconds": 3600}}, environ={})
    store, other = (open_store(config.storage, name) for name in ("me", "other"))
    claims, asked = [], []
    claim, suspects_waiting = store.claim, store.suspects_waiting
    store.claim = lambda limit: claims.append(limit) or claim(limit)
    store.suspects_waiting = lambda: asked.append(1) or suspects_waiting()
    dispatcher = Dispatcher(store=store, pool=StubPool(1), **dispatcher_settings(config))
    dispatcher.recover()
    try:
        dispatcher._turn([_Wake()])  # nothing queued: drained
        dispatcher._turn([])  # a turn for other news (a result, progress): no claim
        assert len(claims) == 1
        with other.transaction():
            other.create_job("theirs", ["https://example.test/a.png"])
        dispatcher._turn([])
        assert dispatcher.in_flight() == 0 and len(claims) == 1  # not told yet
        dispatcher._turn([_Wake()])  # their commit's notification
        assert dispatcher.in_flight() == 1
        dispatcher._turn([])  # nothing more: drained again
        assert len(claims) == 3 and len(asked) == 2  # no news since the last answer
        dispatcher._turn([_Submit("mine", ["https://example.test/b.png"], Future())])
        assert dispatcher.in_flight() == 2  # what it adds itself, it takes at once
        dispatcher._turn([])
        with other.transaction():
            other.create_job("later", ["https://example.test/c.png"])
        dispatcher.upkeep.next_poll = 0.0  # a poll due (no notification came)
        dispatcher._turn([])
        assert dispatcher.in_flight() == 3 and len(claims) == 6 and len(asked) == 4
    finally:
        store.close()
        other.close()


def test_a_poll_of_a_drained_queue_with_nothing_queued_is_one_statement(postgres):
    """Idle instances poll every ``storage.poll_seconds`` (a notification may be missed):
    a turn that claimed (begun, a look for suspects, the claim, committed) for nothing.
    With only a poll due and nothing queued anywhere, one statement says so; with work
    queued elsewhere, the poll claims it."""
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 4},
                               "storage": {"url": postgres.create_database(),
                                           "poll_seconds": 3600}}, environ={})
    store, other = (open_store(config.storage, name) for name in ("me", "other"))
    dispatcher = Dispatcher(store=store, pool=StubPool(1), **dispatcher_settings(config))
    dispatcher.recover()
    try:
        dispatcher._turn([_Wake()])  # nothing queued: drained (heartbeat and reap done)
        statements, transactions = [], []
        execute, transaction = store._execute, store.transaction
        store._execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)
        store.transaction = lambda: transactions.append(1) or transaction()
        dispatcher.upkeep.next_poll = 0.0  # a poll due (no notification came)
        dispatcher._turn([])
        assert len(statements) == 1 and transactions == []
        with other.transaction():
            other.create_job("theirs", ["https://example.test/a.png"])
        dispatcher.upkeep.next_poll = 0.0
        dispatcher._turn([])
        assert dispatcher.in_flight() == 1 and transactions == [1]
    finally:
        store.close()
        other.close()


def test_a_call_does_not_make_a_drained_queue_looked_at_again(postgres):
    """A call queues no work (a cancel, a deletion, the courier's look for effects every
    ``poll_seconds``): after one, a drained queue is not claimed from (it was, a turn of
    four statements after each of the courier's looks, on every idle instance)."""
    config = config_from_dict({"workers": {"processes": 1, "uploads_per_process": 4},
                               "storage": {"url": postgres.create_database(),
                                           "poll_seconds": 3600}}, environ={})
    store = open_store(config.storage, "me")
    claims = []
    claim = store.claim
    store.claim = lambda limit: claims.append(limit) or claim(limit)
    dispatcher = Dispatcher(store=store, pool=StubPool(1), **dispatcher_settings(config))
    dispatcher.recover()
    try:
        dispatcher._turn([_Wake()])  # nothing queued: drained
        looked = Future()
        dispatcher._turn([_Call(lambda store: store.claim_effects(4, 30), looked)])
        assert looked.result() == [] and len(claims) == 1
        dispatcher._turn([_Submit("mine", ["https://example.test/b.png"], Future())])
        assert len(claims) == 2 and dispatcher.in_flight() == 1  # a job is work added
    finally:
        store.close()
