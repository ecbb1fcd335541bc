"""Retention: finished jobs do not pile up forever.

One thread per instance. Every ``retention.check_seconds`` it prunes what finished more
than ``retention.finished_jobs_seconds`` ago (0 keeps everything: no thread), batch
after batch (``store.prune``: short transactions on a connection of its own, off the
dispatcher's path) until nothing is left or another instance of the cluster is at it.
Between batches it rests as long as the batch took, so a first prune of a large store
never holds the database (or SQLite's one writer lock) for more than half the time.
"""
import logging
import threading
import time

from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class Pruner:
    def __init__(self, store, *, older_than: float, every: float, metrics):
        self.store = store
        self.older_than = older_than
        self.every = every
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pruner", daemon=True)

    def start(self) -> None:
        if self.older_than > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.prune()

    def prune(self) -> dict:
        """Batches until nothing is past retention; the rows deleted, by table."""
        pruned = {}
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                deleted = self.store.prune(self.older_than)
                if not deleted:  # nothing left, or another instance prunes
                    break
                self.metrics.pruned(deleted)
                for table, rows in deleted.items():
                    pruned[table] = pruned.get(table, 0) + rows
                self._stop.wait(time.monotonic() - began)
        except StoreUnavailable as exc:
            log.warning("could not prune finished jobs (%s); again in %.0f s", exc, self.every)
        except Exception:
            log.exception("could not prune finished jobs; again in %.0f s", self.every)
        finally:
            self.store.end_pruning()
        if pruned:
            log.info("pruned finished jobs older than %.0f s: %s", self.older_than,
                     ", ".join(f"{rows} rows of {table}" for table, rows in sorted(pruned.items())))
        return pruned
