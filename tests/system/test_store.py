"""The store's contract on every backend (SQLite, PostgreSQL and the in-memory one, which
is kept faithful by these tests): job creation, claims under leases, results, hand-back,
reaping. What only a database does (migrations, indexes, statements, a full disk) is
tested on the databases."""
import socket
import threading
import time
from dataclasses import replace

import psycopg
import pytest

from uploader import jobs
from uploader.config import StorageConfig
from uploader.errors import QueueFull, StoreFull, StoreInUse, StoreUnavailable
from uploader.render import job_document
from uploader.backends import open_store
from uploader.backends.postgres import store as postgres_store
from uploader.backends import schema
from uploader.backends import sql
from uploader.backends.sql import OLDEST_LINK, QUEUED_FIRST

URLS = ["https://a.example/1.png", "https://a.example/2.png", "https://a.example/3.png"]


@pytest.fixture
def opened(stores):
    """``opened(instance)``: an instance's store, all of them on one store (``stores``)."""
    return stores.open


@pytest.fixture
def store(opened):
    store = opened("me")
    with store.transaction():
        store.create_job("job-1", URLS)
    return store


def job(store, job_id="job-1"):
    found = store.read_job(job_id)
    return None if found is None else job_document(*found)


def test_new_job_is_pending_with_every_url_pending(store):
    document = job(store)
    assert document["status"] == "pending" and document["finished"] is None
    assert abs(jobs.parse_timestamp(document["created"]) - time.time()) < 60
    assert document["uploaded"] == {"pending": URLS, "complete": [], "failed": []}
    assert [u["attempts"] for u in document["urls"]] == [0, 0, 0]


def test_claims_then_results_complete_the_job_once(store):
    with store.transaction():
        tasks = store.claim(2)
    assert [t.url for t in tasks] == URLS[:2] and all(t.attempt == 1 for t in tasks)
    assert job(store)["status"] == "in-progress"
    with store.transaction():
        assert store.finish(tasks[0], jobs.COMPLETE, attempts=1, link="https://i.example/a.png",
                            sha256="aa", host="local")
        assert store.finish(tasks[1], jobs.FAILED, attempts=1, reason="HTTP 404 from source")
        (last,) = store.claim(5)
    assert job(store)["status"] == "in-progress" and job(store)["finished"] is None
    with store.transaction():
        assert store.finish(last, jobs.COMPLETE, attempts=1, link="https://i.example/c.png")
        assert not store.finish(last, jobs.FAILED, attempts=2, reason="late")
    document = job(store)
    assert document["status"] == "complete" and document["finished"] is not None
    assert document["uploaded"] == {"pending": [], "complete": ["https://i.example/a.png",
                                                              "https://i.example/c.png"],
                                    "failed": [URLS[1]]}
    assert document["urls"][1]["reason"] == "HTTP 404 from source"
    with store.links(10) as pages:
        assert list(pages) == [["https://i.example/a.png", "https://i.example/c.png"]]
    assert store.link_for("aa", "local") == "https://i.example/a.png"


def counters(store) -> dict:
    """Each job's (remaining, completed, failed), as its listing shows them."""
    rows, _ = store.list_jobs("", 100)
    return {row[0]: tuple(row[4:7]) for row in rows}


def test_one_transaction_counts_the_urls_of_several_jobs_and_completes_each_once(opened):
    """The job counters of a transaction (one statement for every job on PostgreSQL):
    each job counts its own, and only a job completed with a callback gets a delivery."""
    store = opened("me")
    hook = "https://hooks.example/done"
    with store.transaction():
        store.create_job("job-b", URLS[:1], callback_url=hook)
        store.create_job("job-a", URLS, callback_url=hook)
        store.create_job("job-c", URLS[:1])
        tasks = store.claim(5)
    by_job = {}
    for task in tasks:
        by_job.setdefault(task.job_id, []).append(task)
    with store.transaction():
        store.finish_many([(by_job["job-a"][0], jobs.COMPLETE, dict(attempts=1,
                                                                    link="https://i.example/a"))]
                          + [(by_job[j][k], jobs.FAILED, dict(attempts=1, reason="gone"))
                             for j, k in (("job-a", 1), ("job-b", 0), ("job-c", 0))])
    assert counters(store) == {"job-a": (1, 1, 1), "job-b": (0, 0, 1), "job-c": (0, 0, 1)}
    assert job(store, "job-a")["status"] == "in-progress"
    assert job(store, "job-a")["uploaded"]["complete"] == ["https://i.example/a"]
    assert [job(store, j)["status"] for j in ("job-b", "job-c")] == ["complete", "complete"]
    assert job(store, "job-b")["uploaded"]["failed"] == URLS[:1]
    with store.transaction():
        assert [(e.job_id, e.target) for e in store.claim_effects(10, 30)] == [("job-b", hook)]
        store.finish_many([(by_job["job-a"][2], jobs.FAILED, dict(attempts=1, reason="gone"))])
    with store.transaction():
        assert [(e.job_id, e.target) for e in store.claim_effects(10, 30)] == [("job-a", hook)]
    assert job(store, "job-a")["status"] == "complete"


def test_a_transactions_results_are_counted_once_however_they_come(opened):
    """PostgreSQL counts a batch's jobs in the batch's statement where nothing else in its
    transaction counts jobs, else at the commit: the counters come out the same."""
    store = opened("me")
    with store.transaction():
        store.create_job("job-1", URLS + ["https://a.example/4.png", "https://a.example/5.png"])
        a, b, c, d, e = store.claim(5)
    with store.transaction():
        store.finish_many([(a, jobs.COMPLETE, dict(attempts=1, link="https://i.example/a"))])
        store.finish_many([(b, jobs.FAILED, dict(attempts=1, reason="gone"))])  # a second batch
    with store.transaction():
        store.requeue(c)  # handed back: counted at the commit if its job was cancelled
        store.finish_many([(d, jobs.COMPLETE, dict(attempts=1, link="https://i.example/d"))])
    assert counters(store) == {"job-1": (2, 2, 1)}
    assert job(store)["status"] == "in-progress"
    with store.transaction():
        (again,) = store.claim(1)
        store.finish_many([(again, jobs.COMPLETE, dict(attempts=2, link="https://i.example/c")),
                           (e, jobs.COMPLETE, dict(attempts=1, link="https://i.example/e"))])
    assert job(store)["status"] == "complete" and counters(store) == {"job-1": (0, 4, 1)}


