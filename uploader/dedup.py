"""No duplicate uploads: identical bytes (by SHA-256) reuse the link they already have.

This is the embedded index: it lives in the multiprocessing manager, shared by every
worker of the instance (``shared.postgres`` keeps the same promises for a cluster). A
worker that has fetched an image calls ``claim(sha256, owner)``:

- ``("reuse", link)``: these bytes are already on this host (this run, or any earlier
  one: the store is asked, read-only), so no credit is spent;
- ``("upload", None)``: the caller owns the upload and must ``publish`` or ``release``;
- ``("wait", None)``: another worker is uploading the same bytes right now; ask again.

Claims of a worker that died are dropped with ``release_owner``, so nobody waits forever.
"""
import threading
from typing import Callable, Dict, Optional, Tuple


class DedupIndex:
    def __init__(self, lookup: Callable[[str], Optional[str]]):
        """``lookup(sha256)``: the link the store has for these bytes on this host, or None."""
        self.lookup = lookup
        self._published: Dict[str, str] = {}
        self._claims: Dict[str, tuple] = {}
        self._lock = threading.Lock()

    def claim(self, sha256: str, owner: tuple) -> Tuple[str, Optional[str]]:
        with self._lock:
            link = self._published.get(sha256) or self.lookup(sha256)
            if link:
                return "reuse", link
            holder = self._claims.get(sha256)
            if holder is not None and holder != owner:
                return "wait", None
            self._claims[sha256] = owner
            return "upload", None

    def publish(self, sha256: str, link: str) -> None:
        with self._lock:
            self._published[sha256] = link
            self._claims.pop(sha256, None)

    def release(self, sha256: str) -> None:
        with self._lock:
            self._claims.pop(sha256, None)

    def release_owner(self, worker: int, generation: int) -> None:
        """Drop every claim held by a worker process (identified by index and generation) that ended."""
        with self._lock:
            for sha256, holder in list(self._claims.items()):
                if holder[:2] == (worker, generation):
                    del self._claims[sha256]
