"""The cluster's shared state (``backends.postgres.coordinator``). Dedup claims: a batch answers as
claims made one after the other would, its claims and their lookups in one statement; a
claim that waited for a commit sees its link; publishing never waits; a dead instance's
published links are reused. The gate: a grant given back is void;
unpaced, tickets held ahead count in flight and a pause in any instance voids them (heard
by the listening connection of each instance's store); paced, a moment is confirmed
without a trip until a pause is heard."""
import json
import threading
import time

import psycopg
import pytest

from uploader.config import StorageConfig
from uploader.backends.postgres.coordinator import PgCoordinator
from uploader.backends import open_store
from uploader.backends.postgres.store import Database

from tests.support import wait_until


@pytest.fixture
def database(postgres):
    url = postgres.create_database()
    open_store(StorageConfig(url=url), "me").close()  # the schema, migrated
    return url


def coordinator(url, instance):
    return PgCoordinator(Database(url), instance, lease_seconds=15, dedup_host="imgur")


def claims_held(url):
    with psycopg.connect(url) as conn:
        return sorted(conn.execute(
            "SELECT sha256, account, instance, thread, link FROM dedup_claims").fetchall())


def test_a_batch_of_claims_answers_as_claims_one_after_another(database):
    me, other = coordinator(database, "me"), coordinator(database, "other")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO links (link, sha256, host, created, account, image_id)"
                     " VALUES ('https://i.example/old', 'old', 'imgur', 0, '', 'i1')")
    assert other.claim_many([("theirs", "", (1, 1, 7)), ("published", "", (1, 1, 8))]) \
        == [("upload", None)] * 2
    other.end_many([("published", "", "https://i.example/p", None, (1, 1, 8), False)])

    assert me.claim_many([
        ("new", "", (0, 1, 1)),
        ("new", "", (0, 1, 2)),  # the same bytes, asked right after: the first one uploads
        ("old", "", (0, 1, 3)),  # a committed link
        ("theirs", "", (0, 1, 4)),  # another instance uploads them
        ("published", "", (0, 1, 5)),  # another instance has uploaded them: not committed yet
        ("new", "elsewhere", (0, 1, 6)),  # the same bytes in another account are others
    ]) == [("upload", None), ("wait", None), ("reuse", "https://i.example/old"),
           ("wait", None), ("reuse", "https://i.example/p"), ("upload", None)]
    assert claims_held(database) == [
        ("new", "", "me", 1, None), ("new", "elsewhere", "me", 6, None),
        ("published", "", "other", 8, "https://i.example/p"), ("theirs", "", "other", 7, None)]

    assert me.claim_many([("new", "", (0, 1, 1))]) == [("upload", None)]  # asked again: ours
    me.end_many([("new", "", None, None, (0, 1, 1), False),  # released: an upload failed
                 ("new", "elsewhere", "https://i.example/e", None, (0, 1, 6), False)])
    assert me.claim_many([("new", "", (0, 1, 2)), ("new", "elsewhere", (0, 1, 3))]) \
        == [("upload", None), ("reuse", "https://i.example/e")]


def test_publishing_never_waits_for_a_claim_a_commit_is_deleting(database):
    """A result's commit deletes its bytes' claim, with others, in one transaction. A batch
    that waited there for one row while holding another could deadlock with it (it did,
    in the cluster bench): publishing skips the claim, whose link is being committed."""
    me = coordinator(database, "me")
    assert me.claim_many([("a", "", (0, 1, 1)), ("b", "", (0, 1, 2))]) == [("upload", None)] * 2
    with psycopg.connect(database) as committing:
        committing.execute("DELETE FROM dedup_claims WHERE sha256 = 'b'")  # its lock held
        publishing = threading.Thread(target=me.end_many, args=([
            ("a", "", "https://i.example/a", None, (0, 1, 1), False),
            ("b", "", "https://i.example/b", None, (0, 1, 2), False)],))
        publishing.start()
        publishing.join(timeout=10)
        assert not publishing.is_alive()
        committing.commit()
    assert claims_held(database) == [("a", "", "me", 1, "https://i.example/a")]


