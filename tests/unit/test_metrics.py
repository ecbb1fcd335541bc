"""The metrics registry, rendered and parsed as Prometheus would, request metrics in-process,
and what /metrics reads of the store."""
import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

import uploader
from uploader import jobs
from uploader.errors import StoreUnavailable
from uploader.metrics import Metrics
from uploader.storegauges import StoreGauges

from tests.inprocess import AppTestCase
from tests.support import REPO

OPERATING = REPO / "docs" / "operating.md"  # its Metrics table

EXISTING = [  # every name docs/operating.md listed under Metrics; none may go away
    "uploader_jobs_submitted_total", "uploader_urls_submitted_total", "uploader_urls_finished_total",
    "uploader_fetch_seconds_bucket", "uploader_upload_seconds_bucket", "uploader_fetched_bytes_total",
    "uploader_uploaded_bytes_total", "uploader_urls_queued", "uploader_urls_in_flight",
    "uploader_worker_restarts_total", "uploader_ratelimit_waits_total",
    "uploader_imgur_remaining_credits", "uploader_dedup_reuses_total",
    "uploader_gate_grants_given_back_total", "uploader_store_up",
]


def samples(metrics, queued=0, in_flight=0):
    """{(sample name, frozenset of labels): value}, as a scraper would read them."""
    text = metrics.render(queued=queued, in_flight=in_flight).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def names(values):
    return {name for name, _ in values}


def busy_metrics():
    """A registry that has seen one of everything, so every labelled series exists."""
    metrics = Metrics()
    metrics.job_submitted(2)
    metrics.result(jobs.Result(url_id=1, worker=0, generation=0, state=jobs.COMPLETE, attempts=1,
                               fetch_seconds=0.1, upload_seconds=0.2, fetched_bytes=10,
                               uploaded_bytes=10, rate={"user_remaining": 100, "user_reset": 60}))
    metrics.failed("worker_died")
    metrics.worker_died()
    metrics.waiting()
    metrics.result(jobs.Result(url_id=2, worker=0, generation=0, state=jobs.COMPLETE, attempts=1,
                               reused=True))
    metrics.http_request(route="/v1/images", method="GET", status=200, seconds=0.004)
    return metrics


def test_every_existing_metric_is_still_there():
    assert set(EXISTING) <= names(samples(busy_metrics(), queued=3, in_flight=2))


