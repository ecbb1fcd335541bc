"""Refused connections (``backends.postgres.refusals``): told apart from a server that is away,
noted by role until that role connects again, and told to whoever listens once per
change (a worker's pipe)."""
import psycopg

from uploader.backends.postgres.refusals import Refusals, is_refusal

REFUSED = {
    "max_connections": 'connection failed: connection to server at "127.0.0.1", port 5432'
                       " failed: FATAL:  sorry, too many clients already",
    "a role's limit": 'connection failed: connection to server at "127.0.0.1", port 5432'
                      ' failed: FATAL:  too many connections for role "uploader"',
    "PgBouncer's max_client_conn": 'connection failed: connection to server at "127.0.0.1",'
                                   " port 6432 failed: FATAL:  no more connections allowed"
                                   " (max_client_conn)",
}
AWAY = ('connection failed: connection to server at "127.0.0.1", port 5432 failed:'
        " Connection refused\n\tIs the server running on that host and accepting TCP/IP"
        " connections?")


def test_a_refusal_for_want_of_room_is_told_from_a_server_away():
    for message in REFUSED.values():
        assert is_refusal(psycopg.OperationalError(message))
    assert not is_refusal(psycopg.OperationalError(AWAY))


def test_refusals_are_noted_by_role_until_that_role_connects():
    refusals, told = Refusals(), []
    refusals.subscribe(told.append)
    refusals.failed("readers", psycopg.OperationalError(AWAY))  # away: not a refusal
    assert refusals.summary() is None and told == []

    refusals.failed("shared", psycopg.OperationalError(REFUSED["a role's limit"]))
    refusals.failed("shared", psycopg.OperationalError(REFUSED["a role's limit"]))  # again
    refusals.failed("writer", psycopg.OperationalError(REFUSED["max_connections"]))
    summary = refusals.summary()
    assert summary.startswith("PostgreSQL refused connections (shared, writer):")
    assert 'too many connections for role "uploader"' in summary  # the server's words
    assert "5432" not in summary and "retrying" in summary
    assert told == [told[0], summary]  # once per change

    refusals.connected("shared")
    refusals.connected("readers")  # never refused: nothing changes
    assert "(writer)" in refusals.summary()
    refusals.connected("writer")
    assert refusals.summary() is None and told[-1] is None and len(told) == 4