def waiting_for_a_lock(url) -> bool:
    """Some connection of this database waits for a row lock on a dedup claim."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO dedup_claims%'"
        ).fetchone()[0] > 0


def test_a_claim_that_waited_for_a_commit_sees_the_link_it_committed(database):
    """A result's commit adds its link and deletes its bytes' claim in one transaction. A
    claim of the same bytes made meanwhile waits for that row, then wins it: the lookup
    in the claim's statement must see the link committed while it waited (a snapshot
    taken after the claim's row is in), or the bytes would go up twice."""
    me, other = coordinator(database, "me"), coordinator(database, "other")
    assert other.claim_many([("b", "", (1, 1, 7))]) == [("upload", None)]
    answers = []
    with psycopg.connect(database) as committing:
        committing.execute("INSERT INTO links (link, sha256, host, created, account, image_id)"
                           " VALUES ('https://i.example/b', 'b', 'imgur', 0, '', 'i1')")
        committing.execute("DELETE FROM dedup_claims WHERE sha256 = 'b'")
        claiming = threading.Thread(
            target=lambda: answers.extend(me.claim_many([("b", "", (0, 1, 1))])))
        claiming.start()
        wait_until(lambda: waiting_for_a_lock(database))
        committing.commit()
    claiming.join(timeout=10)
    assert answers == [("reuse", "https://i.example/b")]
    assert claims_held(database) == []  # the claim won is released: its link is committed