def test_finishing_a_batch_is_finishing_each_in_turn(postgres):
    """PostgreSQL finishes a batch in one statement; the outcome is the one-by-one's:
    answers, the job, links (the first of two equal ones kept) and dedup claims done."""
    import psycopg

    outcomes = []
    for batched in (False, True):
        database = postgres.create_database()
        store = open_store(StorageConfig(url=database), "me")
        with store.transaction():
            store.create_job("job-1", URLS + ["https://a.example/4.png"])
            tasks = store.claim(4)
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("INSERT INTO dedup_claims (sha256, host, account, instance, worker,"
                         " generation, thread) VALUES ('aa', 'imgur', '', 'me', 0, 1, 1)")
        stale = replace(tasks[3], lease=tasks[3].lease + 1)  # a claim this instance lost
        finishes = [
            (tasks[0], jobs.COMPLETE, dict(attempts=1, link="https://i.example/a", sha256="aa",
                                           host="imgur", deletehash="d1")),
            (tasks[1], jobs.COMPLETE, dict(attempts=2, link="https://i.example/a", sha256="aa",
                                           host="imgur", reused=True)),
            (tasks[2], jobs.FAILED, dict(attempts=3, reason="HTTP 404 from source")),
            (stale, jobs.COMPLETE, dict(attempts=1, link="https://i.example/late")),
            (tasks[0], jobs.FAILED, dict(attempts=1, reason="a second result")),
        ]
        statements = []
        execute = store._execute
        store._execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)
        with store.transaction():
            answers = (store.finish_many(finishes) if batched
                       else [store.finish(task, state, **fields) for task, state, fields in finishes])
        store._execute = execute
        if batched:
            assert len(statements) == 1  # the batch and its job's counters
        document = job(store)
        with psycopg.connect(database) as conn:
            links = conn.execute("SELECT link, sha256, host, account, deletehash FROM links"
                                 " ORDER BY id").fetchall()
            claims = conn.execute("SELECT count(*) FROM dedup_claims").fetchone()[0]
        store.close()
        outcomes.append((answers, document["status"], document["uploaded"],
                         [(u["state"], u["attempts"], u["reason"], u["link"])
                          for u in document["urls"]], links, claims))
    assert outcomes[1] == outcomes[0]
    assert outcomes[1][0] == [True, True, True, False, False]
    assert outcomes[1][4] == [("https://i.example/a", "aa", "imgur", "", "d1")]
    assert outcomes[1][5] == 0


def test_an_instance_starting_slowly_keeps_its_lease(postgres):
    """Registered when its store opens, an instance starts its processes before its
    dispatcher renews the lease: on a loaded machine that took longer than a lease, and
    a peer took the live instance for dead."""
    database = postgres.create_database()
    starting, peer = (open_store(StorageConfig(url=database, lease_seconds=1), name)
                      for name in ("starting", "peer"))
    with starting.kept_alive():
        time.sleep(1.6)  # starting the worker processes: longer than a lease
        with peer.transaction():
            peer.heartbeat()
            peer.reap(max_attempts=5)
    with starting.transaction():
        assert starting.heartbeat()  # renewed: it was never declared dead


def test_an_instance_frozen_mid_transaction_holds_up_nobody(postgres):
    """Frozen inside a transaction (SIGSTOP, a stalled VM), an instance holds the rows it
    changed; another's reaper waited for them until it woke (the cluster drill's job
    stalled so). The server ends such a transaction after a lease."""
    database = postgres.create_database()
    frozen, alive = (open_store(StorageConfig(url=database, lease_seconds=1), name)
                     for name in ("frozen", "alive"))
    with frozen.transaction():
        frozen.create_job("job-1", URLS)
        tasks = frozen.claim(3)
    reaped = []

    def reap():
        with alive.transaction():
            reaped.append(alive.reap(max_attempts=5))

    with pytest.raises(StoreUnavailable):
        with frozen.transaction():
            assert frozen.finish(tasks[0], jobs.COMPLETE, attempts=1, link="https://i.example/a")
            time.sleep(1.5)  # no heartbeat, the transaction left open: frozen, and dead
            reaper = threading.Thread(target=reap)
            reaper.start()
            reaper.join(timeout=10)
            assert reaped == [(3, [])]
    assert job(alive)["uploaded"]["complete"] == []  # the frozen one's result did not count
    frozen.close()
    alive.close()


def test_a_result_needs_the_lease_of_its_claim(store):
    with store.transaction():
        (task,) = store.claim(1)
        store.requeue(task)
        (again,) = store.claim(1)
    assert again.url_id == task.url_id and again.lease != task.lease
    with store.transaction():
        assert not store.finish(task, jobs.COMPLETE, attempts=1, link="https://i.example/old.png")
        assert store.finish(again, jobs.COMPLETE, attempts=2, link="https://i.example/new.png")
    assert job(store)["urls"][0]["link"] == "https://i.example/new.png"


def test_requeued_urls_keep_their_attempts_and_a_stop_refunds_its_own(store):
    with store.transaction():
        first, second = store.claim(2)
        store.requeue(first)  # a crash cut it short: the try counts
        store.requeue(second, refund=True)  # we stopped it ourselves: it does not
        again = {t.url_id: t.attempt for t in store.claim(3)}
    assert again == {first.url_id: 2, second.url_id: 1, first.url_id + 2: 1}