def documented_metrics():
    """The names in the first column of docs/operating.md's Metrics table, labels left off."""
    table = OPERATING.read_text().split("| metric | what |", 1)[1].split("\n\n", 1)[0]
    return {name for row in table.splitlines()[2:]
            for name in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", row.split("|")[1])}


def test_the_docs_list_every_metric_and_only_those():
    text = busy_metrics().render(queued=3, in_flight=2).decode()
    families = list(text_string_to_metric_families(text))
    exported = ({f.name for f in families} | {s.name for f in families for s in f.samples}
                | {f.name + "_total" for f in families if f.type == "counter"})  # labelled, none yet
    documented = documented_metrics()
    assert set(EXISTING) - {"uploader_fetch_seconds_bucket", "uploader_upload_seconds_bucket"} <= documented
    assert documented <= exported, documented - exported
    undocumented = [f.name for f in families if f.name.startswith("uploader_")
                    and not {f.name, f.name + "_total"} & documented]
    assert not undocumented


def test_no_created_series():
    assert not [name for name in names(samples(busy_metrics())) if name.endswith("_created")]


def test_grants_given_back_are_counted_from_results():
    metrics = Metrics()
    for given_back in (0, 2, 1):
        metrics.result(jobs.Result(url_id=given_back, worker=0, generation=0,
                                   state=jobs.COMPLETE, attempts=1,
                                   grants_given_back=given_back))
    assert samples(metrics)[("uploader_gate_grants_given_back_total", frozenset())] == 3


def test_build_info_names_the_version():
    values = samples(Metrics())
    assert values[("uploader_build_info", frozenset({"version": uploader.__version__}.items()))] == 1
    assert [name for name, _ in values if name == "uploader_build_info"] == ["uploader_build_info"]


def test_process_cpu_and_memory_of_this_process():
    values = samples(Metrics())
    assert values[("process_resident_memory_bytes", frozenset())] > 1024 * 1024
    assert values[("process_cpu_seconds_total", frozenset())] > 0
    assert {"process_virtual_memory_bytes", "process_start_time_seconds", "process_open_fds"} <= names(values)


def test_http_requests_by_route_method_and_status():
    metrics = Metrics()
    for seconds in (0.002, 0.003, 0.2):
        metrics.http_request(route="/v1/images/upload/([^/]+)", method="GET", status=200, seconds=seconds)
    metrics.http_request(route="/v1/images/upload", method="POST", status=400, seconds=0.001)
    metrics.http_request(route="unmatched", method="BREW", status=405, seconds=0.001)
    values = samples(metrics)
    job = {"route": "/v1/images/upload/([^/]+)", "status": "200"}
    assert values[("uploader_http_requests_total", frozenset({**job, "method": "GET"}.items()))] == 3
    assert values[("uploader_http_request_seconds_count", frozenset(job.items()))] == 3
    assert values[("uploader_http_request_seconds_sum", frozenset(job.items()))] == pytest.approx(0.205)
    assert values[("uploader_http_request_seconds_bucket", frozenset({**job, "le": "0.005"}.items()))] == 2
    assert values[("uploader_http_requests_total", frozenset(
        {"route": "/v1/images/upload", "method": "POST", "status": "400"}.items()))] == 1
    assert values[("uploader_http_requests_total", frozenset(  # a made-up method is no new series
        {"route": "unmatched", "method": "other", "status": "405"}.items()))] == 1


class RequestMetricsTest(AppTestCase):
    """The real make_app counts requests under their route pattern, never their path."""

    def setUp(self):
        super().setUp()
        self.metrics = self.service.metrics

    def requests_total(self):
        return {dict(labels)["route"] + " " + dict(labels)["method"] + " " + dict(labels)["status"]: value
                for (name, labels), value in samples(self.metrics).items()
                if name == "uploader_http_requests_total"}

    def test_requests_count_under_their_route_pattern(self):
        for path in ("/v1/images/upload/abc", "/v1/images/upload/def", "/i/Abc1234.png", "/i/x/y",
                     "/nothing/here/1", "/nothing/here/2", "/openapi.json"):
            self.fetch(path)
        self.fetch("/v1/images/upload", method="POST", body=b"[",
                   headers={"Content-Type": "application/json"})
        self.fetch("/v1/images/upload", method="PUT", body=b"{}")
        assert self.requests_total() == {
            "/v1/images/upload/([^/]+) GET 404": 2,
            "/i/(.+) GET 404": 2,
            "unmatched GET 404": 2,
            "/openapi.json GET 200": 1,
            "/v1/images/upload POST 400": 1,
            "/v1/images/upload PUT 405": 1,
        }
        values = samples(self.metrics)
        assert values[("uploader_http_request_seconds_count",
                       frozenset({"route": "unmatched", "status": "404"}.items()))] == 2
        assert not any("/nothing" in str(labels) or "abc" in str(labels) for _, labels in values)


# -- what /metrics reads of the store: never waited on for long ----------------------------

def test_store_gauges_read_the_store_and_say_it_is_up():
    gauges = StoreGauges(lambda: (7, 12.5, True), ThreadPoolExecutor(1))
    assert asyncio.run(gauges.refresh()) is True
    assert (gauges.queued, gauges.oldest_queued, gauges.credential_rejected) == (7, 12.5, True)


def test_a_store_that_does_not_answer_is_down_and_read_once_at_a_time():
    """A hung store: each scrape answers after the wait, saying the store is down and
    keeping the figures last read; one read at a time, never one per scrape."""
    answer, release, reads = [(3, 1.0, False)], threading.Event(), []

    def read():
        reads.append(1)
        release.wait(30)
        return answer[0]

    executor = ThreadPoolExecutor(4)
    gauges = StoreGauges(read, executor, wait_seconds=0.05)

    async def scrape_twice_then_recover():
        up = [await gauges.refresh(), await gauges.refresh()]
        seen = gauges.queued, len(reads)
        answer[0] = (5, 2.0, False)
        release.set()  # the store answers again
        while not await gauges.refresh():
            pass
        return up, seen

    up, (figures, reads_while_hung) = asyncio.run(scrape_twice_then_recover())
    executor.shutdown()
    assert up == [False, False] and figures == 0  # nothing read yet: the start's zeros
    assert reads_while_hung == 1  # the second scrape waited for the first one's read
    assert gauges.queued == 5


def test_a_store_that_fails_is_down_and_keeps_the_figures_last_read():
    outcomes = [(4, 3.0, False), StoreUnavailable("PostgreSQL unreachable")]

    def read():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    gauges = StoreGauges(read, ThreadPoolExecutor(1))
    assert asyncio.run(gauges.refresh()) is True
    assert asyncio.run(gauges.refresh()) is False
    assert (gauges.queued, gauges.oldest_queued) == (4, 3.0)


def test_store_up_is_a_gauge():
    assert samples(Metrics())[("uploader_store_up", frozenset())] == 1
    assert "\nuploader_store_up 0.0\n" in Metrics().render(queued=0, in_flight=0,
                                                            store_up=False).decode()
