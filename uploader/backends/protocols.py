"""What a backend promises: the calls of its store, its coordinator and its credential.

Declared once here, as ``typing.Protocol`` classes (dramatiq declares its ``Broker``,
procrastinate its ``BaseConnector``, the same way), so a caller reads one page to know
what it may ask, and a backend (``sqlite``, ``postgres``, ``memory``) one page to know
what it must answer. ``tests/unit/test_backends.py`` checks that every backend has every call
here with the same signature. Nothing outside the backends asks which backend it has:
what differs is said by the answers (``Store.clustered``, ``Store.listen``).
"""
from typing import (Callable, ContextManager, Dict, Iterator, List, Optional, Protocol,
                    Sequence, Tuple)

from ..jobs import Task

Owner = tuple  # (worker, generation): a worker process's life
Answer = Tuple[bool, float, str]  # a gate's (granted, moment on this clock, why not)


class Store(Protocol):
    """Jobs, the queue of URLs, the links and the outbox: what the dispatcher, the courier,
    the pruner and the API's readers use. The writer's calls run inside ``transaction``,
    in the dispatcher's thread (and the courier's); readers run in any thread."""

    #: True when other instances may use this store at once: work may be queued
    #: elsewhere (heard from ``listen``, or a poll), URLs are leased (``heartbeat``) and
    #: dead instances' URLs are taken back as they are found (``reap``) rather than at start.
    clustered: bool
    #: How long an instance's lease on its URLs lasts (None where there are no leases).
    lease_seconds: Optional[float]
    #: How many ``links`` listings may stream at once (None: any).
    listings_at_once: Optional[int]
    #: Set when a commit added effects for the courier; the dispatcher clears it.
    outbox_added: bool

    # -- the writer: jobs and the queue -----------------------------------------------------
    def transaction(self) -> ContextManager:
        """``with store.transaction():`` the writer's unit of work: all committed, or none."""

    def create_job(self, job_id: str, urls: Sequence[str], *, account: str = "",
                   retry_of: Optional[str] = None, callback_url: Optional[str] = None,
                   max_queued: int = 0) -> None:
        """Add a job and queue its URLs at the head of the account's rotation, all or
        nothing; ``QueueFull`` (nothing added) past ``max_queued`` URLs of the account."""

    def cancel(self, job_id: str, account: str) -> Optional[int]:
        """Fail the job's queued URLs: how many (None: no such job of this account)."""

    def claim(self, limit: int) -> List[Task]:
        """Up to ``limit`` queued URLs (no suspect) under a fresh lease, fairly across
        accounts and within one across jobs."""

    def claim_suspect(self) -> Optional[Task]:
        """The oldest queued suspect under a fresh lease, to run alone, or None."""

    def suspects_waiting(self) -> bool:
        """True while a suspect is queued (on any instance's queue)."""

    def work_queued(self) -> bool:
        """True while any URL is queued (on any instance's queue): a poll's one look,
        made by the writer outside a transaction."""

    def finish(self, task: Task, state: str, *, attempts: int, link: Optional[str] = None,
               reason: Optional[str] = None, sha256: Optional[str] = None,
               reused: bool = False, host: Optional[str] = None,
               deletehash: Optional[str] = None) -> bool:
        """Record a URL's final state and its link while its lease holds; False, changing
        nothing, once the lease is gone or the URL is final."""

    def finish_many(self, finishes: Sequence[Tuple[Task, str, dict]]) -> List[bool]:
        """``finish(task, state, **fields)`` for each, in order: what each returned."""

    def requeue(self, task: Task, *, refund: bool = False, suspect: bool = False) -> bool:
        """Hand a URL in flight back to the queue (its attempt kept unless ``refund``;
        ``suspect``: to run alone); False when its lease is gone."""

    def set_attempts(self, task: Task, attempts: int) -> None:
        """A URL in flight has used at least ``attempts`` tries (a crash still counts them)."""

    def set_waiting(self, task: Task, until: Optional[float], reason: Optional[str]) -> None:
        """A URL in flight waits for the host until ``until`` (None: no longer)."""

    def set_waiting_many(self, waits: Sequence[Tuple[Task, Optional[float], Optional[str]]]
                         ) -> None:
        """``set_waiting(task, until, reason)`` for each, one per URL, in one go."""

    def set_progress(self, task: Task, received: int, total: Optional[int]) -> None:
        """Bytes of a URL in flight fetched so far (and of how many, if known)."""

    def reap(self, max_attempts: int) -> Tuple[int, List[tuple]]:
        """Take back what dead instances held: (URLs queued again, [(url id, job id, url,
        attempts, reason)] of those failed for having used ``max_attempts``)."""

    # -- the writer: images and the outbox --------------------------------------------------
    def delete_image(self, image_id: str, account: str) -> Optional[tuple]:
        """Mark an image deleted and owe the host its removal (outbox): (link, host, held
        by another account), or None when there is no such live image."""

    def restore_link(self, link: str, account: str) -> None:
        """The host refused for good to delete it: the account's link is live again."""

    def add_effect(self, kind: str, target: str, *, job_id: Optional[str] = None,
                   body: Optional[str] = None) -> str:
        """Owe an effect (a webhook, a host deletion) in this transaction: its id."""

    def claim_effects(self, limit: int, hold_seconds: float) -> list:
        """Up to ``limit`` due effects, held for ``hold_seconds`` (``outbox.Effect``s)."""

    def set_effect_body(self, effect_id: str, body: str) -> None:
        """Keep the body an effect will send (so a retry sends the same)."""

    def record_effect(self, effect_id: str, *, state: str, error: Optional[str],
                      retry_in: float = 0.0, attempted: bool = True) -> bool:
        """An attempt's outcome: done, failed for good, or pending again in ``retry_in`` s
        (``attempted`` False: not counted); False when the claim had run out."""

    # -- readers ------------------------------------------------------------------------------
    def read_job(self, job_id: str, account: Optional[str] = None):
        """(job row, URL rows, callback row or None) from one snapshot, or None."""

    def list_jobs(self, account: str, limit: int, before: Optional[int] = None):
        """(an account's job rows, newest first, the cursor after them or None)."""

    def image(self, image_id: str, account: str) -> Optional[tuple]:
        """(link, host, delete hash, SHA-256) of a live image of the account, or None."""

    def link_live(self, link: str) -> bool:
        """True when some account holds this link, not deleted."""

    def links(self, page_size: int, account: str = "") -> ContextManager[Iterator[List[str]]]:
        """``with store.links(n) as pages:`` an account's live links, oldest first, in
        pages, all from one snapshot."""

    def link_for(self, sha256: str, host: str, account: str = "") -> Optional[str]:
        """The oldest live link of these bytes on this host for this account (dedup)."""

    def queue_depth(self) -> Tuple[int, float]:
        """(URLs queued, seconds the oldest has waited since its job was made)."""

    def next_effect_in(self) -> Optional[float]:
        """Seconds until the next pending effect is due (None: none pending)."""

    # -- life ---------------------------------------------------------------------------------
    def heartbeat(self) -> bool:
        """Renew this instance's lease; False when it had expired (what it held was taken
        back). A store without leases has nothing to renew: True."""

    def kept_alive(self) -> ContextManager:
        """``with store.kept_alive():`` the lease renewed while the caller is busy."""

    def listen(self, on_work: Callable[[], None], on_pause: Callable[[], None],
               on_state: Callable[[bool], None]) -> bool:
        """Call ``on_work()`` when any instance adds work, ``on_pause()`` when any process
        pauses the gate, and ``on_state(listening)`` as listening begins and ends, from a
        thread of the store's; False, starting nothing, when nothing can be heard (no
        other instance, or a pooler: the caller polls)."""

    def problem(self) -> Optional[str]:
        """Why the store cannot serve now, or None (health checks)."""

    def prune(self, older_than: float) -> Optional[Dict[str, int]]:
        """Delete one batch of what finished ``older_than`` seconds ago: rows by table
        ({} once nothing is left), or None while another instance prunes."""

    def end_pruning(self) -> None:
        """The pruner is done for now: what it held may go."""

    def close(self) -> None:
        """Let go of connections, locks and threads (and, in a cluster, leave it)."""