def test_progress_waiting_and_attempts_show_while_in_flight(store):
    with store.transaction():
        (task,) = store.claim(1)
        store.set_progress(task, 512, 2048)
        store.set_waiting(task, 1_800_000_000.0, "Imgur's user budget is down to its reserve")
        store.set_attempts(task, 3)
    entry = job(store)["urls"][0]
    assert entry["progress"] == {"bytes": 512, "total": 2048}
    assert entry["waiting"]["reason"].startswith("Imgur's user budget")
    assert entry["attempts"] == 3
    with store.transaction():
        store.finish(task, jobs.COMPLETE, attempts=3, link="https://i.example/a.png")
    entry = job(store)["urls"][0]
    assert entry["progress"] is None and entry["waiting"] is None


def test_waits_of_many_urls_are_noted_and_cleared_together_while_their_lease_holds(store):
    with store.transaction():
        first, second, third = store.claim(3)
        store.set_waiting_many([(first, 1_800_000_000.0, "paced by imgur.rate_limit"),
                                (second, 1_800_000_001.0, "Imgur's user budget is down")])
    assert [u["waiting"] and u["waiting"]["reason"] for u in job(store)["urls"]] == [
        "paced by imgur.rate_limit", "Imgur's user budget is down", None]
    with store.transaction():
        store.set_waiting_many([(first, None, None),
                                (replace(third, lease=third.lease + 1), 1_800_000_000.0,
                                 "a lease no longer held")])
    assert [u["waiting"] and u["waiting"]["reason"] for u in job(store)["urls"]] == [
        None, "Imgur's user budget is down", None]


def test_suspects_are_claimed_only_one_at_a_time_and_apart(store):
    with store.transaction():
        a, b, _ = store.claim(3)
        store.requeue(a, suspect=True)
        store.requeue(b, suspect=True)
        assert store.suspects_waiting()
        assert store.claim(5) == []  # suspects never go with the crowd
        suspect = store.claim_suspect()
    assert suspect.url_id == a.url_id and suspect.suspect
    with store.transaction():
        assert store.suspects_waiting()
        store.finish(suspect, jobs.COMPLETE, attempts=2, link="https://i.example/a.png")
        assert store.claim_suspect().url_id == b.url_id
        assert not store.suspects_waiting()


def make_jobs(store, *jobs_of):
    """Create ``(job id, account, URL count)`` jobs in one transaction, in order."""
    with store.transaction():
        for job_id, account, count in jobs_of:
            store.create_job(job_id, [f"https://{job_id}.example/{n}.png" for n in range(count)],
                             account=account)


def claim_one_by_one(store, count):
    """URLs claimed one claim of one at a time, as ``job/n`` names."""
    taken = []
    for _ in range(count):
        with store.transaction():
            (task,) = store.claim(1)
        taken.append(task.url.split("//")[1].replace(".example", "").replace(".png", ""))
    return taken


def test_claims_take_turns_across_keys_in_rounds(opened):
    store = opened("me")
    make_jobs(store, ("a", "key-a", 5), ("b", "key-b", 3), ("c", "key-c", 1))
    assert claim_one_by_one(store, 1) == ["a/0"]  # nobody has any in flight: the oldest
    with store.transaction():  # key-a has one in flight now: each other key's first comes first
        assert [t.url for t in store.claim(2)] == ["https://b.example/0.png",
                                                    "https://c.example/0.png"]
    with store.transaction():  # one each in flight (c has no more): a and b take turns
        tasks = store.claim(3)
    assert {t.url for t in tasks} == {"https://a.example/1.png", "https://b.example/1.png",
                                      "https://a.example/2.png"}
    assert {t.account for t in tasks} == {"key-a", "key-b"}
    assert all(t.account == "key-" + t.job_id for t in tasks)


def test_a_key_that_arrives_behind_a_backlog_is_claimed_at_the_next_free_slot(opened):
    store = opened("me")
    make_jobs(store, ("a", "key-a", 100))
    with store.transaction():
        held = store.claim(4)  # every slot busy with key-a's backlog
    make_jobs(store, ("b", "key-b", 1))
    with store.transaction():
        assert store.finish(held[0], jobs.COMPLETE, attempts=1, link="https://i.example/a0")
        (task,) = store.claim(1)  # a slot freed: key-b's, not key-a's fifth
    assert task.url == "https://b.example/0.png" and task.account == "key-b"
    assert claim_one_by_one(store, 2) == ["a/4", "a/5"]  # and then key-a's, in order


def test_the_jobs_of_one_key_take_turns(opened):
    store = opened("me")
    make_jobs(store, ("one", "", 6))
    assert claim_one_by_one(store, 2) == ["one/0", "one/1"]
    make_jobs(store, ("two", "", 2), ("three", "", 1))  # they join the rotation at its head
    assert claim_one_by_one(store, 7) == ["one/2", "two/0", "three/0", "one/3", "two/1",
                                          "one/4", "one/5"]


def test_a_url_handed_back_keeps_its_turn(opened):
    store = opened("me")
    make_jobs(store, ("one", "", 10))
    assert claim_one_by_one(store, 4) == ["one/0", "one/1", "one/2", "one/3"]
    make_jobs(store, ("two", "", 2))
    with store.transaction():
        taken = store.claim(2)
    assert sorted(t.url for t in taken) == ["https://one.example/4.png",
                                            "https://two.example/0.png"]
    with store.transaction():  # its worker died: it goes back where it was, ahead of one/5
        assert store.requeue(next(t for t in taken if t.job_id == "two"))
    assert claim_one_by_one(store, 4) == ["two/0", "one/5", "two/1", "one/6"]


