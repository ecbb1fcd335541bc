"""The worker process: fetch each URL's bytes, upload them, report the outcome.

A worker is long-lived. It builds its fetcher and its image-host session once, after
it starts, and runs ``workers.uploads_per_process`` slot threads that each take a task
from the worker's own inbox queue, handle it, and put a ``Result`` on the shared result
queue. ``None`` in the inbox stops one slot. Only small records cross the process
boundary; errors travel as their message.

Per URL: fetch (safe, capped) -> SHA-256 -> dedup claim (reuse an existing link, or
own the upload) -> wait at the pool's gate -> upload -> on a transient error, back off
and try again up to ``imgur.max_attempts``; on a refused token, refresh once for the pool.
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
from .errors import AuthRejectedError, FetchError, HostError, RetryableHostError, failure_class
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
        allowed_hosts=f.allowed_hosts,
        denied_hosts=f.denied_hosts,
    )


class Worker:
    """Handles tasks; shared by the slot threads of one process."""

    def __init__(self, index, generation, config, results, shared):
        self.index = index
        self.generation = generation
        self.config = config
        self.results = results
        self.gate = shared.gate
        self.credentials = shared.credentials
        self.dedup = shared.dedup
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
            fetched = self.fetcher.fetch(task.url, on_progress=report.progress)
            report.fetched(len(fetched.data))
            digest = report.sha256 = hashlib.sha256(fetched.data).hexdigest()
            reused = self._claim(digest, task)
            if reused:
                return report.result(jobs.COMPLETE, link=reused, reused=True)
            try:
                filename = upload_name(fetched.final_url, fetched.ext)
                uploaded = self._upload(task, fetched.data, filename, fetched.mime, report)
            except BaseException:
                if self.dedup is not None:
                    self.dedup.release(digest)
                raise
            if self.dedup is not None:
                self.dedup.publish(digest, uploaded.link)
            report.uploaded_bytes = len(fetched.data)
            return report.result(jobs.COMPLETE, link=uploaded.link)
        except (FetchError, HostError) as exc:
            return report.result(jobs.FAILED, reason=str(exc), failure_class=failure_class(exc))
        except Exception as exc:  # a bug must not kill the slot or lose the URL
            log.exception("job %s: %s failed unexpectedly", task.job_id, task.url)
            return report.result(jobs.FAILED, reason=f"internal error: {type(exc).__name__}: {exc}",
                                 failure_class="internal")

    def _claim(self, digest: str, task):
        """The link these bytes already have, or None once this slot owns their upload."""
        if self.dedup is None:
            return None
        owner = (self.index, self.generation, threading.get_ident())
        while True:
            decision, link = self.dedup.claim(digest, owner)
            if decision == "reuse":
                return link
            if decision == "upload":
                return None
            time.sleep(DEDUP_POLL_SECONDS)  # the same bytes are being uploaded by another slot

    def _upload(self, task, data, filename, mime, report):
        """Upload with retries of transient host errors; the report keeps attempts and budgets."""
        refreshed = False
        started = time.monotonic()
        try:
            while True:
                self._wait_at_gate(task)
                version = self._use_current_token()
                try:
                    uploaded = self.host.upload(data, filename=filename, mime=mime)
                except HostError as exc:
                    report.rate = self._observe(getattr(exc, "rate", None)) or report.rate
                    if isinstance(exc, AuthRejectedError) and self.credentials is not None:
                        if refreshed:
                            raise
                        refreshed = True
                        self._token = self.credentials.refresh(version, str(exc))  # once for the pool
                        continue
                    if (not isinstance(exc, RetryableHostError)
                            or report.attempts >= self.config.imgur.max_attempts):
                        raise
                    delay = self._backoff(report.attempts, exc.retry_after)
                    log.info("job %s: %s: %s; retrying in %.1f s", task.job_id, task.url, exc, delay)
                    if exc.pool_wide and self.gate is not None:
                        self.gate.pause(delay, f"Imgur asked us to slow down: {exc}")
                    else:
                        time.sleep(delay)
                    report.attempts += 1
                    self.results.put(jobs.Attempt(task.url_id, self.index, self.generation,
                                                  report.attempts))
                    continue
                report.rate = self._observe(uploaded.rate) or report.rate
                return uploaded
        finally:
            report.upload_seconds = time.monotonic() - started

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

    def _wait_at_gate(self, task) -> None:
        """Wait for the pool's gate; a long wait is shown in the job body with its reason."""
        if self.gate is None:
            return
        noted = False
        while True:
            granted, when, why = self.gate.reserve()
            delay = when - time.monotonic()
            if granted:
                if noted:
                    self.results.put(jobs.Waiting(task.url_id, None))
                if delay > 0:
                    time.sleep(delay)
                return
            if delay > WAIT_WORTH_NOTING and not noted:
                self.results.put(jobs.Waiting(task.url_id, time.time() + delay, why))
                noted = True
            time.sleep(min(max(delay, 0.0), GATE_POLL_SECONDS))

    def _observe(self, rate):
        """Tell the gate an upload ended; returns Imgur's budgets as a dict (or None)."""
        budgets = None if rate is None else vars(rate)
        if self.gate is not None:
            self.gate.observe(budgets)
        return budgets

    def _backoff(self, attempt: int, retry_after) -> float:
        """Exponential backoff with full jitter; the host's own Retry-After wins when given."""
        if retry_after is not None:
            return float(retry_after)
        b = self.config.imgur.backoff
        return random.uniform(0, min(b.max_seconds, b.base_seconds * 2 ** (attempt - 1)))



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
