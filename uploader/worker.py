"""The worker process: fetch each URL's bytes, upload them, report the outcome.

A worker is long-lived. It builds its fetcher and its image-host session once, after
it starts, and runs ``workers.uploads_per_process`` slot threads that each take a task
from the worker's own inbox queue, handle it, and put a ``Result`` on the shared result
queue. ``None`` in the inbox stops one slot. Only small records cross the process
boundary; errors travel as their message.

Per URL: fetch (safe, capped) -> SHA-256 -> ``coordinator.begin`` (reuse an existing
link, or own the upload and get the gate's answer) -> wait for the gate -> upload -> on
a transient error, back off and try again up to ``imgur.max_attempts``; on a refused
token, refresh once for the pool -> ``coordinator.end`` (budgets, publish the link).
"""
import hashlib
import logging
import os
import posixpath
import queue
import random
import re
import signal
import threading
import time
from urllib.parse import urlsplit

from . import jobs
from .errors import (AuthRejectedError, FetchError, HostError, RetryableHostError, failure_class,
                     source_may_recover)
from .fetch import Fetcher
from .hosts.local import LocalHost
from .logs import setup_logging

log = logging.getLogger(__name__)

DEDUP_POLL_SECONDS = 0.1
GATE_POLL_SECONDS = 5.0  # re-ask the gate at least this often during a long pause
WAIT_WORTH_NOTING = 1.0  # waits longer than this are shown in the job body


def run(index, generation, inbox, results, config, shared):
    """Process entry point (a top-level function, so it can be spawned).

    Threads: one reads task batches from the inbox, N slots handle tasks, one sends
    what the slots report back in batches (whatever piled up since the last send)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when we stop
    if config.workers.nice:
        os.nice(config.workers.nice)  # bulk work yields to the API when CPU is short
    setup_logging(config.logging.level, config.logging.format)
    exit_with_parent(os.getppid())
    slots = config.workers.uploads_per_process
    tasks: "queue.Queue" = queue.Queue()
    outbox = Outbox(results)
    worker = Worker(index, generation, config, outbox, shared)
    threads = [threading.Thread(target=worker.serve, args=(tasks,), name=f"slot-{n}")
               for n in range(slots)]
    for thread in threads:
        thread.start()
    sender = threading.Thread(target=outbox.run, name="sender")
    sender.start()
    threading.Thread(target=_read_inbox, args=(inbox, tasks, slots), name="inbox",
                     daemon=True).start()
    outbox.put(jobs.Ready(index, generation))
    log.info("worker %d ready with %d slots (host: %s)", index, slots, worker.host.name)
    for thread in threads:
        thread.join()
    outbox.close()
    sender.join()


def _read_inbox(inbox, tasks, slots) -> None:
    """Unpack task batches for the slots; ``None`` (a stop) ends every slot."""
    while True:
        try:
            message = inbox.get()
        except (OSError, EOFError):  # the manager is gone: so is the front end
            message = None
        if message is None:
            for _ in range(slots):
                tasks.put(None)
            return
        for task in jobs.unpack(message):
            tasks.put(task)


class Outbox:
    """Collects the slots' reports and sends them as batches through the shared queue."""

    _CLOSE = object()

    def __init__(self, results):
        self.results = results
        self._pending: "queue.Queue" = queue.Queue()

    def put(self, record) -> None:
        self._pending.put(record)

    def close(self) -> None:
        self._pending.put(self._CLOSE)

    def run(self) -> None:
        while True:
            batch = [self._pending.get()]
            while True:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            closing = batch[-1] is self._CLOSE
            records = [r for r in batch if r is not self._CLOSE]
            if records:
                self.results.put(jobs.pack(records))
            if closing:
                return


def build_host(config):
    """The image host this configuration asks for, with its session built in this process."""
    if config.resolved_image_host == "imgur":
        from .hosts.imgur import ImgurHost
        return ImgurHost(
            api_url=config.imgur.api_url,
            access_token=config.imgur.access_token,
            client_id=config.imgur.client_id,
            timeout_seconds=config.imgur.timeout_seconds,
        )
    return LocalHost(directory=config.local.directory, base_url=config.server.base_url)


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
    )