def test_a_keys_queue_cap_refuses_a_job_whole_and_spoils_nothing(opened):
    store = opened("me")
    make_jobs(store, ("a", "key-a", 5))
    with store.transaction():
        with pytest.raises(QueueFull, match="5 URLs queued and the limit is 7: a job of 3"):
            store.create_job("refused", URLS, account="key-a", max_queued=7)
        store.create_job("other-key", URLS, account="key-b", max_queued=7)  # its own count
        store.create_job("fits", URLS[:2], account="key-a", max_queued=7)  # 5 + 2 = 7
    assert store.read_job("refused") is None
    assert job(store, "other-key")["status"] == "pending" and job(store, "fits")
    with store.transaction():
        store.claim(10)  # in flight is not queued: room again
        store.create_job("later", URLS, account="key-a", max_queued=7)
        with pytest.raises(QueueFull):
            store.create_job("too-big", ["https://a.example/%d" % n for n in range(8)],
                             account="key-a", max_queued=7)
    assert job(store, "later")["uploaded"]["pending"] == URLS


def test_unknown_job_reads_as_none(store):
    assert store.read_job("nope") is None


def test_a_link_is_listed_once_even_if_two_urls_share_it(store):
    with store.transaction():
        a, b, _ = store.claim(3)
        store.finish(a, jobs.COMPLETE, attempts=1, link="https://i.example/same.png")
        store.finish(b, jobs.COMPLETE, attempts=1, link="https://i.example/same.png")
    with store.links(10) as pages:
        assert list(pages) == [["https://i.example/same.png"]]


def test_the_listing_is_one_snapshot_however_long_it_takes(store, opened):
    with store.transaction():
        for n in range(5):
            store.create_job(f"more-{n}", [f"https://a.example/more-{n}.png"])
        for n, task in enumerate(store.claim(8)):
            store.finish(task, jobs.COMPLETE, attempts=1, link=f"https://i.example/{n}.png")
    with store.links(3) as pages:
        first = next(pages)
        with store.transaction():  # a link committed while the listing is half read
            store.create_job("late", ["https://a.example/late.png"])
            (task,) = store.claim(1)
            store.finish(task, jobs.COMPLETE, attempts=1, link="https://i.example/late.png")
        rest = [link for page in pages for link in page]
    assert first + rest == [f"https://i.example/{n}.png" for n in range(8)]


def test_a_job_that_cannot_be_stored_leaves_nothing_and_spoils_nothing(store):
    with store.transaction():
        with pytest.raises(UnicodeEncodeError):
            store.create_job("bad", ["https://a.example/ok.png", "https://a.example/\ud800"])
        store.create_job("good", ["https://a.example/ok.png"])
    assert store.read_job("bad") is None
    assert job(store, "good")["uploaded"]["pending"] == ["https://a.example/ok.png"]


def test_url_whose_every_attempt_was_cut_short_fails_instead_of_looping(opened):
    first = opened("first")
    with first.transaction():
        first.create_job("job-1", URLS)
        first.claim(3)
    first.close()  # dies with three URLs in flight, on their first attempt
    second = opened("second")
    if second.clustered:
        second.lease_seconds = 0  # the first's lease has run out
    with second.transaction():
        assert second.reap(max_attempts=2) == (3, [])
        second.claim(3)
    second.close()
    third = opened("third")
    if third.clustered:
        third.lease_seconds = 0
    with third.transaction():
        requeued, failed = third.reap(max_attempts=2)
    assert requeued == 0 and [row[2] for row in failed] == URLS
    with third.transaction():
        assert third.claim(3) == []
    document = job(third)
    assert document["status"] == "complete" and document["uploaded"]["failed"] == URLS
    assert "died while uploading, on each of 2 attempts" in document["urls"][0]["reason"]


def test_cancel_says_how_many_queued_urls_it_failed(store):
    with store.transaction():
        assert len(store.claim(1)) == 1
        assert store.cancel("job-1", "") == 2  # the URL in flight finishes
        assert store.cancel("job-1", "") == 0  # nothing left to cancel
        assert store.cancel("job-2", "") is None  # no such job


def test_a_full_sqlite_store_is_full_not_unreachable(tmp_path):
    """SQLITE_FULL, as SQLite says it of a full disk; here the store's page limit is the
    disk (a real full disk: tests/system/test_full_disk.py)."""
    store = open_store(StorageConfig(path=str(tmp_path / "s.sqlite3")), "me")
    try:
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
        store._writer.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreFull, match="is full: database or disk is full"), \
                store.transaction():
            store.create_job("job-1", [f"https://a.example/{n}.png" for n in range(1000)])
        store._writer.execute(f"PRAGMA max_page_count = {pages * 100}")
        with store.transaction():  # room again: nothing was left behind
            store.create_job("job-1", URLS)
        assert job(store)["uploaded"]["pending"] == URLS
    finally:
        store.close()


def test_a_full_postgresql_disk_is_store_full_not_unreachable():
    """PostgreSQL's SQLSTATE 53100 (no room on its disk), raised where the driver's errors
    are translated: filling a server's disk here would take a server of its own."""
    with pytest.raises(StoreFull, match="PostgreSQL is full: could not extend file"), \
            postgres_store.driver_errors():
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")
    with pytest.raises(StoreUnavailable) as unreachable, postgres_store.driver_errors():
        raise psycopg.OperationalError("connection refused")
    assert not isinstance(unreachable.value, StoreFull)


