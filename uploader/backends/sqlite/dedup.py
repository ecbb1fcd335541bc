"""No duplicate uploads: identical bytes (by SHA-256) reuse the link they already have.

This is the embedded index: it lives in the multiprocessing manager, shared by every
worker of the instance (``postgres.coordinator`` keeps the same promises for a cluster). Its
keys are (account, SHA-256): bytes are shared within an account only, so every link has
one owner who may delete it. A worker that has fetched an image calls ``claim(key, owner)``:

- ``("reuse", link)``: these bytes are already on this host (this run, or any earlier
  one: the store is asked, read-only), so no credit is spent;
- ``("upload", None)``: the caller owns the upload and must ``publish`` or ``release``;
- ``("wait", None)``: another worker is uploading the same bytes right now; ask again.

Claims of a worker that died are dropped with ``release_owner``, so nobody waits forever.
"""
import threading
from typing import Callable, Dict, Optional, Tuple


class DedupIndex:
    def __init__(self, lookup: Callable[[tuple], Optional[str]]):
        """``lookup(key)``: the link the store has for these bytes on this host (not
        deleted), or None."""
        self.lookup = lookup
        self._published: Dict[tuple, str] = {}
        self._claims: Dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    def claim(self, key: tuple, owner: tuple) -> Tuple[str, Optional[str]]:
        with self._lock:
            link = self._published.get(key) or self.lookup(key)
            if link:
                return "reuse", link
            holder = self._claims.get(key)
            if holder is not None and holder != owner:
                return "wait", None
            self._claims[key] = owner
            return "upload", None

    def publish(self, key: tuple, link: str) -> None:
        with self._lock:
            self._published[key] = link
            self._claims.pop(key, None)

    def release(self, key: tuple) -> None:
        with self._lock:
            self._claims.pop(key, None)

    def forget(self, key: tuple) -> None:
        """The link of these bytes was deleted: they are uploaded afresh next time."""
        with self._lock:
            self._published.pop(key, None)

    def release_owner(self, worker: int, generation: int) -> None:
        """Drop every claim held by a worker process (identified by index and generation) that ended."""
        with self._lock:
            for key, holder in list(self._claims.items()):
                if holder[:2] == (worker, generation):
                    del self._claims[key]
