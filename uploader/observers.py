"""What the dispatcher's turns tell the metrics and the log, once a turn has committed.

The dispatcher and its parts neither count nor log an outcome themselves: they emit a
hook (``emit``), and each observer implements the hooks it cares about, the rest being
no-ops (the shape of dramatiq's middleware). The hooks:

    job_created(job_id, urls)                       a job was committed
    url_waiting(url_id)                             a URL in flight waits for the host's limits
    url_finished(task, result)                      a worker's result was recorded
    url_failed(job_id, url, reason, attempts, kind) the dispatcher failed a URL itself
                                                    (kind: worker_died, service_died)
    worker_died(worker)                             a worker process died (not in a stop)

Lines about the service's own state (the store gone, a lease lost, a worker dead) are
logged where they are found, at once, not here.
"""
import logging

from . import jobs

log = logging.getLogger("uploader.dispatcher")  # the log lines keep their logger's name


class Observer:
    """Every hook, doing nothing: an observer overrides the ones it needs."""

    def job_created(self, job_id, urls) -> None:
        pass

    def url_waiting(self, url_id) -> None:
        pass

    def url_finished(self, task, result) -> None:
        pass

    def url_failed(self, job_id, url, reason, attempts, kind) -> None:
        pass

    def worker_died(self, worker) -> None:
        pass


class Observers:
    """Several observers as one, called in order."""

    def __init__(self, *observers: Observer):
        self.observers = observers

    def emit(self, hook: str, *args) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:  # one observer's fault must not silence the others
                log.exception("observer %r failed on %s", observer, hook)


class MetricsObserver(Observer):
    def __init__(self, metrics):
        self.metrics = metrics

    def job_created(self, job_id, urls) -> None:
        self.metrics.job_submitted(len(urls))

    def url_waiting(self, url_id) -> None:
        self.metrics.waiting()

    def url_finished(self, task, result) -> None:
        self.metrics.result(result)

    def url_failed(self, job_id, url, reason, attempts, kind) -> None:
        self.metrics.failed(kind)

    def worker_died(self, worker) -> None:
        self.metrics.worker_died()


class LogObserver(Observer):
    """One line per URL outcome (``log_outcome``)."""

    def url_finished(self, task, result) -> None:
        log_outcome(task.job_id, task.url, result.state, link=result.link, reason=result.reason,
                    attempts=result.attempts, seconds=result.seconds, reused=result.reused)

    def url_failed(self, job_id, url, reason, attempts, kind) -> None:
        log_outcome(job_id, url, jobs.FAILED, reason=reason, attempts=attempts)


def observers_for(metrics) -> Observers:
    """The service's observers: metrics first, then the log."""
    return Observers(MetricsObserver(metrics), LogObserver())


def log_outcome(job_id, url, state, *, link=None, reason=None, attempts=0, seconds=None,
                reused=False) -> None:
    """The one log line per URL outcome (fields also go to JSON logs as keys)."""
    outcome = "reused" if reused else state
    detail = link if state == jobs.COMPLETE else reason
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    log.info("job %s: %s %s: %s (attempts %d%s)", job_id, url, outcome, detail, attempts, took,
             extra={"job_id": job_id, "url": url, "outcome": outcome, "link": link,
                    "reason": reason, "attempts": attempts, "duration": seconds})