def test_a_pool_tries_to_reconnect_at_least_every_few_seconds():
    """psycopg_pool doubles the wait between reconnection attempts without end: after a
    35 s outage it came back up to 32 s after the database. Ours is capped. The pool runs
    for real against a closed port; its waits are recorded, and shortened so the test is
    quick."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    delays = []

    class Recorded(postgres_store.Pool):
        def schedule_task(self, task, delay):
            if getattr(task, "attempt", None) is None:  # not a reconnection: as it comes
                return super().schedule_task(task, delay)
            delays.append(delay)
            super().schedule_task(task, 0.01)

    pool = Recorded(f"postgresql://postgres@127.0.0.1:{port}/none",
                    kwargs=postgres_store.connection_kwargs("test"), min_size=1, max_size=1,
                    reconnect_timeout=3600, open=True)
    try:
        deadline = time.monotonic() + 60
        while len(delays) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pool.close(timeout=5)
    assert len(delays) >= 7, delays  # 1, 2, 4, 8, 16, 32, 64 s uncapped
    assert max(delays) <= postgres_store.RECONNECT_MAX_SECONDS, delays


def test_the_embedded_store_admits_one_instance(tmp_path):
    storage = StorageConfig(path=str(tmp_path / "s.sqlite3"))
    first = open_store(storage, "first")
    try:
        with pytest.raises(StoreInUse, match="in use by another instance"):
            open_store(storage, "second")
    finally:
        first.close()
    open_store(storage, "third").close()  # the lock went with the first


@pytest.fixture
def shared_store(postgres):
    """``shared_store(instance)``: instances of one fresh PostgreSQL store."""
    storage = StorageConfig(url=postgres.create_database(), lease_seconds=3)
    stores = []

    def open_one(instance):
        stores.append(open_store(storage, instance))
        return stores[-1]

    yield open_one
    for store in stores:
        store.close()


def test_claims_of_concurrent_instances_never_overlap(shared_store):
    first, second = shared_store("one"), shared_store("two")
    with first.transaction():
        for key in ("a", "b", "c"):  # three keys: each claim reads each key's first few
            first.create_job(f"big-{key}", [f"https://{key}.example/{n}.png" for n in range(100)],
                             account=key)
    taken = {"one": [], "two": []}

    def drain(store):
        while True:
            with store.transaction():
                tasks = store.claim(7)
            if not tasks:
                return
            taken[store.instance] += [t.url_id for t in tasks]

    threads = [threading.Thread(target=drain, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = taken["one"] + taken["two"]
    assert len(everything) == len(set(everything)) == 300
    assert taken["one"] and taken["two"]


def test_a_dead_instances_urls_are_reaped_and_its_late_results_refused(shared_store):
    dead, alive = shared_store("dead"), shared_store("alive")
    with dead.transaction():
        dead.create_job("job-1", URLS)
        lost = dead.claim(3)
    alive.lease_seconds = 60
    with alive.transaction():
        assert alive.reap(max_attempts=5) == (0, [])  # the lease still holds
    alive.lease_seconds = 0
    with alive.transaction():
        assert alive.reap(max_attempts=5) == (3, [])
        retaken = alive.claim(3)
    with dead.transaction():  # the dead one comes back with a result: refused
        assert not dead.finish(lost[0], jobs.COMPLETE, attempts=1, link="https://i.example/late")
        assert not dead.heartbeat()  # and it learns it had been declared dead
    with alive.transaction():
        assert all(alive.finish(t, jobs.COMPLETE, attempts=2, link=f"https://i.example/{t.url_id}")
                   for t in retaken)
    document = job(alive)
    assert document["status"] == "complete"
    assert all(u["attempts"] == 2 for u in document["urls"])
    assert "https://i.example/late" not in document["uploaded"]["complete"]


def test_a_turns_waits_and_results_are_one_statement_on_postgresql(shared_store):
    """The waits noted in a transaction ride on its batch of results (a wait of a URL of
    the batch is left out: its finish clears it); noted without results, they are
    written at the commit."""
    store = shared_store("me")
    with store.transaction():
        store.create_job("job-1", URLS)
        first, second, third = store.claim(3)
    statements = []
    execute = store._execute
    store._execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)
    with store.transaction():
        store.set_waiting_many([(first, 1_800_000_000.0, "paced by imgur.rate_limit"),
                                (second, 1_800_000_000.0, "paced by imgur.rate_limit")])
        assert store.finish_many([(first, jobs.COMPLETE, dict(
            attempts=1, link="https://i.example/a.png"))]) == [True]
    assert len(statements) == 1
    with store.transaction():
        store.set_waiting_many([(third, 1_800_000_001.0, "Imgur's user budget is down")])
    assert len(statements) == 2
    store._execute = execute
    assert [(u["state"], u["waiting"] and u["waiting"]["reason"]) for u in job(store)["urls"]] \
        == [(jobs.COMPLETE, None), (jobs.IN_FLIGHT, "paced by imgur.rate_limit"),
            (jobs.IN_FLIGHT, "Imgur's user budget is down")]


def test_a_reap_with_nothing_to_take_back_is_one_statement(shared_store):
    """Every few seconds each instance reaps; in a healthy cluster one statement finds
    that nobody died and no URL has a dead owner. An owner gone without a trace (its row
    deleted, its URLs still in flight) is still found."""
    first, second = shared_store("first"), shared_store("second")
    with first.transaction():
        first.create_job("job-1", URLS)
        held = first.claim(2)
    statements = []
    execute = second._execute
    second._execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)
    with second.transaction():
        assert second.reap(max_attempts=5) == (0, [])
    assert len(statements) == 1
    second._execute = execute
    with psycopg.connect(second.url, autocommit=True) as conn:
        conn.execute("DELETE FROM instances WHERE id = 'first'")
    with second.transaction():
        assert second.reap(max_attempts=5) == (len(held), [])
    assert [u["state"] for u in job(second)["urls"]] == [jobs.QUEUED] * 3


def test_the_dedup_lookup_reads_its_index_not_every_link_of_the_account(postgres):
    """It did not: in a young store (indexes without statistics yet) PostgreSQL planned it
    on the listing's index, reading every link of the account for every new image."""
    import psycopg

    database = postgres.create_database()
    open_store(StorageConfig(url=database), "me").close()  # the schema, migrated
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO links (link, sha256, host, created, account, image_id)"
                     " SELECT 'https://i.example/' || n, encode(sha256(n::text::bytea), 'hex'),"
                     " 'imgur', 0, '', 'i' || n FROM generate_series(1, 3000) AS n")
        conn.execute("SET plan_cache_mode = force_generic_plan")  # what a prepared query gets
        conn.execute("PREPARE oldest(text, text, text) AS "
                     + OLDEST_LINK.replace("?", "${}").format(1, 2, 3))
        for step in ("VACUUM links", "ANALYZE links"):  # young (no statistics), then grown up
            conn.execute(step)
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS) EXECUTE oldest('new bytes', 'imgur', '')"))
            assert "Index Cond: ((sha256 = $1) AND (host = $2) AND (account = $3))" in plan, plan
            assert "Rows Removed by Filter" not in plan, plan


