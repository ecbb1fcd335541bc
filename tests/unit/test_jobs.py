"""The job model: timestamps and the status rules."""
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uploader import jobs
from uploader.backends import memory


def test_timestamp_is_utc_with_milliseconds_and_z():
    assert jobs.format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert jobs.format_timestamp(1495556889.1239) == "2017-05-23T16:28:09.123Z"
    assert jobs.format_timestamp(1495556889.9999996) == "2017-05-23T16:28:10.000Z"  # rounded up
    assert jobs.format_timestamp(None) is None


def by_datetime(epoch_seconds):
    """What the timestamp was made with before each second's text was kept."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**9).map(
    lambda second: second + 0.9999995) | st.integers(0, 4 * 10**9).map(lambda s: s + 0.0000005))
def test_a_timestamp_reads_as_datetime_would_write_it(epoch_seconds):
    assert jobs.format_timestamp(epoch_seconds) == by_datetime(epoch_seconds)


@pytest.mark.parametrize("states, status", [
    ([jobs.QUEUED, jobs.QUEUED], jobs.JOB_PENDING),
    ([jobs.QUEUED, jobs.IN_FLIGHT], jobs.JOB_IN_PROGRESS),
    ([jobs.COMPLETE, jobs.QUEUED], jobs.JOB_IN_PROGRESS),
    ([jobs.COMPLETE, jobs.FAILED], jobs.JOB_COMPLETE),
    ([jobs.FAILED], jobs.JOB_COMPLETE),
])
def test_job_status_follows_url_states(states, status):
    assert memory.job_status(states) == status


@pytest.mark.parametrize("old, new, allowed", [
    (jobs.QUEUED, jobs.IN_FLIGHT, True),
    (jobs.IN_FLIGHT, jobs.COMPLETE, True),
    (jobs.IN_FLIGHT, jobs.FAILED, True),
    (jobs.IN_FLIGHT, jobs.QUEUED, True),
    (jobs.QUEUED, jobs.FAILED, True),  # its job cancelled
    (jobs.QUEUED, jobs.COMPLETE, False),
    (jobs.COMPLETE, jobs.FAILED, False),
    (jobs.FAILED, jobs.QUEUED, False),
    (jobs.COMPLETE, jobs.IN_FLIGHT, False),
])
def test_url_transitions(old, new, allowed):
    assert memory.can_move(old, new) is allowed
