"""The courier: carries out the outbox's effects, each on a thread of its own, until done.

    outbox --claim (as many as threads are free)--> courier thread --> delivery threads
            <--record (done | again later | failed)----------------------------+

One claiming thread per instance and ``webhooks.concurrency`` delivery threads: a slow
receiver holds the thread of its own delivery, never another's (one thread delivering
one at a time let four slow receivers delay another key's webhook by 40 s). Claims and
records go through the dispatcher (the one writer: ``call``). The effects:

    webhook      POST the job document (its bytes fixed at the first attempt, so every
                 retry sends the same) to the job's callback_url, signed when a secret is
                 set; a non-2xx answer or a timeout is tried again after an exponential
                 backoff with full jitter, up to webhooks.max_attempts; an address the
                 policy refuses fails at once, without a request.
    host_delete  remove an image's bytes at the image host, owed since the client deleted
                 it (the image left the API in that same commit); the same tries and
                 backoff as a webhook's. Should the host refuse for good (or this service
                 no longer use that host), the link is live again: listed, reused by
                 dedup, not deleted in its jobs, as it still is at the host.

A claim is held for a while; an instance that dies mid-attempt lets it go, and the effect
is carried out again (at least once: a receiver tells retries apart by
``X-Uploader-Delivery``). The attempt cut short still counts (it is counted when
claimed), so a receiver never gets more than ``max_attempts`` requests. An effect is
claimed only when a thread is free to carry it out at once, so no claim waits in line.
The courier sleeps until the next effect is due, a commit adds one or a delivery ends
(``wake``: it claims at once), or ``poll_seconds`` (effects added by other instances: it
reads whether one is due, and claims only then).
"""
import json
import logging
import queue
import threading
from typing import Optional
from urllib.parse import urlsplit

from .errors import HostError, RetryableHostError, StoreUnavailable
from .render import job_document
from .backends.outbox import DONE, FAILED, PENDING, Effect
from .webhook import WebhookSender, backoff_seconds

log = logging.getLogger(__name__)

OUTAGE_SECONDS = 2.0  # wait this long when the store cannot be reached