class Worker:
    """Handles tasks; shared by the slot threads of one process."""

    def __init__(self, index, generation, config, results, shared):
        self.index = index
        self.generation = generation
        self.config = config
        self.results = results
        self.coordinator = shared.coordinator
        self.credentials = shared.credentials
        self.gated = config.resolved_image_host == "imgur"  # the local host has no limits
        self.fetcher = build_fetcher(config)
        self.host = build_host(config)
        self._token = None  # (token, version, rejected) as last read from the pool's Credentials

    def serve(self, tasks) -> None:
        while True:
            task = tasks.get()
            if task is None:
                return
            self.results.put(self.handle(task))

    def handle(self, task: jobs.Task) -> jobs.Result:
        """Fetch, upload, and turn every outcome (even a bug) into a Result.

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
            digest = report.sha256 = hashlib.sha256(fetched.data).hexdigest()
            reused, grant = self._begin(digest)
            if reused:
                return report.result(jobs.COMPLETE, link=reused, reused=True)
            link = None
            try:
                filename = upload_name(fetched.final_url, fetched.ext)
                link = self._upload(task, fetched.data, filename, fetched.mime, report, grant).link
            finally:  # one round trip: the last answer's budgets, and publish (or release) the bytes
                self.coordinator.end(digest, link, report.rate, observe=report.grant_open)
            report.uploaded_bytes = len(fetched.data)
            return report.result(jobs.COMPLETE, link=link)
        except (FetchError, HostError) as exc:
            return report.result(jobs.FAILED, reason=str(exc), failure_class=failure_class(exc))
        except Exception as exc:  # a bug must not kill the slot or lose the URL
            log.exception("job %s: %s failed unexpectedly", task.job_id, task.url)
            return report.result(jobs.FAILED, reason=f"internal error: {type(exc).__name__}: {exc}",
                                 failure_class="internal")

    def _fetch(self, task, report):
        """Fetch, trying again (``fetch.retries`` times, 1 s then 2 s apart) while the source
        fails in a way that may pass: busy, unreachable, or a body cut short."""
        for retry in range(self.config.fetch.retries + 1):
            try:
                return self.fetcher.fetch(task.url, on_progress=report.progress)
            except FetchError as exc:
                if retry == self.config.fetch.retries or not source_may_recover(exc):
                    raise
                log.info("job %s: %s: %s; fetching again in %d s", task.job_id, task.url, exc,
                         2 ** retry)
                time.sleep(2 ** retry)

    def _begin(self, digest: str):
        """(link these bytes already have, None) or (None, the gate's first answer) once this
        slot owns their upload; waits while another slot uploads the same bytes."""
        owner = (self.index, self.generation, threading.get_ident())
        while True:
            decision, link, grant = self.coordinator.begin(digest, owner)
            if decision == "reuse":
                return link, None
            if decision == "upload":
                return None, grant
            time.sleep(DEDUP_POLL_SECONDS)

    def _upload(self, task, data, filename, mime, report, grant):
        """Upload with retries of transient host errors; the report keeps attempts and budgets.

        Every grant of the gate is answered by one observation: here for a try that is
        retried, by ``coordinator.end`` for the last one (``report.grant_open``)."""
        refreshed = False
        started = time.monotonic()
        try:
            while True:
                self._wait_at_gate(task, grant, report)
                grant = None
                version = self._use_current_token()
                try:
                    uploaded = self.host.upload(data, filename=filename, mime=mime)
                except HostError as exc:
                    report.rate = _budgets(getattr(exc, "rate", None)) or report.rate
                    if isinstance(exc, AuthRejectedError) and self.credentials is not None \
                            and not refreshed:
                        refreshed = True
                        self._close_grant(report)
                        self._token = self.credentials.refresh(version, str(exc))  # once for the pool
                        continue
                    if (not isinstance(exc, RetryableHostError)
                            or report.attempts >= self.config.imgur.max_attempts):
                        raise
                    self._close_grant(report)
                    delay = self._backoff(report.attempts, exc.retry_after)
                    log.info("job %s: %s: %s; retrying in %.1f s", task.job_id, task.url, exc, delay)
                    if exc.pool_wide:
                        self.coordinator.pause(delay, f"Imgur asked us to slow down: {exc}")
                    if not exc.pool_wide or not self.gated:
                        time.sleep(delay)
                    report.attempts += 1
                    self.results.put(jobs.Attempt(task.url_id, self.index, self.generation,
                                                  report.attempts))
                    continue
                report.rate = _budgets(uploaded.rate) or report.rate
                return uploaded
        finally:
            report.upload_seconds = time.monotonic() - started

    def _close_grant(self, report) -> None:
        """Tell the gate a try is over (it is being retried), with Imgur's latest budgets."""
        if report.grant_open:
            self.coordinator.observe(report.rate)
            report.grant_open = False

    def _use_current_token(self):
        """Point the host at the pool's current token; fail at once if Imgur refused it for good.

        The token is read from the manager once and again only after Imgur refuses it, so a
        refresh done by another worker costs this one a single refused request, not a round
        trip per upload."""
        if self.credentials is None:
            return None
        if self._token is None:
            self._token = self.credentials.current()
        token, version, rejected = self._token
        if rejected:
            raise AuthRejectedError(rejected)
        if token:
            self.host.access_token = token
        return version

    def _wait_at_gate(self, task, grant, report) -> None:
        """Wait for the pool's gate (``grant``: its answer already in hand, if any); a long
        wait is shown in the job body with its reason."""
        if not self.gated:
            return
        noted = False
        while True:
            granted, when, why = grant or self.coordinator.reserve()
            grant = None
            delay = when - time.monotonic()
            if granted:
                report.grant_open = True
                if delay > 0:  # a reservation for later: still valid once its moment comes?
                    time.sleep(delay)
                    grant = self.coordinator.confirm()
                    if not grant[0]:  # a pause began meanwhile; the gate withdrew the grant
                        report.grant_open = False
                        continue
                    grant = None
                if noted:
                    self.results.put(jobs.Waiting(task.url_id, None))
                return
            if delay > WAIT_WORTH_NOTING and not noted:
                self.results.put(jobs.Waiting(task.url_id, time.time() + delay, why))
                noted = True
            time.sleep(min(max(delay, 0.0), GATE_POLL_SECONDS))

    def _backoff(self, attempt: int, retry_after) -> float:
        """Exponential backoff with full jitter; the host's own Retry-After wins when given."""
        if retry_after is not None:
            return float(retry_after)
        b = self.config.imgur.backoff
        return random.uniform(0, min(b.max_seconds, b.base_seconds * 2 ** (attempt - 1)))



def _budgets(rate):
    """Imgur's budgets from a RateLimitSnapshot, as the plain dict the gate takes."""
    return None if rate is None else vars(rate)


class _Report:
    """What one URL's handling measured, turned into its Result at the end."""

    PROGRESS_EVERY_SECONDS = 0.5

    def __init__(self, task, worker):
        self.task = task
        self.worker = worker
        self.started = time.monotonic()
        self.attempts = task.attempt
        self.sha256 = None
        self.fetch_seconds = self.upload_seconds = None
        self.fetched_bytes = self.uploaded_bytes = 0
        self.rate = None
        self.grant_open = False  # a gate grant whose try has not been reported back yet
        self._last_progress = self.started

    def progress(self, received: int, total) -> None:
        """Fetch progress, passed on at most twice a second (large images only)."""
        now = time.monotonic()
        if now - self._last_progress >= self.PROGRESS_EVERY_SECONDS:
            self._last_progress = now
            self.worker.results.put(jobs.Progress(self.task.url_id, received, total))

    def fetched(self, size: int) -> None:
        self.fetch_seconds = time.monotonic() - self.started
        self.fetched_bytes = size

    def result(self, state, **fields) -> jobs.Result:
        return jobs.Result(
            url_id=self.task.url_id, worker=self.worker.index, generation=self.worker.generation,
            state=state, attempts=self.attempts, sha256=self.sha256,
            seconds=time.monotonic() - self.started, fetch_seconds=self.fetch_seconds,
            upload_seconds=self.upload_seconds, fetched_bytes=self.fetched_bytes,
            uploaded_bytes=self.uploaded_bytes, rate=self.rate, **fields)


def upload_name(url: str, ext: str) -> str:
    """A tidy file name for the host: the URL's base name with the sniffed extension."""
    stem = posixpath.splitext(posixpath.basename(urlsplit(url).path))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:64] or "image"
    return f"{stem}.{ext}"


def exit_with_parent(parent: int) -> None:
    """Child processes never outlive the front end, even when it is killed with SIGKILL."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