class Coordinator(Protocol):
    """The upload gate (pace, pauses, the host's budgets) and the dedup claims, shared by
    every worker of an instance (or of a cluster). Workers and the host's upload policy
    (``hosts.citizen``) call it around each upload; ``owner`` is (worker, generation),
    and a claim's owner (worker, generation, URL id)."""

    def claim_many(self, claims: Sequence[tuple]) -> List[Tuple[str, Optional[str]]]:
        """For each (sha256, account, owner): ("reuse", link), ("wait", None) (ask again)
        or ("upload", None) (these bytes are ours to upload)."""

    def end_many(self, ends: Sequence[tuple]) -> None:
        """What uploads owe once over, (sha256, account, link, report, owner, observe)
        each: the gate hears open grants' answers; links are published, claims released."""

    def forget(self, sha256: str, account: str) -> None:
        """These bytes' link was deleted: upload them afresh next time."""

    def reserve(self, owner: Owner) -> Optional[Answer]:
        """One moment to upload at, as ``reserve_many(1, owner)[0]`` (None: no gate)."""

    def reserve_many(self, count: int, owner: Owner) -> List[Answer]:
        """``count`` moments to upload at, in one call: (granted, when, why) each."""

    def confirm(self, owner: Owner) -> Answer:
        """Ask again, at the moment given, whether the grant still holds (a pause may have
        come); one not granted is withdrawn."""

    def observe(self, report: Optional[dict], owner: Owner) -> None:
        """An open grant was answered by the host, with its budgets (or None)."""

    def withdraw(self, owner: Owner) -> None:
        """A grant given back unused."""

    def pause(self, seconds: float, why: str) -> None:
        """Every upload, of every process, waits ``seconds`` (the host asked us to)."""

    def learn(self, report: Optional[dict]) -> None:
        """The host's budgets, asked without spending any (at start)."""

    def release_owner(self, worker: int, generation: int) -> None:
        """A worker process ended: its dedup claims and gate grants are void."""

    def heard(self, listening: bool) -> None:
        """News from this instance's listening connection (a pause announced elsewhere,
        or listening begun or ended): what this process holds ahead is void."""

    def close(self) -> None:
        """This process is done with it: tell what it holds, stop its threads."""


class Credentials(Protocol):
    """The host's credential (Imgur's token), refreshed once for every worker."""

    def current(self, patient: bool = True) -> Tuple[str, int, Optional[str]]:
        """(access token, its version, why it was rejected or None); ``patient=False``:
        fail at once rather than wait out an outage."""

    def refresh(self, seen_version: int, reason: str) -> Tuple[str, int, Optional[str]]:
        """The token of ``seen_version`` was refused: refresh it (once for all callers)
        and answer as ``current``."""