def test_queue_depth_counts_the_queue_and_ages_its_oldest(store):
    count, oldest = store.queue_depth()
    assert count == 3 and 0 <= oldest < 60
    time.sleep(0.2)
    assert store.queue_depth()[1] >= oldest + 0.15  # it keeps ageing while it waits
    with store.transaction():
        store.claim(3)
    assert store.queue_depth() == (0, 0.0)


def sql_of(storage: dict):
    """``run(sql)`` -> rows, on the raw database of ``storage`` (SQLite or PostgreSQL)."""
    if "url" in storage:
        import psycopg

        def run(sql):
            with psycopg.connect(storage["url"], autocommit=True) as conn:
                cursor = conn.execute(sql)
                return cursor.fetchall() if cursor.description else []
    else:
        import sqlite3

        def run(sql):
            conn = sqlite3.connect(storage["path"])
            try:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
    return run


def test_each_migration_has_a_version_of_its_own():
    versions = [migration.version for migration in schema.MIGRATIONS]
    assert len(set(versions)) == len(versions)


BEFORE_FAIRNESS = ("DROP INDEX urls_turns", "ALTER TABLE urls DROP COLUMN turn",
                   "ALTER TABLE urls DROP COLUMN account")  # as before migration 8


def test_a_store_made_before_the_queue_and_dedup_indexes_gets_both(storage, backend):
    """Two migrations were both numbered 4: a store made between them (job control in, the
    dedup index not yet) never got the second."""
    run = sql_of(storage)
    open_store(StorageConfig(**storage), "me").close()
    for statement in (*BEFORE_FAIRNESS,
                      "DROP INDEX urls_queued", "DROP INDEX links_for_dedup",  # as at version 4
                      "CREATE INDEX urls_queued ON urls(id) WHERE state = 'queued'",
                      "CREATE INDEX links_for_dedup ON links(sha256, host) WHERE deleted IS NULL",
                      "UPDATE schema_version SET version = 4"):
        run(statement)

    open_store(StorageConfig(**storage), "me").close()
    assert run("SELECT version FROM schema_version") == [(schema.LATEST,)]
    definitions = run("SELECT sql FROM sqlite_master WHERE name IN ('urls_queued',"
                      " 'links_for_dedup') ORDER BY name" if backend == "sqlite" else
                      "SELECT indexdef FROM pg_indexes WHERE indexname IN ('urls_queued',"
                      " 'links_for_dedup') ORDER BY indexname")
    assert [" ".join(d.split()).replace("public.", "") for (d,) in definitions] == [
        "CREATE INDEX links_for_dedup ON links" + (
            "(sha256, host, account, id) WHERE deleted IS NULL" if backend == "sqlite" else
            " USING btree (sha256, host, account, id) WHERE (deleted IS NULL)"),
        "CREATE INDEX urls_queued ON urls" + (
            "(suspect, id) WHERE state = 'queued'" if backend == "sqlite" else
            " USING btree (suspect, id) WHERE (state = 'queued'::text)")]


def test_a_turns_look_at_the_queue_reads_its_index_however_long_the_queue(postgres, tmp_path):
    """It did not: looking for a waiting suspect read every queued URL (20 ms a turn with
    100,000 queued, on both backends), and a young PostgreSQL store (no statistics yet)
    sorted the whole queue for each claim. Plans for the plain URLs and the suspects."""
    import psycopg
    import sqlite3

    database = postgres.create_database()
    open_store(StorageConfig(url=database), "me").close()
    path = tmp_path / "store.sqlite3"
    open_store(StorageConfig(path=str(path)), "me").close()
    urls = "SELECT 'j', 'https://a.example/' || n, 'queued' FROM generate_series(1, 5000) AS n"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (id, created, status, remaining) VALUES ('j', 0, 'pending', 5000)")
        conn.execute("INSERT INTO urls (job_id, url, state) " + urls)
        conn.execute("SET plan_cache_mode = force_generic_plan")  # what a prepared query gets
        conn.execute("PREPARE first(int, int) AS " + QUEUED_FIRST.replace("?", "${}").format(1, 2))
        for suspect in (0, 1):
            plan = "\n".join(row[0] for row in conn.execute(
                f"EXPLAIN (ANALYZE) EXECUTE first({suspect}, 16)"))
            assert "Index Cond: (suspect = $1)" in plan, plan
            assert "Sort" not in plan and "Rows Removed by Filter" not in plan, plan
    conn = sqlite3.connect(path)
    try:
        for suspect in (0, 1):
            plan = conn.execute("EXPLAIN QUERY PLAN " + QUEUED_FIRST, (suspect, 16)).fetchall()
            assert [row[-1] for row in plan] == [
                "SEARCH urls USING INDEX urls_queued (suspect=?)"], plan
    finally:
        conn.close()


def finish_all(store, finishes):
    """Finish URLs together (PostgreSQL: as one batch) and each alone (one by one)."""
    with store.transaction():
        return store.finish_many(finishes)


def image_ids(store, job_id):
    return [u["image_id"] for u in job(store, job_id)["urls"]]


