"""The job document: what ``GET /v1/images/upload/<id>`` answers, built from store rows.

The seed's keys (``id``, ``created``, ``finished``, ``status``, ``uploaded``) plus ``urls``:
each URL in submission order with its state, link or reason, attempts, whether its link
was reused from identical bytes, what it waits for, and how much of its image has been
fetched while it is in flight.
"""
from typing import Iterable

from . import jobs


def job_document(job: tuple, rows: Iterable[tuple]) -> dict:
    """``job`` and ``rows`` as ``SqlStore.read_job`` returns them."""
    job_id, created, finished, status = job
    pending, complete, failed, details = [], [], [], []
    for (_, url, state, link, reason, attempts, reused, waiting_until, waiting_reason,
         received, total) in rows:
        if state == jobs.COMPLETE:
            complete.append(link)
        elif state == jobs.FAILED:
            failed.append(url)
        else:
            pending.append(url)
        details.append({
            "url": url, "state": state, "link": link, "reason": reason,
            "attempts": attempts, "reused": bool(reused),
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
        "urls": details,
    }
