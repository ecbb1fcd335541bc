"""The worker process: a generic pipeline that fetches each URL's bytes, uploads them and
reports the outcome. It knows no host's rules: those live in ``hosts/``.

    pipe to the dispatcher (batches of tasks) --reader thread--> task queue
        --> fetch threads (fetch, check, hash, claim) --> ready queue --> upload slots
    fetch threads, upload slots --> outbox --sender thread--> the same pipe (batches of records)

A worker is long-lived. It builds its fetcher and its host's uploader once, after it
starts. It holds ``uploads_per_process + fetch_ahead`` URLs and fetches them all at once
(once its first round is in hand: ``FirstRound``), so a slot that frees has the next image
in hand (memory stays bounded by what it holds).
An empty message stops it: every URL taken is finished, then it ends. Only small records
cross the process boundary; errors travel as their message.

Per URL: fetch (safe, capped, tried again while the source may recover) -> strip personal
metadata (``images.strip_metadata``) -> SHA-256 of the bytes to store ->
claim the bytes (reuse the link they already have, or own their upload) -> ready -> the
host's uploader (for Imgur: wait at the shared gate, retry, refresh the shared token) ->
result; aside, in batches: ``coordinator.end_many`` (the last answers' budgets; publish
or release the bytes). Threads asking the shared state at once share one trip
(``coalesce.Line``): the claims here, the gate in the host's uploader.
"""
import hashlib
import logging
import os
import posixpath
import queue
import re
import signal
import threading
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from . import hosts, httpheaders, imagetype, jobs, lifeline, metadata
from .errors import FetchError, HostError, SharedStateLost, failure_class, source_may_recover
from .fetch import Fetched, Fetcher
from .logs import setup_logging
from .backends.postgres.refusals import refusals
from .backends.sqlite.coordinator import guarded
from .coalesce import Line, next_batch

log = logging.getLogger(__name__)

DEDUP_POLL_SECONDS = 0.1
# A worker ends with this code when a call to the manager (the embedded shared state)
# broke: the manager is gone, which is not the fault of the URLs it holds. The front end
# stops as it does when it sees the manager's death itself, and hands them back.
SHARED_STATE_LOST = 75


