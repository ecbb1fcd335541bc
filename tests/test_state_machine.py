"""Property test: any interleaving of submissions, results, worker deaths and restarts keeps
every job's state valid. Drives the real Dispatcher and store, with a stub pool in place of
processes, one turn at a time."""
import itertools
import time
from dataclasses import dataclass, field

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uploader import jobs
from uploader.config import config_from_dict
from uploader.dispatcher import Dispatcher
from uploader.jobs import Result, WorkerExited
from uploader.store import open_store

MAX_ATTEMPTS = 3
STATUS_RANK = {s: i for i, s in enumerate(jobs.JOB_STATUS_ORDER)}


@dataclass
class _Process:
    alive: bool = True

    def is_alive(self):
        return self.alive


@dataclass
class _Handle:
    index: int
    generation: int
    process: _Process = field(default_factory=_Process)
    started: float = field(default_factory=time.monotonic)


class StubPool:
    """Records what would be sent to worker processes; spawning bumps the generation."""

    def __init__(self, processes):
        self.generations = itertools.count(1)
        self.workers = {i: _Handle(i, next(self.generations)) for i in range(processes)}

    def send(self, index, task):
        pass

    def spawn(self, index):
        self.workers[index] = _Handle(index, next(self.generations))

    def release_claims(self, index, generation):
        pass

    def ask_workers_to_stop(self):
        pass

    def terminate(self):
        pass


CONFIG = config_from_dict({"workers": {"processes": 2, "uploads_per_process": 2},
                           "imgur": {"max_attempts": MAX_ATTEMPTS}}, environ={})


class JobLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        self.writer = open_store(f"{self.dir.name}/s.sqlite3")
        self.dispatcher = self._new_dispatcher()
        self.jobs = 0
        self.final = {}        # url id -> final state once seen
        self.states = {}       # url id -> state at the last check (one step per turn at most)
        self.status = {}       # job id -> last status seen
        self.finished = {}     # job id -> finished once set

    def teardown(self):
        self.writer.conn.close()
        self.dir.cleanup()

    def _new_dispatcher(self):
        dispatcher = Dispatcher(writer=self.writer, pool=StubPool(2), config=CONFIG)
        dispatcher.recover()
        dispatcher._turn([None])
        return dispatcher

    def _in_flight(self):
        return [(w, t) for w, tasks in self.dispatcher.assigned.items() for t in tasks.values()]

    @rule(size=st.integers(1, 4))
    def submit(self, size):
        self.jobs += 1
        urls = [f"https://example.test/{self.jobs}/{n}.png" for n in range(size)]
        from concurrent.futures import Future
        from uploader.dispatcher import _Submit
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

    @precondition(lambda self: self.writer.conn.execute(
        "SELECT COUNT(*) FROM urls WHERE state IN ('complete', 'failed')").fetchone()[0])
    @rule(pick=st.integers(0, 100))
    def late_duplicate_result(self, pick):
        rows = self.writer.conn.execute(
            "SELECT id FROM urls WHERE state IN ('complete', 'failed') ORDER BY id").fetchall()
        url_id = rows[pick % len(rows)][0]
        self.dispatcher._turn([Result(url_id=url_id, worker=0, generation=0,
                                      state=jobs.COMPLETE, attempts=1, link="https://i.test/late")])

    @rule()
    def front_end_dies_and_restarts(self):
        self.dispatcher = self._new_dispatcher()

    @invariant()
    def states_are_consistent(self):
        conn = self.writer.conn
        for url_id, state, attempts in conn.execute("SELECT id, state, attempts FROM urls"):
            before = self.states.get(url_id, jobs.QUEUED)
            assert state == before or jobs.can_move(before, state), f"{before} -> {state}"
            self.states[url_id] = state
            assert 0 <= attempts <= MAX_ATTEMPTS
            if url_id in self.final:
                assert state == self.final[url_id], "a final state changed"
            elif state in jobs.FINAL_STATES:
                self.final[url_id] = state
        in_flight = {r[0] for r in conn.execute("SELECT id FROM urls WHERE state = 'in_flight'")}
        assert in_flight == {t.url_id for _, t in self._in_flight()}
        for job_id, status, finished, remaining in conn.execute(
                "SELECT id, status, finished, remaining FROM jobs"):
            states = [r[0] for r in conn.execute("SELECT state FROM urls WHERE job_id = ?", (job_id,))]
            # A job whose URLs were all handed back stays in-progress: status never goes back.
            assert STATUS_RANK[status] >= STATUS_RANK[jobs.job_status(states)]
            assert (status == jobs.JOB_COMPLETE) == (jobs.job_status(states) == jobs.JOB_COMPLETE)
            assert remaining == sum(s not in jobs.FINAL_STATES for s in states)
            assert STATUS_RANK[status] >= STATUS_RANK[self.status.get(job_id, jobs.JOB_PENDING)]
            self.status[job_id] = status
            assert (finished is not None) == (status == jobs.JOB_COMPLETE)
            if job_id in self.finished:
                assert finished == self.finished[job_id], "finished was set twice"
            elif finished is not None:
                self.finished[job_id] = finished
        for url_id, worker in self.dispatcher.quarantine.running.items():
            assert list(self.dispatcher.assigned[worker]) == [url_id], "a suspect ran in company"
        links = [r[0] for r in conn.execute("SELECT link FROM links")]
        assert "https://i.test/late" not in links


JobLifecycle.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestJobLifecycle = JobLifecycle.TestCase