def test_one_link_held_by_two_accounts_is_each_ones_own(store):
    """S3 names an object by its bytes: two accounts uploading one image get one link,
    each with its own image id, listing and deletion."""
    same = "https://s3.example/pics/ab12.png"
    with store.transaction():
        store.create_job("a-job", ["https://a.example/x.png", "https://a.example/y.png"],
                         account="alice")
        store.create_job("b-job", ["https://b.example/x.png"], account="bob")
        tasks = store.claim(10)
    by_url = {task.url: task for task in tasks}
    alice, bob = by_url["https://a.example/x.png"], by_url["https://b.example/x.png"]
    finish_all(store, [(alice, jobs.COMPLETE, dict(attempts=1, link=same, sha256="ab", host="s3",
                                                  deletehash="ab12.png")),
                       (bob, jobs.COMPLETE, dict(attempts=1, link=same, sha256="ab", host="s3",
                                                deletehash="ab12.png"))])
    (alice_id, _), (bob_id,) = image_ids(store, "a-job"), image_ids(store, "b-job")
    assert alice_id and bob_id and alice_id != bob_id
    assert store.image(alice_id, "alice")[0] == store.image(bob_id, "bob")[0] == same
    assert store.image(alice_id, "bob") is None
    for account in ("alice", "bob"):
        with store.links(10, account) as pages:
            assert list(pages) == [[same]]
    with store.transaction():
        assert store.delete_image(bob_id, "bob") == (same, "s3", True)  # Alice holds it too
        assert store.claim_effects(10, 60) == []  # so its bytes stay at the host
    assert store.link_live(same)
    assert job(store, "a-job")["urls"][0]["deleted"] is False
    assert job(store, "b-job")["urls"][0]["deleted"] is True
    with store.transaction():
        assert store.delete_image(alice_id, "alice") == (same, "s3", False)  # the last one
        (effect,) = store.claim_effects(10, 60)
    assert (effect.kind, effect.target) == ("host_delete", "ab12.png")
    assert not store.link_live(same)


def test_bytes_uploaded_again_after_their_deletion_are_live_again(store):
    """The same bytes to S3 after their link was deleted: the same link, live again under
    a new image id, listed as the newest; a reused link keeps its row."""
    same, other = "https://s3.example/pics/ab12.png", "https://s3.example/pics/cd34.png"
    with store.transaction():
        first, second, third = store.claim(3)
    finish_all(store, [(first, jobs.COMPLETE, dict(attempts=1, link=same, sha256="ab",
                                                   host="s3", deletehash="ab12.png")),
                       (second, jobs.COMPLETE, dict(attempts=1, link=other, sha256="cd",
                                                    host="s3", deletehash="cd34.png"))])
    old_id = image_ids(store, "job-1")[0]
    with store.transaction():
        assert store.delete_image(old_id, "") == (same, "s3", False)
    with store.transaction():
        store.create_job("again", ["https://a.example/again.png", "https://a.example/more.png"])
        tasks = store.claim(2)
    finish_all(store, [(tasks[0], jobs.COMPLETE, dict(attempts=1, link=same, sha256="ab",
                                                      host="s3", deletehash="ab12.png")),
                       (tasks[1], jobs.COMPLETE, dict(attempts=1, link=other, sha256="cd",
                                                      host="s3", reused=True))])
    new_id = image_ids(store, "again")[0]
    assert new_id and new_id != old_id
    assert store.image(old_id, "") is None and store.image(new_id, "")[0] == same
    assert job(store, "job-1")["urls"][0]["deleted"] is False  # the link lives again
    with store.links(10) as pages:
        assert list(pages) == [[other, same]]
    assert image_ids(store, "again")[1] == image_ids(store, "job-1")[1]  # reused: one row


def test_links_made_before_they_were_per_account_keep_their_rows_and_ids(storage, backend):
    """Migration 7 makes the links table anew (SQLite cannot drop a column's UNIQUE)."""
    run = sql_of(storage)
    store = open_store(StorageConfig(**storage), "me")
    with store.transaction():
        store.create_job("old", URLS[:2])
        tasks = store.claim(2)
        for n, task in enumerate(tasks):
            store.finish(task, jobs.COMPLETE, attempts=1, link=f"https://i.example/{n}.png",
                         sha256=f"s{n}", host="local", deletehash=f"{n}.png")
    store.close()
    before = run("SELECT id, link, sha256, host, created, account, image_id, deletehash,"
                 " deleted FROM links ORDER BY id")
    for statement in (*BEFORE_FAIRNESS, "UPDATE schema_version SET version = 6"):
        run(statement)  # as a store made before it
    open_store(StorageConfig(**storage), "me").close()
    assert run("SELECT version FROM schema_version") == [(schema.LATEST,)]
    assert run("SELECT id, link, sha256, host, created, account, image_id, deletehash,"
               " deleted FROM links ORDER BY id") == before
    store = open_store(StorageConfig(**storage), "me")
    with store.transaction():
        store.create_job("new", ["https://a.example/new.png"], account="someone")
        (task,) = store.claim(1)
        store.finish(task, jobs.COMPLETE, attempts=1, link="https://i.example/0.png",
                     sha256="s0", host="local")  # a link the table had, for another account
    store.close()
    rows = run("SELECT id, account FROM links ORDER BY id")
    assert rows[:2] == [(before[0][0], ""), (before[1][0], "")]
    assert rows[2][0] > before[1][0] and rows[2][1] == "someone"  # a second row, a new id


def test_a_store_from_before_fairness_gets_keys_and_turns_for_its_queue(storage, backend):
    """Migration 8 copies each job's account to its URLs and numbers its queued URLs in
    their job's order, so the claim is fair from the first turn after the upgrade."""
    run = sql_of(storage)
    store = open_store(StorageConfig(**storage), "me")
    make_jobs(store, ("a", "key-a", 4), ("b", "key-b", 2))
    with store.transaction():
        store.claim(1)  # a/0: in flight across the upgrade
    store.close()
    for statement in (*BEFORE_FAIRNESS, "UPDATE schema_version SET version = 7"):
        run(statement)
    store = open_store(StorageConfig(**storage), "me")
    try:
        assert run("SELECT account, turn FROM urls ORDER BY id") == [
            ("key-a", 0), ("key-a", 0), ("key-a", 1), ("key-a", 2), ("key-b", 0), ("key-b", 1)]
        with store.transaction():
            tasks = store.claim(2)  # key-b has none in flight: its first, then key-a's next
        assert {(t.url, t.account) for t in tasks} == {("https://b.example/0.png", "key-b"),
                                                       ("https://a.example/1.png", "key-a")}
    finally:
        store.close()


