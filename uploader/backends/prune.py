"""Pruning: finished jobs past their retention leave the store, with what only they use.

A job finished longer ago than ``retention.finished_jobs_seconds`` is deleted with its
URL records and its settled webhook delivery; so are settled host deletions that old
(the outbox's rows with no job). A job with a delivery still pending waits until it is
settled; a job not finished is never touched. Links are not the job's: they stay listed,
deduplicating and deletable (nothing in ``links`` points at a job).

One batch (``prune``) is one short transaction on a connection of its own, never the
dispatcher's: finished jobs, oldest first, as many as hold 1,000 URLs between them (at
least one), each statement deleting at most ``ROWS`` rows, so no statement or
transaction grows with the store. A cluster prunes from one instance at a time: each
batch takes a transaction-scoped advisory lock first, and skips its turn if another
instance holds it (nothing outlives the transaction: PgBouncer).

SQLite keeps the pages freed on its freelist and fills them before it grows the file,
so a store pruned as fast as it fills stays the size of its retention window.
"""
from typing import Dict, List, Optional

ROWS = 1000  # the most rows one statement deletes
JOBS = 500  # the most jobs one batch takes (a statement's parameters stay few)
PRUNE_LOCK = 4_771_020_002  # pg_try_advisory_xact_lock key: one pruning instance at a time

# ``finished < ?``, a value, not the clock's expression: PostgreSQL's clock is volatile,
# and compared with it the index would give the order only, every job read for the test.
PRUNABLE = ("SELECT id, completed + failed FROM jobs WHERE finished < ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = jobs.id"
            " AND o.state = 'pending') ORDER BY finished LIMIT ?")
SETTLED_WITHOUT_JOB = ("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                       " WHERE job_id IS NULL AND state <> 'pending' AND done < ?"
                       " LIMIT ?)")


class PruneQueries:
    """Mixed into ``SqlStore``; the backend supplies ``_pruning()``: a transaction on a
    connection of the pruner's own (or None: another instance prunes now)."""

    def _pruning(self):
        raise NotImplementedError

    def end_pruning(self) -> None:
        """The pruner is done for now: what it held may go."""

    def prune(self, older_than: float) -> Optional[Dict[str, int]]:
        """Delete one batch of what is past ``older_than`` seconds; returns the rows
        deleted by table ({} once nothing is left), or None when another instance is
        pruning."""
        with self._pruning() as run:
            if run is None:
                return None
            deleted = {}
            before = run("SELECT {now} - ?", (older_than,)).fetchone()[0]  # the database's clock
            jobs = _batch(run(PRUNABLE, (before, JOBS)).fetchall())
            if jobs:
                marks = ", ".join("?" for _ in jobs)
                deleted["urls"] = 0
                while True:
                    gone = run(f"DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE job_id"
                               f" IN ({marks}) LIMIT ?)", (*jobs, ROWS)).rowcount
                    deleted["urls"] += gone
                    if gone < ROWS:
                        break
                deleted["outbox"] = run(f"DELETE FROM outbox WHERE job_id IN ({marks})"
                                        " AND state <> 'pending'", jobs).rowcount
                deleted["jobs"] = run(f"DELETE FROM jobs WHERE id IN ({marks})", jobs).rowcount
            else:  # the jobs are done with: settled host deletions as old
                deleted["outbox"] = run(SETTLED_WITHOUT_JOB, (before, ROWS)).rowcount
        return {table: n for table, n in deleted.items() if n}


def _batch(rows) -> List[str]:
    """The oldest jobs whose URLs number at most ``ROWS`` between them (at least one)."""
    taken, urls = [], 0
    for job_id, count in rows:
        if taken and urls + count > ROWS:
            break
        taken.append(job_id)
        urls += count
    return taken
