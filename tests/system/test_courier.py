"""The courier on every store (SQLite, PostgreSQL, memory), without a service: deliveries at once, within their bound.

A receiver that holds its answers stands for a slow one: what else gets delivered while
it holds them shows, without timing anything, who waits for whom.
"""
import threading

import pytest

from testbed.fakes.webhook_receiver import WebhookReceiver
from uploader import jobs
from uploader.config import config_from_dict
from uploader.courier import Courier
from uploader.metrics import Metrics
from uploader.service import courier_settings

from tests.support import EVERYWHERE_BUT_LOOPBACK
from tests.support import wait_until
from tests.doubles import OneWriter


class BlockedDeletions:
    """A host whose deletions wait until released."""

    def __init__(self):
        self.asked, self.released = [], threading.Event()

    def __call__(self, deletehash):
        self.asked.append(deletehash)
        self.released.wait(30)
        return True


@pytest.fixture
def courier_for(stores):
    """``courier_for(concurrency, delete_at_host)``: (courier, writer) on a fresh store of
    this test's kind (``stores``); the courier is stopped after the test."""
    made = []

    def make(concurrency, delete_at_host=None):
        config = config_from_dict({
            "webhooks": {"concurrency": concurrency, "timeout_seconds": 30},
            "fetch": {"allow_private_networks": True, "denied_hosts": EVERYWHERE_BUT_LOOPBACK},
            "storage": stores.storage})
        store = stores.open("me")
        writer = OneWriter(store)
        courier = Courier(call=writer.call, store=store, metrics=Metrics(),
                          delete_at_host=delete_at_host or BlockedDeletions(),
                          **courier_settings(config, store))
        made.append((courier, store))
        courier.start()
        return courier, writer

    yield make
    for courier, store in made:
        courier.stop()


def complete_job(writer, courier, job_id, callback_url):
    """A one-URL job with a callback, completed: its delivery is in the outbox (the
    courier told, as the dispatcher tells it)."""
    def work(store):
        store.create_job(job_id, [f"https://a.example/{job_id}.png"], callback_url=callback_url)
        (task,) = store.claim(1)
        store.finish(task, jobs.COMPLETE, attempts=1, link=f"https://i.example/{job_id}.png")

    writer.call(work).result()
    if courier is not None:  # (None: added as by another instance, which wakes nobody here)
        courier.wake()


def callback(writer, job_id):
    """(state, attempts, last error) of a job's delivery."""
    return writer.store.read_job(job_id)[2]


def test_a_slow_receiver_and_a_slow_host_deletion_hold_only_their_own(courier_for):
    deletions = BlockedDeletions()
    courier, writer = courier_for(4, deletions)
    with WebhookReceiver() as slow, WebhookReceiver() as fast:
        slow.hold()
        complete_job(writer, courier, "slow", slow.url_for("/hook"))
        wait_until(lambda: len(slow.requests) == 1)
        writer.call(lambda store: store.add_effect("host_delete", "hash-1")).result()
        courier.wake()
        wait_until(lambda: deletions.asked == ["hash-1"])
        complete_job(writer, courier, "fast", fast.url_for("/hook"))
        wait_until(lambda: callback(writer, "fast")[0] == "done")
        # delivered while the slow receiver's first attempt and the deletion still hang
        assert callback(writer, "slow") == ("pending", 1, None)
        assert len(slow.requests) == 1 and len(fast.requests) == 1
        slow.release()
        deletions.released.set()
        wait_until(lambda: callback(writer, "slow")[0] == "done")
        assert callback(writer, "slow") == ("done", 1, None)


def test_no_more_deliveries_at_once_than_the_bound(courier_for):
    courier, writer = courier_for(2)
    with WebhookReceiver() as receiver:
        receiver.hold()
        for n in range(3):
            complete_job(writer, courier, f"job-{n}", receiver.url_for(f"/hook/{n}"))
        wait_until(lambda: len(receiver.requests) >= 2)
        # the third is not even claimed while two are being carried out
        assert sorted(callback(writer, f"job-{n}")[1] for n in range(3)) == [0, 1, 1]
        assert len(receiver.requests) == 2
        receiver.release()
        wait_until(lambda: all(callback(writer, f"job-{n}")[0] == "done" for n in range(3)))
    assert len(receiver.requests) == 3 and receiver.most_at_once == 2


def test_an_idle_courier_reads_before_it_claims_and_takes_what_others_added(stores):
    """Woken by its timer alone, the courier reads whether an effect is due and claims
    only then (an idle instance's look is a read, not also a transaction of the writer's);
    an effect added with no wake here (as by another instance) is claimed at its next look."""
    config = config_from_dict({
        "fetch": {"allow_private_networks": True, "denied_hosts": EVERYWHERE_BUT_LOOPBACK},
        "storage": stores.storage})
    store = stores.open("me")
    writer, claims, reads = OneWriter(store), [], []
    looked = store.next_effect_in
    store.next_effect_in = lambda: reads.append(1) or looked()

    def call(fn):
        claims.append(fn)
        return writer.call(fn)

    courier = Courier(call=call, store=store, metrics=Metrics(), delete_at_host=BlockedDeletions(),
                      host="local", webhooks=config.webhooks, fetch=config.fetch,
                      poll_seconds=0.05)
    courier.start()
    try:
        wait_until(lambda: len(reads) >= 6)  # five looks by the timer at least
        assert len(claims) == 1  # the first look's, at start; the timer's only read
        with WebhookReceiver() as receiver:
            complete_job(writer, courier=None, job_id="elsewhere",
                         callback_url=receiver.url_for("/hook"))
            wait_until(lambda: len(receiver.requests) == 1)
            wait_until(lambda: callback(writer, "elsewhere")[0] == "done")
        assert len(claims) >= 2
    finally:
        courier.stop()