def test_a_dead_instances_published_links_outlive_it(database):
    """Killed after an upload but before its result was committed, an instance leaves the
    link published: whoever takes its URL back reuses it instead of uploading again."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO instances (id, host, pid, started, heartbeat)"
                     " VALUES ('dead', 'elsewhere', 1, 0, 0)")  # its lease long expired
    dead = coordinator(database, "dead")
    assert dead.claim_many([("done", "", (0, 1, 1)), ("midway", "", (0, 1, 2))]) \
        == [("upload", None)] * 2
    dead.end_many([("done", "", "https://i.example/done", None, (0, 1, 1), False)])
    store = open_store(StorageConfig(url=database, lease_seconds=3), "alive")
    with store.transaction():
        store.reap(max_attempts=5)
    store.close()
    assert claims_held(database) == [("done", "", "dead", 1, "https://i.example/done")]
    assert coordinator(database, "alive").claim_many(
        [("done", "", (0, 1, 3)), ("midway", "", (0, 1, 4))]) \
        == [("reuse", "https://i.example/done"), ("upload", None)]


def test_a_grant_given_back_no_longer_counts_and_teaches_nothing(database):
    store = open_store(StorageConfig(url=database), "me")  # live: its grants count
    try:
        gate = PgCoordinator(Database(database), "me", lease_seconds=15,  # budgets: probed
                             gate={"rate": 0, "burst": 1, "costs": {"user": 10}})
        owner = (0, 1)
        assert gate.reserve(owner)[0]  # the probe
        assert not gate.reserve(owner)[0]
        gate.withdraw(owner)  # given back unused: no answer came
        assert gate.reserve(owner)[0]  # so another probe goes, and alone
        assert not gate.reserve(owner)[0]
    finally:
        store.close()


def gate_row(url):
    with psycopg.connect(url) as conn:
        version, state = conn.execute("SELECT version, state FROM gate WHERE id = 1").fetchone()
    return version, json.loads(state)["grants"]


def test_unpaced_tickets_count_in_the_row_and_a_pause_anywhere_voids_them(database):
    stores = [open_store(StorageConfig(url=database), name) for name in ("me", "other")]
    try:
        unpaced = {"rate": 0, "burst": 1}
        me = PgCoordinator(Database(database), "me", lease_seconds=15, gate=unpaced, tickets=4)
        other = PgCoordinator(Database(database), "other", lease_seconds=15, gate=unpaced,
                              tickets=4)
        me._tickets.tell_seconds = 3600  # unused tickets kept: only a pause voids them here
        owner = (0, 1)
        me.learn({})  # the budgets were asked for at start: no probe
        assert me.reserve_many(1, owner)[0][0]  # nobody listens yet: none taken ahead
        stores[0].listen(on_work=lambda: None, on_pause=lambda: me.heard(True),  # my instance's
                         on_state=me.heard)
        wait_until(lambda: me._tickets.listening)
        assert all(granted for granted, _, _ in me.reserve_many(2, owner))
        version, grants = gate_row(database)
        assert grants == {"me/0/1": 1 + 2 + 4}  # four held ahead count as in flight
        assert all(granted for granted, _, _ in me.reserve_many(4, owner))
        assert gate_row(database)[0] == version  # handed out without a compare-and-set

        assert all(granted for granted, _, _ in me.reserve_many(2, owner))  # four more held
        other.pause(30, "Imgur asked us to slow down")  # another instance saw a 429
        wait_until(lambda: me._tickets.held(owner) == 0)  # heard: voided
        granted, _, why = me.reserve_many(1, owner)[0]
        assert not granted and why == "Imgur asked us to slow down"
        assert gate_row(database)[1] == {"me/0/1": 1 + 2 + 4 + 2}  # the four given back
    finally:
        me.close()
        for store in stores:
            store.close()


def test_paced_no_tickets_are_taken_and_a_pause_anywhere_reaches_every_confirmation(database):
    """Paced, moments are confirmed without a trip while no pause can have begun; a pause
    set by another instance, once heard, sends the confirmation to the gate, which refuses."""
    stores = [open_store(StorageConfig(url=database), name) for name in ("me", "other")]
    try:
        paced = {"rate": 20, "burst": 1}
        me = PgCoordinator(Database(database), "me", lease_seconds=15, gate=paced, tickets=4)
        other = PgCoordinator(Database(database), "other", lease_seconds=15, gate=paced)
        owner = (0, 1)
        stores[0].listen(on_work=lambda: None, on_pause=lambda: me.heard(True),  # my instance's
                         on_state=me.heard)
        wait_until(lambda: me._tickets.listening)
        answers = me.reserve_many(3, owner)
        assert all(granted for granted, _, _ in answers)
        assert me._tickets.held(owner) == 0 and gate_row(database)[1] == {"me/0/1": 3}
        version = gate_row(database)[0]
        time.sleep(max(0.0, answers[1][1] - time.monotonic()))
        assert me.confirm(owner)[0]  # its moment came: confirmed here
        assert gate_row(database)[0] == version  # without a compare-and-set

        other.pause(30, "Imgur asked us to slow down")  # another instance saw a 429
        wait_until(lambda: me._tickets._voided > 1)  # heard
        time.sleep(max(0.0, answers[2][1] - time.monotonic()))
        granted, _, why = me.confirm(owner)  # asked the gate: withdrawn
        assert not granted and why == "Imgur asked us to slow down"
        assert gate_row(database)[1] == {"me/0/1": 2}
    finally:
        me.close()
        for store in stores:
            store.close()


@pytest.fixture
def statements(monkeypatch):
    """Every statement this process sends to PostgreSQL from now on, in order."""
    sent = []
    execute = psycopg.Connection.execute
    monkeypatch.setattr(psycopg.Connection, "execute", lambda conn, query, params=None, **kw:
                        sent.append(query) or execute(conn, query, params, **kw))
    return sent


def test_a_gate_change_is_one_statement_and_processes_still_take_turns(database, statements):
    """A change read the row, then wrote it: two statements, 2 of a cluster's 6.8 per URL
    (eight instances). Now it writes at once from what its last statement saw, and what
    another process wrote meanwhile makes it try again from the row as it is."""
    store = open_store(StorageConfig(url=database), "me")  # live: its grants count
    try:
        unpaced = {"rate": 0, "burst": 1}
        one, two = (PgCoordinator(Database(database), "me", lease_seconds=15, gate=unpaced)
                    for _ in range(2))  # two worker processes of one instance
        one.learn({})  # the first look: read, then write
        statements.clear()
        assert one.reserve((0, 1))[0] and one.reserve((0, 1))[0]
        assert len(statements) == 2  # one each
        assert two.reserve((1, 1))[0]  # its first look
        statements.clear()
        assert one.reserve((0, 1))[0]  # from a row another changed since: tried again
        assert len(statements) == 2
        assert gate_row(database)[1] == {"me/0/1": 3, "me/1/1": 1}  # every grant counted
    finally:
        store.close()


def test_a_change_that_keeps_losing_is_made_with_the_row_locked(database, statements):
    """Each try of a compare-and-set is a statement; with many processes at once (and a
    busy machine) tries lose on and on. After two losses the row is locked instead."""
    store = open_store(StorageConfig(url=database), "me")  # live: its grants count
    try:
        unpaced = {"rate": 0, "burst": 1}
        one, two = (PgCoordinator(Database(database, shared_connections=n), "me",
                                  lease_seconds=15, gate=unpaced)
                    for n in (1, 2))  # two worker processes of one instance (a pool each)
        one.learn({})
        tries = []

        def change(state, grants, now):
            tries.append(len(statements))
            if len(tries) <= 2:  # another process writes meanwhile: this try loses
                assert two.reserve((1, 1))[0]
            one._count(grants, (0, 1), 1)

        statements.clear()
        one.run(lambda conn: one._gate(conn, change))
        assert len(tries) == 3
        assert any("FOR UPDATE" in str(query) for query in statements[tries[2] - 1:])
        assert gate_row(database)[1] == {"me/0/1": 1, "me/1/1": 2}  # every grant counted
    finally:
        store.close()
