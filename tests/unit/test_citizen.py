"""The upload policy around one upload (``hosts.citizen``), in-process: the gate's pace
holds for what the host sees, even when a process is held up after its grant."""
import threading
import time
import types

from uploader import jobs
from uploader.config import BackoffConfig
from uploader.errors import RetryableHostError
from uploader.hosts import Uploaded
from uploader.hosts.citizen import PoliteUploader
from uploader.backends.sqlite.coordinator import Coordinator
from uploader.worker import _Report
from tests.doubles import Report

OWNER = ("w0", 1)


class RecordingHost:
    name = "imgur"
    label = "Imgur"
    access_token = ""

    def __init__(self):
        self.sent = []

    def upload(self, data, *, filename, mime):
        self.sent.append(time.monotonic())
        return Uploaded(link=f"https://i.example/{filename}")


class SlowFirstToken:
    """The shared credential, whose first read holds its reader up for ``seconds``."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.reads = 0

    def current(self):
        self.reads += 1
        if self.reads == 1:
            time.sleep(self.seconds)
        return "token", 1, None


def test_a_grant_held_up_past_its_moment_is_given_back_not_used_late():
    # 5 a second, burst 1: the first grant is for now, the second for 0.2 s later. The
    # first slot is held up 0.18 s reading the token; sent then, it would reach the host
    # 20 ms before the second. Given back, it waits for the next moment, 0.4 s.
    coordinator = Coordinator({"rate": 5, "burst": 1})
    coordinator.learn(None)  # no probe: budgets known (none reported)
    host = RecordingHost()
    uploader = PoliteUploader(host, coordinator=coordinator, credentials=SlowFirstToken(0.18),
                              owner=OWNER, max_attempts=3, backoff=BackoffConfig(),
                              rate=5)
    reports = [Report(), Report()]
    slots = [threading.Thread(target=uploader.upload, args=(b"x",),
                              kwargs={"filename": f"{n}.png", "mime": "image/png",
                                      "report": report})
             for n, report in enumerate(reports)]
    for slot in slots:
        slot.start()
        time.sleep(0.01)  # the first slot asks first
    for slot in slots:
        slot.join(timeout=10)
    assert len(host.sent) == 2
    first, second = sorted(host.sent)
    assert second - first > 0.1  # the grants' spacing, less what a grant may be late
    assert all(report.grant_open for report in reports)  # each upload's grant is open
    assert sorted(report.grants_given_back for report in reports) == [0, 1]
    assert coordinator.gate.in_flight == 2  # and the one given back no longer counts


class SlowConfirmations(Coordinator):
    """A gate whose every confirmation of a reserved moment is a slow round trip."""

    def confirm(self, owner):
        time.sleep(0.1)
        return super().confirm(owner)


def test_a_grant_is_given_back_once_so_a_slow_process_still_uploads():
    # Every moment is in the future (the burst is spent) and confirming it takes 0.1 s,
    # more than the 50 ms a grant may be late at 5 a second: given back each time, the
    # upload would never go.
    coordinator = SlowConfirmations({"rate": 5, "burst": 1})
    coordinator.learn(None)
    assert coordinator.reserve(("other", 1))[0]  # the burst, spent elsewhere
    host = RecordingHost()
    uploader = PoliteUploader(host, coordinator=coordinator, credentials=SlowFirstToken(0),
                              owner=OWNER, max_attempts=3, backoff=BackoffConfig(), rate=5)
    report = Report()
    slot = threading.Thread(target=uploader.upload, args=(b"x",), daemon=True,
                            kwargs={"filename": "a.png", "mime": "image/png", "report": report})
    slot.start()
    slot.join(timeout=5)
    assert len(host.sent) == 1 and report.grant_open and report.grants_given_back == 1
    assert coordinator.gate.in_flight == 2  # the other's and ours; the one given back is void


def test_without_a_pace_a_held_up_grant_is_used():
    coordinator = Coordinator({"rate": 0, "burst": 1})
    coordinator.learn(None)
    host = RecordingHost()
    uploader = PoliteUploader(host, coordinator=coordinator, credentials=SlowFirstToken(0.1),
                              owner=OWNER, max_attempts=3, backoff=BackoffConfig(), rate=0)
    report = Report()
    uploader.upload(b"x", filename="a.png", mime="image/png", report=report)
    assert len(host.sent) == 1 and coordinator.gate.in_flight == 1
    assert report.grants_given_back == 0


def test_slots_starting_together_read_the_shared_token_once():
    # A cluster's token is a database row: eight slots each reading it at their first
    # upload were eight statements where one does.
    coordinator = Coordinator({"rate": 0, "burst": 1})
    coordinator.learn(None)
    host, token = RecordingHost(), SlowFirstToken(0.2)  # the others ask while it is read
    uploader = PoliteUploader(host, coordinator=coordinator, credentials=token,
                              owner=OWNER, max_attempts=3, backoff=BackoffConfig(), rate=0)
    slots = [threading.Thread(target=uploader.upload, args=(b"x",),
                              kwargs={"filename": f"{n}.png", "mime": "image/png",
                                      "report": Report()}) for n in range(8)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join(timeout=10)
    assert len(host.sent) == 8 and token.reads == 1


def test_a_worker_reports_its_grants_given_back_in_the_urls_result():
    worker = types.SimpleNamespace(index=2, generation=1)
    task = jobs.Task(url_id=7, job_id="j", url="http://example.test/a.png", attempt=1)
    report = _Report(task, worker)
    assert report.result(jobs.COMPLETE).grants_given_back == 0
    report.grants_given_back += 1  # what PoliteUploader._held_up does
    assert report.result(jobs.COMPLETE, link="https://i.example/a.png").grants_given_back == 1


class SlowDownOnce(RecordingHost):
    """A host whose first answer asks the whole service to slow down (S3's SlowDown)."""

    name, label = "s3", "S3"

    def upload(self, data, *, filename, mime):
        super().upload(data, filename=filename, mime=mime)
        if len(self.sent) == 1:
            raise RetryableHostError("S3 bucket 'b': SlowDown", retry_after=0.3, pool_wide=True)
        return Uploaded(link=f"https://s3.example/{filename}")


def test_a_pool_wide_error_pauses_the_gate_with_a_reason_naming_the_host():
    coordinator = Coordinator({"rate": 0, "burst": 1, "host": "S3"})  # S3's gate
    host = SlowDownOnce()
    uploader = PoliteUploader(host, coordinator=coordinator, credentials=None, owner=OWNER,
                              max_attempts=3, backoff=BackoffConfig())
    report = Report()
    uploader.upload(b"x", filename="a.png", mime="image/png", report=report)
    assert report.attempts == 2 and len(host.sent) == 2
    assert host.sent[1] - host.sent[0] >= 0.3  # the second try only after the pause
    assert coordinator.gate.state.pause_why == "S3 asked us to slow down: S3 bucket 'b': SlowDown"
