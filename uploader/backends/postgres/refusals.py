"""Connections PostgreSQL refused for want of room, in this process, until they succeed.

A server with every slot taken (``max_connections``, SQLSTATE 53300 "sorry, too many
clients already"), a role's or database's ``CONNECTION LIMIT`` (53300 too) or a full
PgBouncer ("no more connections allowed") refuses a new connection. Nothing is lost: the
writer's turn, a pool and the listener try again by themselves. But the instance runs
short of connections meanwhile, and an operator must hear why: each failed attempt is
noted under the role of the connection (``writer``, ``readers``, ...) and forgotten when
that role connects again; ``/healthz`` reports what is noted (a worker process tells the
front end through its pipe: ``subscribe``).

Libpq gives no SQLSTATE for a refused connection, only the server's message: it is
recognised by its words (the server's messages are in English unless ``lc_messages``
says otherwise).
"""
import logging
import threading
from typing import Callable, Dict, List, Optional

log = logging.getLogger(__name__)

REFUSED_WORDS = ("too many clients already", "too many connections for",
                 "no more connections allowed")


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` says the server (or a pooler) has no room for another connection."""
    if getattr(exc, "sqlstate", None) == "53300":
        return True
    text = str(exc)
    return any(words in text for words in REFUSED_WORDS)


class Refusals:
    """This process's refused connections, by role (see the module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_role: Dict[str, str] = {}
        self._subscribers: List[Callable[[Optional[str]], None]] = []

    def failed(self, role: str, exc: BaseException) -> None:
        """A connection attempt for ``role`` failed; noted if it was refused for want of room."""
        if is_refusal(exc):
            self._change(role, " ".join(str(exc).split()))

    def connected(self, role: str) -> None:
        if role in self._by_role:
            self._change(role, None)

    def summary(self) -> Optional[str]:
        """One line naming what is refused now and why, or None."""
        with self._lock:
            if not self._by_role:
                return None
            roles = ", ".join(sorted(self._by_role))
            reason = self._by_role[min(self._by_role)]
        return (f"PostgreSQL refused connections ({roles}): {_server_words(reason)};"
                " retrying. Raise max_connections (or the pooler's limits) or lower"
                " storage.read_connections / storage.shared_connections")

    def subscribe(self, callback: Callable[[Optional[str]], None]) -> None:
        """``callback(summary())`` whenever it changes (from the thread that connected)."""
        self._subscribers.append(callback)

    def _change(self, role: str, reason: Optional[str]) -> None:
        with self._lock:
            before = dict(self._by_role)
            if reason is None:
                self._by_role.pop(role, None)
            else:
                self._by_role[role] = reason
            changed = before != self._by_role
        if changed and reason is not None and role not in before:
            log.warning("PostgreSQL refused a connection (%s): %s", role, _server_words(reason))
        elif changed and reason is None:
            log.info("PostgreSQL accepted a connection (%s) again", role)
        if changed:
            summary = self.summary()
            for callback in list(self._subscribers):
                callback(summary)


def _server_words(message: str) -> str:
    """The server's own sentence out of libpq's message (which names host and port first)."""
    for marker in ("FATAL:", "ERROR:"):
        if marker in message:
            return message.split(marker, 1)[1].strip()
    return message


refusals = Refusals()  # this process's
