"""Nothing the service starts outlives its front end, however the front end dies.

    front end: holds the only write end of one pipe, and never writes to it
    manager, each worker: a thread waits on a copy of the read end; EOF -> exit at once
    fork server, resource tracker: wait for EOF on pipes every child holds a write end of,
        so they end as soon as the children have

The kernel closes the write end when the front end dies, by any signal (SIGKILL, the
OOM killer) or by a normal exit, so every child sees EOF within moments, whatever it
is doing (a slot asleep at the upload gate for a long pause included), and ends with
its database sessions. Watching the parent's pid would not do: a child's parent is the
fork server, which outlives the front end for as long as any child holds its pipe.
(``prctl(PR_SET_PDEATHSIG)`` has the same flaw, and fires when the parent *thread* ends.)
"""
import os
import threading

# A child's exit code when the front end is gone (nobody reads it: there is no one left).
ORPHANED = 76


class Lifeline:
    """In the front end: hand ``end`` to every child process, which calls ``watch(end)``."""

    def __init__(self, ctx):
        # a multiprocess Connection pickles into a child started from the fork server
        self.end, self._held = ctx.Pipe(duplex=False)


def watch(end) -> None:
    """In a child: end this process at once when the front end is gone."""

    def wait():
        try:
            end.recv_bytes()  # nothing is ever sent: this returns only by EOF
        except (EOFError, OSError):
            pass
        os._exit(ORPHANED)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