def run(index, generation, conn, lifeline_end, config, shared):
    """Process entry point (a top-level function, so it can be started in a fork server).

    ``conn``: this worker's pipe to the dispatcher; ``lifeline_end``: gives EOF when the
    front end is gone, and the worker ends at once (``lifeline``). Threads: one reads
    task batches from ``conn``, fetch threads get them ready, upload slots upload, one
    sends what they report back on it in batches (whatever piled up since the last send)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when we stop
    if config.workers.nice:
        os.nice(config.workers.nice)  # bulk work yields to the API when CPU is short
    setup_logging(config.logging.level, config.logging.format)
    httpheaders.install()  # every fetch and upload reads a response's headers
    lifeline.watch(lifeline_end)
    slots, ahead = config.workers.uploads_per_process, config.workers.fetch_ahead
    # SimpleQueue (C) for every hand-off between threads: queue.Queue's Condition costs more
    tasks: "queue.SimpleQueue" = queue.SimpleQueue()
    ready: "queue.SimpleQueue" = queue.SimpleQueue()
    outbox = Outbox(conn)
    refusals.subscribe(lambda reason: outbox.put(jobs.Refused(index, generation, reason)))
    shared = guarded(shared)  # a broken call to the manager is no URL's failure
    worker = Worker(index, generation, config, outbox, shared)
    fetchers = [threading.Thread(target=worker.fetch_loop, args=(tasks, ready, n >= slots),
                                 name=f"fetch-{n}")
                for n in range(ahead + slots)]
    uploaders = [threading.Thread(target=worker.upload_loop, args=(ready,), name=f"slot-{n}")
                 for n in range(slots)]
    for thread in fetchers + uploaders:
        thread.start()
    sender = threading.Thread(target=outbox.run, name="sender")
    sender.start()
    threading.Thread(target=_read_inbox, args=(conn, tasks, len(fetchers), worker.first_round,
                                               shared.coordinator.heard),
                     name="inbox", daemon=True).start()
    outbox.put(jobs.Ready(index, generation))
    log.info("worker %d ready with %d upload slots, %d images fetched ahead (host: %s)",
             index, slots, ahead, worker.uploader.name)
    for thread in fetchers:  # a stop ends the fetchers first, then the slots drain what is ready
        thread.join()
    for _ in uploaders:
        ready.put(None)
    for thread in uploaders:
        thread.join()
    worker.ends.close()
    shared.coordinator.close()  # a cluster's gate tickets told and stopped
    outbox.close()
    sender.join()


def _read_inbox(conn, tasks, fetchers, first_round, hear=None) -> None:
    """Unpack task batches for the fetch threads, and pass news of the gate to ``hear``;
    an empty message (a stop) or the pipe's end (the front end is gone) ends every one
    of them."""
    while True:
        try:
            message = conn.recv_bytes()
        except (OSError, EOFError):
            message = b""
        if not message:
            first_round.end()  # the threads fetching ahead may still be waiting to begin
            for _ in range(fetchers):
                tasks.put(None)
            return
        for record in jobs.unpack(message):
            if isinstance(record, jobs.GateNews):
                if hear is not None:
                    hear(record.listening)
            else:
                tasks.put(record)


class Outbox:
    """Collects the slots' reports and sends them as batches on the worker's pipe."""

    _CLOSE = object()

    def __init__(self, conn):
        self.conn = conn
        self._pending: "queue.SimpleQueue" = queue.SimpleQueue()

    def put(self, record) -> None:
        self._pending.put(record)

    def close(self) -> None:
        self._pending.put(self._CLOSE)

    def run(self) -> None:
        while True:
            batch = next_batch(self._pending)
            closing = batch[-1] is self._CLOSE
            records = [r for r in batch if r is not self._CLOSE]
            if records:
                try:
                    self.conn.send_bytes(jobs.pack(records))
                except OSError:  # the front end is gone; the lifeline ends us
                    return
            if closing:
                return


def build_fetcher(config) -> Fetcher:
    f = config.fetch
    return Fetcher(
        timeout_seconds=f.timeout_seconds,
        max_bytes=f.max_bytes,
        max_redirects=f.max_redirects,
        allow_private_networks=f.allow_private_networks,
        private_hosts_allowed=f.private_hosts_allowed,
        only_hosts=f.only_hosts,
        denied_hosts=f.denied_hosts,
        accepted_mimes=hosts.accepted_types(config),
        max_pixels=config.images.max_pixels,
    )


@dataclass
class _Ready:
    """A URL fetched, hashed and claimed, waiting for an upload slot."""

    task: jobs.Task
    report: "_Report"
    fetched: object  # fetch.Fetched
    digest: str
    owner: tuple


class Worker:
    """Handles tasks in two stages: fetch threads get each image ready (fetched, checked,
    hashed, its bytes claimed), upload slots upload what is ready. So an upload slot never
    waits for a source: when it frees, the next image is in hand."""

    def __init__(self, index, generation, config, results, shared):
        self.index = index
        self.generation = generation
        self.config = config
        self.results = results
        self.coordinator = shared.coordinator
        self.fetcher = build_fetcher(config)
        self.uploader = hosts.build_uploader(config, shared, (index, generation))
        self.progress = ProgressBoard(results)
        # fetch threads finishing together share one trip to the dedup index
        self.claims = Line(self.coordinator.claim_many, "claim-line")
        self.ends = Ends(self.coordinator)
        self.first_round = FirstRound(config.workers.uploads_per_process)

    def fetch_loop(self, tasks, ready, ahead: bool) -> None:
        """``ahead``: one of the threads beyond the slots' count, which fetch the next
        round's images; they begin after the first round's (``FirstRound``)."""
        if ahead:
            self.first_round.wait()
        while (task := tasks.get()) is not None:
            prepared = self.prepare(task)
            self.first_round.prepared()
            if isinstance(prepared, _Ready):
                ready.put(prepared)
            else:
                self.results.put(prepared)

    def upload_loop(self, ready) -> None:
        while (item := ready.get()) is not None:
            self.results.put(self.upload(item))

    def prepare(self, task: jobs.Task):
        """Fetch, check and hash the image and claim its bytes: a ``_Ready`` to upload, or
        the URL's Result already (failed, or its bytes have a link: reused).

        Outcomes are logged once, by the front end when it commits them; a worker logs
        only what the front end cannot see (retries, waits, unexpected exceptions)."""
        drill = self.config.workers.exit_on_url_containing
        if drill and drill in task.url:
            log.warning("crash drill: worker %d exits on %s", self.index, task.url)
            os._exit(70)
        report = _Report(task, self)
        try:
            fetched = self._fetch(task, report)
            report.fetched(len(fetched.data))
            if self.config.images.strip_metadata:  # before the digest: it names the stored bytes
                fetched = stripped(fetched)
            digest = report.sha256 = hashlib.sha256(fetched.data).hexdigest()
            # the claim is this URL's, not this thread's: the thread may fetch the same
            # bytes for another URL while a slot still uploads them for this one
            owner = (self.index, self.generation, task.url_id)
            reused = self._claim(digest, task.account, owner)
            if reused:
                return report.result(jobs.COMPLETE, link=reused, reused=True)
            return _Ready(task, report, fetched, digest, owner)
        except Exception as exc:
            return self._failed(task, report, exc)

    def upload(self, item: _Ready) -> jobs.Result:
        """Upload what ``prepare`` made ready (waiting at the host's gate), then publish the
        link for identical bytes, or release them."""
        task, report, fetched = item.task, item.report, item.fetched
        link = None
        started = time.monotonic()
        try:
            try:
                filename = upload_name(fetched.final_url, fetched.ext)
                uploaded = self.uploader.upload(fetched.data, filename=filename,
                                                mime=fetched.mime, report=report)
                link = uploaded.link
            finally:  # the last answer's budgets, and publish (or release) the bytes: aside
                report.upload_seconds = time.monotonic() - started
                self.ends.put((item.digest, task.account, link, report.rate, item.owner,
                               report.grant_open))
            report.uploaded_bytes = len(fetched.data)
            return report.result(jobs.COMPLETE, link=link, deletehash=uploaded.deletehash)
        except Exception as exc:
            return self._failed(task, report, exc)

    def _failed(self, task, report, exc) -> jobs.Result:
        """Every failure, even a bug, becomes the URL's Result: a slot never dies of one.
        But the manager's death is not the URL's failure: the worker ends instead."""
        if isinstance(exc, SharedStateLost):
            log.error("worker %d lost the shared state (%s) during %s; ending, so that its "
                      "URLs are handed back", self.index, exc, task.url)
            os._exit(SHARED_STATE_LOST)
        if isinstance(exc, (FetchError, HostError)):
            return report.result(jobs.FAILED, reason=str(exc), failure_class=failure_class(exc))
        log.error("job %s: %s failed unexpectedly", task.job_id, task.url,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return report.result(jobs.FAILED, reason=f"internal error: {type(exc).__name__}: {exc}",
                             failure_class="internal")

    def _fetch(self, task, report):
        """Fetch, trying again (``fetch.retries`` times, 1 s then 2 s apart) while the source
        fails in a way that may pass: busy, unreachable, or a body cut short."""
        try:
            for retry in range(self.config.fetch.retries + 1):
                try:
                    return self.fetcher.fetch(task.url, on_progress=report.progress)
                except FetchError as exc:
                    if retry == self.config.fetch.retries or not source_may_recover(exc):
                        raise
                    log.info("job %s: %s: %s; fetching again in %d s", task.job_id, task.url,
                             exc, 2 ** retry)
                    time.sleep(2 ** retry)
        finally:
            self.progress.done(task.url_id)

    def _claim(self, digest: str, account: str, owner: tuple):
        """The link these bytes already have, or None once this URL owns their upload;
        waits while another URL's upload (here, or in another worker or instance) has them."""
        while True:
            decision, link = self.claims((digest, account, owner))
            if decision == "reuse":
                return link
            if decision == "upload":
                return None
            time.sleep(DEDUP_POLL_SECONDS)


class FirstRound:
    """A fresh worker's first images come before those it fetches ahead: the fetch threads
    beyond its slots' count begin once as many URLs as it has slots are prepared (fetched
    and claimed, or already finished). Its first batch of tasks would otherwise be fetched
    all at once, and on a busy machine the next round's fetches slow the first round's, so
    every upload slot starts later. After that first round nothing changes: each thread
    takes tasks as they come. Measured on a fresh service's 640-URL job at Imgur +500 ms
    (alternating runs): ahead in 14 of 16 pairs, about 0.4% nearer the slot bound; with
    the source at +200 ms, unchanged."""

    def __init__(self, slots: int):
        self._left = slots
        self._lock = threading.Lock()
        self._begun = threading.Event()
        if slots <= 0:
            self._begun.set()

    def wait(self, timeout=None) -> bool:
        """Until the first round is prepared (or the worker stops): True once it is."""
        return self._begun.wait(timeout)

    def prepared(self) -> None:
        """One more URL prepared."""
        if self._begun.is_set():
            return
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._begun.set()

    def end(self) -> None:
        """The worker is stopping: nobody waits any longer."""
        self._begun.set()


class Ends:
    """What an upload owes the shared state once it is over (the gate hears the last
    answer's budgets, the bytes are published or released), sent by a thread of its own in
    batches: the slot goes on to its next upload without waiting for the round trip. A
    worker that dies with some unsent loses nothing: its grants and claims are dropped
    when it is replaced (``release_owner``)."""

    def __init__(self, coordinator):
        self.coordinator = coordinator
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ends", daemon=True)
        self._thread.start()

    def put(self, end: tuple) -> None:
        self._queue.put(end)

    def close(self) -> None:
        """Send what is left, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = next_batch(self._queue, limit=64)
            closing = batch[-1] is None
            ends = [end for end in batch if end is not None]
            if ends:
                try:
                    self.coordinator.end_many(ends)
                except Exception:  # the manager is gone: so is the front end, soon
                    log.exception("could not tell the shared state about %d uploads", len(ends))
            if closing:
                return


class ProgressBoard:
    """Fetch progress of the URLs this worker is downloading, passed on by a thread of its
    own: a URL's first report once its download has taken ``FIRST`` seconds (a quick
    download never reports; a slow one shows its size even before its first byte), then
    at most every ``EVERY`` seconds while it changes."""

    FIRST, EVERY = 0.25, 0.5

    def __init__(self, outbox):
        self.outbox = outbox
        self._entries = {}  # url id -> [received, total, started, last sent, changed]
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="progress", daemon=True).start()

    def update(self, url_id: int, received: int, total) -> None:
        with self._lock:
            entry = self._entries.get(url_id)
            if entry is None:
                self._entries[url_id] = [received, total, time.monotonic(), 0.0, True]
            else:
                entry[0], entry[1], entry[4] = received, total, True

    def done(self, url_id: int) -> None:
        with self._lock:
            self._entries.pop(url_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.FIRST / 2)
            now, due = time.monotonic(), []
            with self._lock:
                for url_id, entry in self._entries.items():
                    received, total, started, sent, changed = entry
                    if changed and now - started >= self.FIRST and now - sent >= self.EVERY:
                        entry[3], entry[4] = now, False
                        due.append(jobs.Progress(url_id, received, total))
            for record in due:
                self.outbox.put(record)


class _Report:
    """What one URL's handling measured, turned into its Result at the end; also how the
    upload policy tells the job about retries and waits."""

    def __init__(self, task, worker):
        self.task = task
        self.worker = worker
        self.started = time.monotonic()
        self.attempts = task.attempt
        self.sha256 = None
        self.fetch_seconds = self.upload_seconds = None
        self.fetched_bytes = self.uploaded_bytes = 0
        self.rate = None
        self.grants_given_back = 0  # grants held up past their moment (hosts.citizen)
        self.grant_open = False  # a gate grant whose try has not been reported back yet

    def describe(self) -> str:
        return f"job {self.task.job_id}: {self.task.url}"

    def _send(self, record) -> None:
        self.worker.results.put(record)

    def progress(self, received: int, total) -> None:
        self.worker.progress.update(self.task.url_id, received, total)

    def retrying(self) -> None:
        """Another try at the upload (counted at once, so a crash mid-retry still counts it)."""
        self.attempts += 1
        self._send(jobs.Attempt(self.task.url_id, self.worker.index, self.worker.generation,
                                self.attempts))

    def waiting(self, until, why, *, host_full: bool = False) -> None:
        """The upload waits for the host's limits, or for room at the host (``host_full``),
        until ``until`` (epoch seconds; None: no more)."""
        self._send(jobs.Waiting(self.task.url_id, until, why, host_full))

    def fetched(self, size: int) -> None:
        self.fetch_seconds = time.monotonic() - self.started
        self.fetched_bytes = size

    def result(self, state, **fields) -> jobs.Result:
        return jobs.Result(
            url_id=self.task.url_id, worker=self.worker.index, generation=self.worker.generation,
            state=state, attempts=self.attempts, sha256=self.sha256,
            seconds=time.monotonic() - self.started, fetch_seconds=self.fetch_seconds,
            upload_seconds=self.upload_seconds, fetched_bytes=self.fetched_bytes,
            uploaded_bytes=self.uploaded_bytes, rate=self.rate,
            grants_given_back=self.grants_given_back, **fields)


def stripped(fetched: Fetched) -> Fetched:
    """The fetched image without its personal metadata (``metadata.strip``)."""
    data = metadata.strip(fetched.data, imagetype.ImageType(fetched.mime, fetched.ext))
    return fetched if data is fetched.data else replace(fetched, data=data)


def upload_name(url: str, ext: str) -> str:
    """A tidy file name for the host: the URL's base name with the sniffed extension."""
    stem = posixpath.splitext(posixpath.basename(urlsplit(url).path))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:64] or "image"
    return f"{stem}.{ext}"
