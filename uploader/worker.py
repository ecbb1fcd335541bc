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
import random
import re
import signal
import threading
import time
from urllib.parse import urlsplit

from . import jobs
from .errors import AuthRejectedError, FetchError, HostError, RetryableHostError
from .fetch import Fetcher
from .hosts.local import LocalHost
from .logs import setup_logging

log = logging.getLogger(__name__)

DEDUP_POLL_SECONDS = 0.1
GATE_POLL_SECONDS = 5.0  # re-ask the gate at least this often during a long pause
WAIT_WORTH_NOTING = 1.0  # waits longer than this are shown in the job body


def run(index, generation, inbox, results, config, shared):
    """Process entry point (a top-level function, so it can be spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when we stop
    setup_logging(config.logging.level, config.logging.format)
    exit_with_parent(os.getppid())
    worker = Worker(index, generation, config, results, shared)
    slots = [
        threading.Thread(target=worker.serve, args=(inbox,), name=f"slot-{n}")
        for n in range(config.workers.uploads_per_process)
    ]
    for slot in slots:
        slot.start()
    log.info("worker %d ready with %d slots (host: %s)", index, len(slots), worker.host.name)
    for slot in slots:
        slot.join()


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

    def serve(self, inbox) -> None:
        while True:
            task = inbox.get()
            if task is None:
                return
            self.results.put(self.handle(task))

    def handle(self, task: jobs.Task) -> jobs.Result:
        """Fetch, upload, and turn every outcome (even a bug) into a Result."""
        started = time.monotonic()
        attempts = task.attempt
        drill = self.config.workers.exit_on_url_containing
        if drill and drill in task.url:
            log.warning("crash drill: worker %d exits on %s", self.index, task.url)
            os._exit(70)
        try:
            fetched = self.fetcher.fetch(task.url)
            digest = hashlib.sha256(fetched.data).hexdigest()
            reused = self._claim(digest, task)
            if reused:
                log.info("job %s: %s has the same bytes as %s; reused", task.job_id, task.url, reused)
                return self._result(task, jobs.COMPLETE, started, attempts=attempts, link=reused,
                                    sha256=digest, reused=True)
            try:
                filename = upload_name(fetched.final_url, fetched.ext)
                uploaded, attempts = self._upload(task, fetched.data, filename, fetched.mime)
            except BaseException:
                if self.dedup is not None:
                    self.dedup.release(digest)
                raise
            if self.dedup is not None:
                self.dedup.publish(digest, uploaded.link)
        except (FetchError, HostError) as exc:
            attempts = getattr(exc, "attempts", attempts)
            log.info("job %s: %s failed: %s", task.job_id, task.url, exc)
            return self._result(task, jobs.FAILED, started, attempts=attempts, reason=str(exc))
        except Exception as exc:  # a bug must not kill the slot or lose the URL
            log.exception("job %s: %s failed unexpectedly", task.job_id, task.url)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return self._result(task, jobs.FAILED, started, attempts=attempts, reason=reason)
        log.info("job %s: %s uploaded as %s", task.job_id, task.url, uploaded.link)
        return self._result(task, jobs.COMPLETE, started, attempts=attempts,
                            link=uploaded.link, sha256=digest)

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

    def _upload(self, task, data, filename, mime):
        """Upload with retries of transient host errors; returns (Uploaded, attempts used)."""
        attempt = task.attempt
        refreshed = False
        while True:
            self._wait_at_gate(task)
            version = self._use_current_token()
            try:
                uploaded = self.host.upload(data, filename=filename, mime=mime)
            except HostError as exc:
                self._observe(getattr(exc, "rate", None))
                exc.attempts = attempt
                if isinstance(exc, AuthRejectedError) and self.credentials is not None:
                    if refreshed:
                        raise
                    refreshed = True
                    self.credentials.refresh(version, str(exc))  # once for the whole pool
                    continue
                if not isinstance(exc, RetryableHostError) or attempt >= self.config.imgur.max_attempts:
                    raise
                delay = self._backoff(attempt, exc.retry_after)
                log.info("job %s: %s: %s; retrying in %.1f s", task.job_id, task.url, exc, delay)
                if exc.pool_wide and self.gate is not None:
                    self.gate.pause(delay, f"Imgur asked us to slow down: {exc}")
                else:
                    time.sleep(delay)
                attempt += 1
                self.results.put(jobs.Attempt(task.url_id, self.index, self.generation, attempt))
                continue
            self._observe(uploaded.rate)
            return uploaded, attempt

    def _use_current_token(self):
        """Point the host at the pool's current token; fail at once if Imgur refused it for good."""
        if self.credentials is None:
            return None
        token, version, rejected = self.credentials.current()
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

    def _observe(self, rate) -> None:
        if self.gate is not None:
            self.gate.observe(None if rate is None else vars(rate))

    def _backoff(self, attempt: int, retry_after) -> float:
        """Exponential backoff with full jitter; the host's own Retry-After wins when given."""
        if retry_after is not None:
            return float(retry_after)
        b = self.config.imgur.backoff
        return random.uniform(0, min(b.max_seconds, b.base_seconds * 2 ** (attempt - 1)))

    def _result(self, task, state, started, **fields) -> jobs.Result:
        return jobs.Result(
            url_id=task.url_id, worker=self.index, generation=self.generation, state=state,
            seconds=time.monotonic() - started, **fields,
        )


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
