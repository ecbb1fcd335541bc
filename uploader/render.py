"""The job document: what ``GET /v1/images/upload/<id>`` answers, built from store rows.

The seed's keys (``id``, ``created``, ``finished``, ``status``, ``uploaded``) plus:
``retry_of`` (the job this one retries, or null), ``callback`` (the completion webhook's
state, or null) and ``urls``: each URL in submission order with its state, link or
reason, attempts, whether its link was reused from identical bytes, its image's id (to
delete it) and whether it was deleted, what it waits for, and how much of its image has
been fetched while it is in flight.
"""
from typing import Iterable, Optional

from . import jobs


def job_document(job: tuple, rows: Iterable[tuple], callback: Optional[tuple] = None) -> dict:
    """``job``, ``rows`` and ``callback`` as ``SqlStore.read_job`` returns them."""
    job_id, created, finished, status, retry_of, callback_url = job
    pending, complete, failed, details = [], [], [], []
    for (_, url, state, link, reason, attempts, reused, waiting_until, waiting_reason,
         received, total, image_id, deleted) in rows:
        if state == jobs.COMPLETE:
            complete.append(link)
        elif state == jobs.FAILED:
            failed.append(url)
        else:
            pending.append(url)
        details.append({
            "url": url, "state": state, "link": link, "reason": reason,
            "attempts": attempts, "reused": bool(reused),
            "image_id": image_id if state == jobs.COMPLETE else None,
            "deleted": deleted is not None,
            "waiting": None if waiting_until is None else {
                "until": jobs.format_timestamp(waiting_until), "reason": waiting_reason},
            "progress": ({"bytes": received or 0, "total": total}
                         if state == jobs.IN_FLIGHT else None),
        })
    return {
        "id": job_id,
        "created": jobs.format_timestamp(created),
        "finished": jobs.format_timestamp(finished) if status == jobs.JOB_COMPLETE else None,
        "status": status,
        "uploaded": {"pending": pending, "complete": complete, "failed": failed},
        "retry_of": retry_of,
        "callback": _callback(callback_url, callback),
        "urls": details,
    }


def _callback(url: Optional[str], delivery: Optional[tuple]) -> Optional[dict]:
    if not url:
        return None
    state, attempts, last_error = delivery or ("pending", 0, None)
    shown = {"pending": "pending", "done": "delivered", "failed": "failed"}[state]
    return {"url": url, "state": shown, "attempts": attempts, "last_error": last_error}


def job_summary(row: tuple) -> dict:
    """One entry of ``GET /v1/images/upload`` from a ``SqlStore.list_jobs`` row."""
    job_id, created, finished, status, remaining, completed, failed, retry_of = row
    return {"id": job_id, "created": jobs.format_timestamp(created),
            "finished": jobs.format_timestamp(finished) if status == jobs.JOB_COMPLETE else None,
            "status": status,
            "counts": {"pending": remaining, "complete": completed, "failed": failed},
            "retry_of": retry_of}
