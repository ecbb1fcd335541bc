"""The job model: URL states, job statuses, and the small records that cross processes.

A job is a list of distinct URLs. Each URL moves through

    queued -> in_flight -> complete | failed
      |          |
      |          +-> queued   (handed back: worker died, service stopped)
      +-> failed              (its job cancelled)

and the job's status follows from its URLs: ``pending`` until the first URL is
dispatched, ``in-progress`` until every URL is final, then ``complete``. Status never
moves backwards and ``finished`` is set once. The stores' SQL keeps these rules; the
in-memory backend keeps them in Python (``backends.memory``: ``TRANSITIONS``,
``job_status``), the oracle its tests hold the stores to.
"""
import functools
import math
import pickle
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

QUEUED = "queued"
IN_FLIGHT = "in_flight"
COMPLETE = "complete"
FAILED = "failed"
FINAL_STATES = frozenset({COMPLETE, FAILED})

JOB_PENDING = "pending"
JOB_IN_PROGRESS = "in-progress"
JOB_COMPLETE = "complete"
JOB_STATUS_ORDER = (JOB_PENDING, JOB_IN_PROGRESS, JOB_COMPLETE)


def format_timestamp(epoch_seconds: Optional[float]) -> Optional[str]:
    """UTC ``YYYY-MM-DDTHH:mm:ss.sssZ``, the seed's timestamp format. Every log line and
    every URL of a job document has some, so the text of each second is made once: the
    microseconds are rounded as ``datetime.fromtimestamp`` rounds them (half to even)."""
    if epoch_seconds is None:
        return None
    fraction, second = math.modf(epoch_seconds)
    micro = round(fraction * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    return f"{_second_text(int(second))}{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


def parse_timestamp(text: str) -> float:
    """Epoch seconds of a ``format_timestamp`` string."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True)
class Task:
    """One URL handed to a worker: small and picklable."""

    url_id: int
    job_id: str
    url: str
    attempt: int  # 1 for the first try; counts every try, including ones a crash cut short
    lease: int = 0  # the claim's token: a result counts only while the store still holds it
    suspect: bool = False  # in flight when a worker died in company: runs alone (quarantine)
    account: str = ""  # who owns the job: dedup and links are per account


@dataclass(frozen=True)
class Result:
    """What a worker reports back about one URL."""

    url_id: int
    worker: int
    generation: int
    state: str  # COMPLETE or FAILED
    attempts: int
    link: Optional[str] = None
    reason: Optional[str] = None
    sha256: Optional[str] = None
    reused: bool = False
    deletehash: Optional[str] = None  # what the host needs to delete the image again
    failure_class: Optional[str] = None  # errors.failure_class of a failure
    seconds: float = 0.0  # the whole handling, fetch to answer
    fetch_seconds: Optional[float] = None
    upload_seconds: Optional[float] = None
    fetched_bytes: int = 0
    uploaded_bytes: int = 0
    rate: Optional[dict] = None  # Imgur's budgets from the last answer, for metrics
    grants_given_back: int = 0  # gate grants this process was held up past (short of CPU)


@dataclass(frozen=True)
class Attempt:
    """A worker is about to try a URL again (so a crash mid-retry still counts it)."""

    url_id: int
    worker: int
    generation: int
    attempt: int


@dataclass(frozen=True)
class Waiting:
    """A URL waits for the image host's limits, or for room at the host (``host_full``: its
    disk is full), until ``until`` (epoch seconds); None: no more."""

    url_id: int
    until: Optional[float]
    reason: Optional[str] = None
    host_full: bool = False


@dataclass(frozen=True)
class Progress:
    """Bytes of a URL's image fetched so far (``total`` None when the source did not say)."""

    url_id: int
    received: int
    total: Optional[int]


@dataclass(frozen=True)
class Ready:
    """A worker process has built its sessions and its slots are taking tasks."""

    worker: int
    generation: int


@dataclass(frozen=True)
class GateNews:
    """To a worker, from its instance's listening connection: a pause of the shared gate
    was announced (``listening`` True), or listening began or ended (``backends.postgres.tickets``)."""

    listening: bool


@dataclass(frozen=True)
class Refused:
    """From a worker: PostgreSQL refuses its connections for want of room (``reason``),
    or no longer does (None); ``backends.postgres.refusals``."""

    worker: int
    generation: int
    reason: Optional[str]


@dataclass(frozen=True)
class WorkerExited:
    """A worker process ended; sent through the result queue after its last results."""

    worker: int
    generation: int
    exitcode: Optional[int]


def pack(records) -> bytes:
    """Many records as one message: one manager round trip instead of one per record.

    Pre-pickled with the stdlib's C pickler, so the manager's (pure-Python, dill)
    pickling sees a single bytes object, which it handles cheaply."""
    return pickle.dumps(list(records), protocol=pickle.HIGHEST_PROTOCOL)


def unpack(message) -> list:
    """The records of a message made by ``pack`` (a lone record passes through as a list)."""
    if isinstance(message, bytes):
        return pickle.loads(message)
    return [message]
