"""The worker process: fetch each URL's bytes, upload them, report the outcome.

A worker is long-lived. It builds its fetcher and its image-host session once, after
it starts, and runs ``workers.uploads_per_process`` slot threads that each take a task
from the worker's own inbox queue, handle it, and put a ``Result`` on the shared result
queue. ``None`` in the inbox stops one slot. Only small records cross the process
boundary; errors travel as their message.
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
from .errors import FetchError, HostError, RetryableHostError
from .fetch import Fetcher
from .hosts.local import LocalHost
from .logs import setup_logging

log = logging.getLogger(__name__)


def run(index, generation, inbox, results, config, limiter):
    """Process entry point (a top-level function, so it can be spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when we stop
    setup_logging(config.logging.level, config.logging.format)
    exit_with_parent(os.getppid())
    worker = Worker(index, generation, config, results, limiter)
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

    def __init__(self, index, generation, config, results, limiter):
        self.index = index
        self.generation = generation
        self.config = config
        self.results = results
        self.limiter = limiter if config.resolved_image_host == "imgur" else None
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
            filename = upload_name(fetched.final_url, fetched.ext)
            uploaded, attempts = self._upload(task, fetched.data, filename, fetched.mime)
        except (FetchError, HostError) as exc:
            log.info("job %s: %s failed: %s", task.job_id, task.url, exc)
            return self._result(task, jobs.FAILED, started, attempts=attempts, reason=str(exc))
        except Exception as exc:  # a bug must not kill the slot or lose the URL
            log.exception("job %s: %s failed unexpectedly", task.job_id, task.url)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            return self._result(task, jobs.FAILED, started, attempts=attempts, reason=reason)
        log.info("job %s: %s uploaded as %s", task.job_id, task.url, uploaded.link)
        return self._result(task, jobs.COMPLETE, started, attempts=attempts,
                            link=uploaded.link, sha256=digest)

    def _upload(self, task, data, filename, mime):
        """Upload with retries of transient host errors; returns (Uploaded, attempts used)."""
        attempt = task.attempt
        while True:
            self._wait_for_turn()
            try:
                return self.host.upload(data, filename=filename, mime=mime), attempt
            except RetryableHostError as exc:
                if attempt >= self.config.imgur.max_attempts:
                    raise
                delay = self._backoff(attempt, exc.retry_after)
                if exc.pool_wide and self.limiter is not None:
                    self.limiter.pause(delay)
                log.info("job %s: %s: %s; retrying in %.1f s", task.job_id, task.url, exc, delay)
                time.sleep(delay)
                attempt += 1
                self.results.put(jobs.Attempt(task.url_id, self.index, self.generation, attempt))

    def _wait_for_turn(self) -> None:
        if self.limiter is not None:
            delay = self.limiter.reserve()
            if delay > 0:
                time.sleep(delay)

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
