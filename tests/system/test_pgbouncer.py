"""The store behind PgBouncer in transaction pooling mode: instances share its server
connections, so nothing may live in a session beyond its transaction. Found at start:
nothing is prepared on the server, the writer's settings are ``SET LOCAL`` (not the
session's, as on a direct connection), and LISTEN, which a transaction pooler never
delivers, is done on ``storage.listen_url`` or not at all. (The cluster drills,
``test_cluster``, run whole instances through PgBouncer.)"""
import logging
import threading

import psycopg
import pytest

from testbed.pgbouncer_server import PgBouncer
from uploader import jobs
from uploader.config import StorageConfig
from uploader.backends import open_store
from uploader.backends.postgres.store import sessions_last

from tests.support import wait_until


@pytest.fixture
def one_server_connection(postgres):
    """A database through a PgBouncer of our own with ONE server connection: every client
    gets that same session, transaction after transaction."""
    with PgBouncer(postgres, pool_size=1) as bouncer:
        yield bouncer.behind(postgres.create_database())


def test_instances_through_a_transaction_pooler_share_its_sessions(one_server_connection,
                                                                   caplog):
    """The reported failure: a second instance died with DuplicatePreparedStatement
    "_pg3_0", its hot statements prepared (after five runs) where the first instance's
    were already: the pooler had given both the same server connection."""
    config = StorageConfig(url=one_server_connection, lease_seconds=3)
    with caplog.at_level(logging.WARNING):
        first, second = open_store(config, "first"), open_store(config, "second")
    try:
        assert not first.database.sessions and not second.database.sessions
        assert caplog.text.count("ends a session with each transaction") == 2  # once each
        with first.transaction():
            first.create_job("job", [f"https://example.test/{n}.png" for n in range(40)])
        for turn in range(10):  # a few dispatcher turns each, interleaved
            for store in (first, second):
                with store.transaction():
                    store.heartbeat()
                    tasks = store.claim(2)
                    assert store.finish_many([(task, jobs.COMPLETE, {"attempts": 1})
                                              for task in tasks]) == [True] * len(tasks)
                assert store.read_job("job") is not None
        assert store.read_job("job")[0][3] == jobs.JOB_COMPLETE
    finally:
        first.close()
        second.close()


def test_the_writers_settings_end_with_its_transaction(one_server_connection):
    store = open_store(StorageConfig(url=one_server_connection, lease_seconds=3), "me")
    try:
        with store.transaction():  # ends a transaction idle for a lease: 3 s
            shown = store._execute("SHOW idle_in_transaction_session_timeout").fetchone()[0]
        assert shown == "3s"
        with psycopg.connect(one_server_connection) as other:  # the same server connection
            assert other.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "0"
    finally:
        store.close()


def test_listening_is_on_the_listen_url_or_nowhere(postgres, pgbouncer):
    direct = postgres.create_database()
    pooled = pgbouncer.behind(direct)
    assert sessions_last(direct) and not sessions_last(pooled)
    store = open_store(StorageConfig(url=pooled), "polls")
    try:
        assert store.listen(on_work=lambda: None, on_pause=lambda: None,
                            on_state=lambda up: None) is False
    finally:
        store.close()

    store = open_store(StorageConfig(url=pooled, listen_url=direct), "listens")
    heard, states = threading.Event(), []
    try:
        assert not store.database.sessions  # the statements still go through the pooler
        assert store.listen(on_work=heard.set, on_pause=lambda: None,
                            on_state=states.append) is True
        wait_until(lambda: states)
        with store.transaction():  # through PgBouncer: NOTIFY works there, LISTEN does not
            store.create_job("job", ["https://example.test/a.png"])
        assert heard.wait(10) and states == [True]
    finally:
        store.close()
