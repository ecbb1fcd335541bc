"""Prometheus metrics, all kept in the front end.

Workers do not export metrics themselves: every figure travels back inside the ``Result``
(timings, sizes, failure class, Imgur's budgets), so one registry in the one process that
serves ``/metrics`` sees the whole pool, with no multiprocess-mode files to manage. The
front end adds its own: HTTP requests by route pattern (never the raw path, which a
client chooses) and status, its process's CPU and memory, and the running version.
"""
import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the handler)

from . import __version__, jobs
from .ratelimit import Budget

# A ``<counter>_created`` series per counter and label set doubles the output for a start
# time nobody graphs. The switch is process-wide in prometheus_client.
disable_created_metrics()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods kept as label values; any other (a client may send anything) counts as ``other``."""


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.jobs_submitted = Counter("uploader_jobs_submitted", "Jobs accepted.", registry=r)
        self.urls_submitted = Counter("uploader_urls_submitted", "Distinct URLs accepted.",
                                      registry=r)
        self.urls_finished = Counter(
            "uploader_urls_finished", "URLs that reached a final state, by outcome "
            "(complete, reused, failed) and failure class.", ["outcome", "failure_class"],
            registry=r)
        self.fetch_seconds = Histogram("uploader_fetch_seconds", "Time to download a source image.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.upload_seconds = Histogram("uploader_upload_seconds",
                                        "Time to upload an image, retries and waits included.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.fetched_bytes = Counter("uploader_fetched_bytes", "Bytes downloaded from sources.",
                                     registry=r)
        self.uploaded_bytes = Counter("uploader_uploaded_bytes", "Bytes uploaded to the host.",
                                      registry=r)
        self.queued = Gauge("uploader_urls_queued", "URLs waiting for a worker slot.", registry=r)
        self.in_flight = Gauge("uploader_urls_in_flight", "URLs being fetched or uploaded.",
                               registry=r)
        self.oldest_queued = Gauge(
            "uploader_oldest_queued_seconds", "How long the oldest URL waiting for a worker slot "
            "has waited (since its job was made); 0 when none waits.", registry=r)
        self.workers_alive = Gauge("uploader_workers_alive",
                                   "Worker processes alive and taking tasks.", registry=r)
        self.workers_expected = Gauge("uploader_workers_expected",
                                      "Worker processes configured (workers.processes).",
                                      registry=r)
        self.credential_rejected = Gauge(
            "uploader_host_credential_rejected", "1 while the image host refuses our credential "
            "for good (no upload can succeed): see /healthz.", registry=r)
        self.store_up = Gauge(
            "uploader_store_up", "1 while the store answers reads and commits; 0 while it is "
            "unreachable, full or slower than a second (the queue's figures are then the last "
            "ones read).", registry=r)
        self.worker_restarts = Counter("uploader_worker_restarts",
                                       "Worker processes that died and were replaced.", registry=r)
        self.ratelimit_waits = Counter(
            "uploader_ratelimit_waits", "Uploads held back by Imgur's limits or a pool pause.",
            registry=r)
        self.grants_given_back = Counter(
            "uploader_gate_grants_given_back", "Gate grants a worker was held up past (short of "
            "CPU) and gave back, its upload waiting for a new moment so the pace holds.",
            registry=r)
        self.imgur_remaining = Gauge("uploader_imgur_remaining_credits",
                                     "Imgur's remaining credits as last reported.", ["budget"],
                                     registry=r)
        self._budgets = {}  # budget name -> ratelimit.Budget, for imgur_remaining
        # children of labelled metrics set for every URL, each looked up once (labels() is
        # not free) and only once it has a value (a budget never reported is not shown as 0)
        self._children = {}  # (metric, labels) -> its child
        self.dedup_reuses = Counter("uploader_dedup_reuses",
                                    "URLs whose bytes were already uploaded (no credit spent).",
                                    registry=r)
        self.webhook_deliveries = Counter(
            "uploader_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, "
            "retried, failed: out of tries, refused: an address the policy refuses).",
            ["outcome"], registry=r)
        self.host_deletions = Counter(
            "uploader_host_deletions", "Deletions at the image host tried again after the "
            "client's request, by outcome (deleted, retried, failed).", ["outcome"], registry=r)
        self.pruned_rows = Counter(
            "uploader_pruned_rows", "Rows deleted by retention (retention.finished_jobs_seconds),"
            " by table (jobs, urls, outbox).", ["table"], registry=r)
        self.http_requests = Counter(
            "uploader_http_requests", "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_seconds = Histogram(
            "uploader_http_request_seconds", "Time to answer an HTTP request, by route pattern "
            "and status.", ["route", "status"], buckets=HTTP_BUCKETS, registry=r)
        self.build_info = Gauge("uploader_build_info", "The running version; always 1.", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def webhook(self, outcome: str) -> None:
        """One delivery attempt: delivered, retried, failed (out of tries) or refused."""
        self.webhook_deliveries.labels(outcome).inc()

    def host_deletion(self, outcome: str) -> None:
        """A deletion at the host tried again later: deleted, retried or failed."""
        self.host_deletions.labels(outcome).inc()

    def pruned(self, deleted: dict) -> None:
        """Rows retention deleted, by table."""
        for table, rows in deleted.items():
            self.pruned_rows.labels(table).inc(rows)

    def job_submitted(self, url_count: int) -> None:
        self.jobs_submitted.inc()
        self.urls_submitted.inc(url_count)

    def result(self, result: jobs.Result) -> None:
        if result.state == jobs.FAILED:
            outcome = "failed"
        else:
            outcome = "reused" if result.reused else "complete"
        self._child(self.urls_finished, outcome, result.failure_class or "").inc()
        if result.reused:
            self.dedup_reuses.inc()
        if result.grants_given_back:
            self.grants_given_back.inc(result.grants_given_back)
        if result.fetch_seconds is not None:
            self.fetch_seconds.observe(result.fetch_seconds)
        if result.upload_seconds is not None:
            self.upload_seconds.observe(result.upload_seconds)
        self.fetched_bytes.inc(result.fetched_bytes)
        self.uploaded_bytes.inc(result.uploaded_bytes)
        self._record_budgets(result.rate or {})

    def _record_budgets(self, rate: dict) -> None:
        """Answers come back out of order: keep what the gate keeps, the lowest figure
        reported within a budget's period (a later reset starts a new period)."""
        now = time.monotonic()
        for key, remaining in rate.items():  # the host's budgets, whichever it reported
            if not key.endswith("_remaining") or remaining is None:
                continue
            name = key[:-len("_remaining")]
            reset = rate.get(f"{name}_reset")
            budget = self._budgets.setdefault(name, Budget(name, reserve=0))
            budget.update(remaining, now + reset if reset is not None else None)
            self._child(self.imgur_remaining, name).set(budget.remaining)

    def _child(self, metric, *labels):
        """``metric.labels(*labels)``, looked up once."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def failed(self, failure_class: str) -> None:
        """A URL the front end failed itself (its worker or the service died under it)."""
        self.urls_finished.labels("failed", failure_class).inc()

    def http_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is its handler's pattern, or ``unmatched``."""
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, str(status)).observe(seconds)

    def worker_died(self) -> None:
        self.worker_restarts.inc()

    def waiting(self) -> None:
        self.ratelimit_waits.inc()

    def render(self, *, queued: int, in_flight: int, oldest_queued: float = 0.0,
               workers_alive: int = 0, workers_expected: int = 0,
               credential_rejected: bool = False, store_up: bool = True) -> bytes:
        self.store_up.set(int(store_up))
        self.queued.set(queued)
        self.oldest_queued.set(oldest_queued)
        self.in_flight.set(in_flight)
        self.workers_alive.set(workers_alive)
        self.workers_expected.set(workers_expected)
        self.credential_rejected.set(int(credential_rejected))
        return generate_latest(self.registry)
