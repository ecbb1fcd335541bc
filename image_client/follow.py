"""Following a job to its end: a progress bar while it runs, its table when it is done."""
import sys
import time

try:
    from tqdm import tqdm
except ImportError:  # optional: plain progress lines without it
    tqdm = None

from .api import ClientError

FINAL_STATES = ("complete", "failed")
CALLBACK_GRACE = 5.0  # seconds a finished job is watched further while its webhook is pending


class _Progress:
    """A tqdm bar on stderr, or plain ``done/total`` lines when tqdm is not installed."""

    def __init__(self, total, job_id):
        self.done, self.total = 0, total
        self.bar = tqdm(total=total, unit="url", desc=f"job {job_id}", file=sys.stderr) if tqdm else None

    def update(self, done):
        if done != self.done:
            if self.bar is not None:
                self.bar.update(done - self.done)
            else:
                print(f"{done}/{self.total} done", file=sys.stderr, flush=True)
            self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()


def job_progress(job, submitted):
    """(URLs finished, URLs in the job). The service keeps one of each duplicate (also when
    spelled differently), so the total is what its document lists, not how many were
    ``submitted``; that count is only the fallback for a document without a list."""
    urls = job.get("urls")
    if isinstance(urls, list):
        done = sum(1 for item in urls if isinstance(item, dict) and item.get("state") in FINAL_STATES)
        return done, len(urls)
    uploaded = job.get("uploaded") or {}
    done = len(uploaded.get("complete") or ()) + len(uploaded.get("failed") or ())
    return done, (done + len(uploaded.get("pending") or ())) or submitted


def wait(api, job_id, submitted, *, interval, timeout=None):
    """Poll until the job is complete, showing progress; return the final job.

    A webhook is delivered after its job completes: while it is still ``pending`` the
    polls go on for up to CALLBACK_GRACE seconds (never past --timeout), so the report
    can say how it went; then the job is reported whatever the webhook's state.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = completed = None
    try:
        while True:
            job = api.job(job_id)
            done, total = job_progress(job, submitted)
            if progress is None:  # the first answer says how many URLs the job really has
                progress = _Progress(total, job_id)
            progress.update(done)
            now = time.monotonic()
            if job.get("status") == "complete":
                completed = completed or now
                patience = completed + CALLBACK_GRACE
                if deadline is not None:
                    patience = min(patience, deadline)
                if _callback(job).get("state") != "pending" or now + interval > patience:
                    return job
            elif deadline is not None and now + interval > deadline:
                raise ClientError(f"timed out after {timeout:g}s; job {job_id} goes on in the service")
            time.sleep(interval)
    finally:
        if progress is not None:
            progress.close()


def _callback(job):
    callback = job.get("callback")
    return callback if isinstance(callback, dict) else {}


def report(job):
    """The final table, one line per URL (with the webhook's state last, if the job has
    one), and whether every URL was uploaded. An uploaded entry shows its image id, for
    ``bin/upload delete``; one deleted since is marked GONE (it was uploaded: it counts
    as such)."""
    lines, all_ok = [], True
    for item in job.get("urls") or []:
        if item.get("state") == "complete" and item.get("link"):
            notes = [f"image {item['image_id']}"] if item.get("image_id") else []
            notes += ["deleted"] if item.get("deleted") else []
            lines.append(f"{'GONE' if item.get('deleted') else 'OK':<4}  {item.get('url')}  ->  "
                         f"{item['link']}" + (f"  ({', '.join(notes)})" if notes else ""))
        else:
            all_ok = False
            reason = item.get("reason") or f"not uploaded ({item.get('state')})"
            lines.append(f"FAIL  {item.get('url')}  :  {reason}")
    if not job.get("urls"):  # a service without per-URL detail: report what it has
        uploaded = job.get("uploaded") or {}
        lines += [f"OK    {link}" for link in uploaded.get("complete", ())]
        lines += [f"FAIL  {url}  :  failed" for url in uploaded.get("failed", ())]
        all_ok = not uploaded.get("failed")
    callback = _callback(job)
    if callback:
        attempts = callback.get("attempts") or 0
        line = (f"callback  {callback.get('url')}  :  {callback.get('state')}, "
                f"{attempts} attempt{'' if attempts == 1 else 's'}")
        if callback.get("last_error"):
            line += f"; last error: {callback['last_error']}"
        lines.append(line)
    return lines, all_ok