class Courier:
    def __init__(self, *, call, store, metrics, delete_at_host, host: str, webhooks, fetch,
                 poll_seconds: float):
        """``call(fn)``: run ``fn(store)`` on the writer's thread, a future of its result
        (``Dispatcher.call``); ``host``: the image host in use; ``webhooks``, ``fetch``:
        those sections of the configuration (a callback's address is judged like an image
        source's); ``poll_seconds``: how often to look for effects others added."""
        self.call = call
        self.store = store
        self.metrics = metrics
        self.delete_at_host = delete_at_host
        self.host = host
        hooks = webhooks
        self.concurrency = hooks.concurrency
        self.max_attempts = hooks.max_attempts
        self.backoff = hooks.backoff
        self.hold_seconds = hooks.timeout_seconds * 2 + 30  # longer than any one attempt
        self.poll_seconds = poll_seconds
        self.sender = WebhookSender(
            timeout_seconds=hooks.timeout_seconds, max_redirects=fetch.max_redirects,
            allow_private_networks=fetch.allow_private_networks,
            private_hosts_allowed=fetch.private_hosts_allowed, only_hosts=fetch.only_hosts,
            denied_hosts=fetch.denied_hosts, secret=hooks.secret)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="courier", daemon=True)
        self._handed: "queue.SimpleQueue[Optional[Effect]]" = queue.SimpleQueue()
        self._carrying = 0  # effects claimed and not yet recorded (guarded by _lock)
        self._lock = threading.Lock()
        self._deliverers = [threading.Thread(target=self._deliverer, name=f"courier-{n}",
                                             daemon=True) for n in range(self.concurrency)]

    def start(self) -> None:
        for thread in self._deliverers:
            thread.start()
        self._thread.start()

    def wake(self) -> None:
        """Thread-safe: an effect was added; look now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for _ in self._deliverers:
            self._handed.put(None)

    # -- the loops ---------------------------------------------------------------------------
    def _run(self) -> None:
        """Claim as many due effects as threads are free, hand them over, sleep. Woken by
        its timer alone (no commit added an effect, no delivery ended), it first reads
        whether one is due and claims only then: an idle instance's look every
        ``poll_seconds`` is a read, not a transaction of the writer's as well."""
        told = True  # the first look claims at once
        while not self._stop.is_set():
            try:
                with self._lock:
                    free = self.concurrency - self._carrying
                if free <= 0:
                    wait = self.poll_seconds  # until a delivery ends (it wakes us)
                else:
                    due = None if told else self.store.next_effect_in()
                    if told or (due is not None and due <= 0):
                        effects = self._call(
                            lambda store: store.claim_effects(free, self.hold_seconds))
                        if effects:
                            with self._lock:
                                self._carrying += len(effects)
                            for effect in effects:
                                self._handed.put(effect)
                            continue  # more may be due
                        due = self.store.next_effect_in()
                    wait = self.poll_seconds if due is None else min(due, self.poll_seconds)
            except StoreUnavailable as exc:
                log.debug("courier: the store is unreachable (%s)", exc)
                wait = OUTAGE_SECONDS
            except Exception:
                log.exception("courier: could not claim effects")
                wait = OUTAGE_SECONDS
            told = self._wake.wait(wait)
            self._wake.clear()

    def _deliverer(self) -> None:
        """One delivery thread: carry out what it is handed, one effect at a time."""
        while (effect := self._handed.get()) is not None:
            try:
                if not self._stop.is_set():  # else its claim runs out: carried out later
                    self._carry_out(effect)
            except StoreUnavailable as exc:  # the outcome was not recorded: the claim runs
                log.warning("courier: could not record %s %s (%s); it will be carried out "
                            "again", effect.kind, effect.id, exc)  # out, and it goes again
            except Exception:
                log.exception("courier: %s %s could not be carried out", effect.kind, effect.id)
            finally:
                with self._lock:
                    self._carrying -= 1
                self._wake.set()

    def _call(self, fn):
        return self.call(fn).result()

    def _carry_out(self, effect: Effect) -> None:
        if effect.attempts >= self.max_attempts:  # the last was cut short: none is left
            log.warning("courier: %s %s has no attempts left (the last one was cut short by a"
                        " stop); given up", effect.kind, effect.id)
            error = (f"no attempts left: the last of {self.max_attempts} was cut short (the "
                     "service stopped during it)")
            if effect.kind == "host_delete":
                self._give_up_deletion(effect, error, attempted=False)
                return
            self._record(effect, FAILED, error, attempted=False)
            self.metrics.webhook("failed")
            return
        if effect.kind == "webhook":
            self._deliver(effect)
        elif effect.kind == "host_delete":
            self._delete(effect)
        else:
            log.error("courier: unknown effect %r; dropped", effect.kind)
            self._record(effect, FAILED, f"unknown effect {effect.kind!r}")

    def _record(self, effect: Effect, state: str, error, retry_in: float = 0.0,
                attempted: bool = True) -> None:
        kept = self._call(lambda store: store.record_effect(effect.id, state=state, error=error,
                                                            retry_in=retry_in,
                                                            attempted=attempted))
        if not kept:
            log.warning("courier: the claim on %s %s ran out before it was recorded; it will "
                        "be carried out again", effect.kind, effect.id)

    # -- webhooks ----------------------------------------------------------------------------
    def _deliver(self, effect: Effect) -> None:
        body = effect.body
        if body is None:  # the first attempt fixes the bytes every retry sends
            found = self.store.read_job(effect.job_id)
            body = json.dumps(job_document(*found))
            self._call(lambda store: store.set_effect_body(effect.id, body))
        attempt = effect.attempts + 1
        outcome = self.sender.send(effect.target, body.encode(), delivery_id=effect.id)
        where = _shown(effect.target)
        if outcome.delivered:
            self._record(effect, DONE, None)
            self.metrics.webhook("delivered")
            log.info("webhook %s for job %s to %s: delivered (HTTP %s) on attempt %d",
                     effect.id, effect.job_id, where, outcome.status, attempt)
        elif outcome.refused or attempt >= self.max_attempts:
            self._record(effect, FAILED, outcome.error)
            self.metrics.webhook("refused" if outcome.refused else "failed")
            log.warning("webhook %s for job %s to %s: %s on attempt %d; given up", effect.id,
                        effect.job_id, where, outcome.error, attempt)
        else:
            delay = backoff_seconds(attempt, base=self.backoff.base_seconds,
                                    maximum=self.backoff.max_seconds)
            self._record(effect, PENDING, outcome.error, delay)
            self.metrics.webhook("retried")
            log.info("webhook %s for job %s to %s: %s on attempt %d of %d; again in %.1f s",
                     effect.id, effect.job_id, where, outcome.error, attempt, self.max_attempts,
                     delay)

    # -- deletions at the host ---------------------------------------------------------------
    def _delete(self, effect: Effect) -> None:
        attempt = effect.attempts + 1
        body = json.loads(effect.body or "{}")
        host, link = body.get("host"), body.get("link", "")
        if host and host != self.host:
            self._give_up_deletion(effect, f"the image is on the {host} host, which this "
                                           "service no longer uses; delete it there")
            return
        if link and self.store.link_live(link):  # the same bytes were uploaded again since
            self._record(effect, DONE, None)  # (S3 names an object by its bytes): kept
            log.info("an image deleted earlier was uploaded again; kept at the host (%s)",
                     _shown(link))
            return
        try:
            self.delete_at_host(effect.target)
        except RetryableHostError as exc:
            if attempt < self.max_attempts:
                delay = backoff_seconds(attempt, base=self.backoff.base_seconds,
                                        maximum=self.backoff.max_seconds)
                self._record(effect, PENDING, str(exc), delay)
                self.metrics.host_deletion("retried")
                log.info("the host could not delete an image on attempt %d of %d (%s); again "
                         "in %.1f s", attempt, self.max_attempts, exc, delay)
                return
            self._give_up_deletion(effect, f"{exc} (attempt {attempt} of {self.max_attempts})")
            return
        except HostError as exc:
            self._give_up_deletion(effect, f"the host refused: {exc}")
            return
        self._record(effect, DONE, None)
        self.metrics.host_deletion("deleted")
        log.info("the host deleted an image on attempt %d", attempt)

    def _give_up_deletion(self, effect: Effect, error: str, attempted: bool = True) -> None:
        """The bytes stay at the host: so does the link, live again, in one transaction with
        the effect's failure (never a link that looks deleted while its image is there)."""
        body = json.loads(effect.body or "{}")
        link, account = body.get("link", ""), body.get("account", "")

        def give_up(store):
            kept = store.record_effect(effect.id, state=FAILED, error=error, attempted=attempted)
            if kept and link:
                store.restore_link(link, account)
            return kept

        if not self._call(give_up):
            log.warning("courier: the claim on host_delete %s ran out before it was recorded; "
                        "it will be carried out again", effect.id)
            return
        self.metrics.host_deletion("failed")
        log.error("could not delete %s at the host: %s; its link is live again (listed, and "
                  "no longer deleted in its jobs)", _shown(link), error)


def _shown(url: str) -> str:
    """A URL fit for a log line: no query or user info (they may hold tokens)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
    except ValueError:
        return "(an unparseable URL)"