def many_keys(store):
    """42 keys more with a few queued URLs each; some in flight, as under load."""
    make_jobs(store, ("b", "key-b", 500), ("c", "key-c", 500),
              *((f"small-{n}", f"key-{n:02}", 20) for n in range(40)))
    with store.transaction():
        store.claim(20)


# The queries that read the queue by key: the claim, a new job's place in its key's
# rotation, a key's count for its cap; with the parameters of a claim of 16.
BY_KEY = {"claim": sql.FAIR_CLAIM, "head": sql.ROTATION_HEAD, "count": sql.KEY_QUEUED}
ARGS = {"head": ("key-a",), "count": ("key-b", 1000, "key-b")}


def test_postgres_reads_a_few_urls_of_each_key_however_long_the_queue(postgres):
    """With 100,000 queued for one key, then 42 keys more, no step of the claim's plan
    handles more than a claim's worth of rows and it locks little more than it takes, in a
    young store or an analysed one, planned for its parameters or generic (what a prepared
    statement may get), and it is costed low enough not to be compiled (it was not: JIT
    took 150 ms); the head and the count read urls_turns too."""
    import re
    import psycopg

    store = open_store(StorageConfig(url=postgres.create_database()), "me")
    try:
        args = {**ARGS, "claim": (*store._fair_claim_params(16), "me", 1)}
        with psycopg.connect(store.url, autocommit=True) as conn:
            for name, query in BY_KEY.items():
                numbered = re.sub(r"%s", lambda m, n=iter(range(1, 9)): f"${next(n)}",
                                  store.q(query))
                types = ", ".join("text" if isinstance(a, str) else "bigint" for a in args[name])
                conn.execute(f"PREPARE {name}({types}) AS {numbered}")

            def plans():
                """{(step, mode, query): its plan}, as the store is and once analysed."""
                found = {}
                for step in ("as it is", "ANALYZE urls"):
                    if step != "as it is":
                        conn.execute(step)
                    for mode in ("force_custom_plan", "force_generic_plan"):
                        conn.execute(f"SET plan_cache_mode = {mode}")
                        for name in BY_KEY:
                            with conn.transaction(force_rollback=True):
                                found[step, mode, name] = "\n".join(row[0] for row in conn.execute(
                                    f"EXPLAIN (ANALYZE) EXECUTE {name}"
                                    f"({', '.join(map(repr, args[name]))})"))
                return found

            make_jobs(store, ("a", "key-a", 100_000))  # young: no statistics yet
            with store.transaction():
                store.claim(20)
            for where, plan in plans().items():  # one key's long queue: JIT's trap
                assert "JIT" not in plan, (where, plan)
            many_keys(store)
            for where, plan in plans().items():
                assert "urls_turns" in plan and "Seq Scan on urls" not in plan, (where, plan)
                assert "JIT" not in plan, (where, plan)
                if where[2] == "claim":
                    rows = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
                    assert "urls_queued" not in plan and max(rows) <= 60, (where, plan)
                    locked = [int(rows) * int(loops) for rows, loops in re.findall(
                        r"LockRows .* rows=(\d+) loops=(\d+)", plan)]
                    assert 16 <= sum(locked) <= 32, (where, plan)  # not 16 of each of 43 keys
    finally:
        store.close()


def test_sqlite_reads_a_few_urls_of_each_key_however_long_the_queue(tmp_path):
    """Every read of the queue by key goes through urls_turns (or in-flight URLs, or by
    id), young store or analysed: without statistics SQLite had taken urls_queued to find
    the keys, reading the whole queue."""
    import re
    import sqlite3

    store = open_store(StorageConfig(path=str(tmp_path / "store.sqlite3")), "me")
    conn = sqlite3.connect(store.path)
    try:
        make_jobs(store, ("a", "key-a", 5000))
        many_keys(store)
        args = {**ARGS, "claim": (*store._fair_claim_params(16), "me", 1)}
        for step in ("young", "ANALYZE"):
            if step != "young":
                conn.execute(step)
            for name, query in BY_KEY.items():
                plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + store.q(query),
                                                        args[name])]
                reads = [line for line in plan if re.match(r"(SEARCH|SCAN) (urls|u|h)\b", line)]
                assert any("urls_turns" in line for line in reads), plan
                assert all(re.search(r"USING (INDEX urls_turns|INTEGER PRIMARY KEY|INDEX "
                                     r"urls_in_flight|INDEX urls_queued \(suspect=\?\)$)", line)
                           for line in reads), plan
                if name != "count":  # (its suspects' part reads urls_queued: a handful)
                    assert not any("urls_queued" in line for line in reads), plan
    finally:
        conn.close()
        store.close()


def test_a_claim_begins_its_jobs_in_the_same_statement_on_postgresql(storage, backend):
    """A claim marked its URLs' pending jobs begun in a statement of its own: with a pace,
    one a URL. PostgreSQL does it in the claim's."""
    store = open_store(StorageConfig(**storage), "me")
    with store.transaction():
        store.create_job("job-1", URLS)
    statements = []
    execute = store._execute
    store._execute = lambda sql, params=(): statements.append(sql) or execute(sql, params)
    with store.transaction():
        assert len(store.claim(1)) == 1
    store._execute = execute
    assert job(store)["status"] == jobs.JOB_IN_PROGRESS
    assert len(statements) == (1 if backend == "postgresql" else 2)
    store.close()
