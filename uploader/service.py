"""The assembled instance: store, worker pool, dispatcher and HTTP server, started and stopped together.

With the embedded store this is the whole service; with PostgreSQL it is one of any
number of instances that meet in the database (each with an id of its own).

This is the composition root: ``start`` builds each part once, in order, and hands each
only what it needs (its settings, ``*_settings``, and the parts below it); no part
reaches up to another: news goes up only through callbacks handed down (the pool's
``on_event``, the dispatcher's ``on_outbox`` and ``on_fatal``). Who builds whom:

    Service --> store, metrics, reader threads
            --> WorkerPool(config)                      (workers need all of it)
            --> Dispatcher(store, pool, metrics)        (``dispatcher_settings``)
            --> the pool's manager, then what workers share in it (or in the database),
                handed to the workers; the host deleter
            --> Courier(dispatcher.call, store, metrics, deleter)   (``courier_settings``)
            --> Operations(store, dispatcher, readers, dedup's forget)
            --> Pruner(store), Health(the parts it reads), the store's listener, the HTTP
                app (handlers over operations)
"""
import asyncio
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import tornado.netutil

from . import hosts
from .backends import open_backend
from .app import make_app
from .boundedread import BoundedRead
from .connections import make_server, open_file_limit
from .courier import Courier
from .dispatcher import Dispatcher
from .errors import StartError
from .health import HEALTH_PROBE_SECONDS, Health
from .metrics import Metrics
from .operations import Operations
from .pool import WorkerPool
from .retention import Pruner
from .storegauges import StoreGauges

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_MANAGER_LOST = 3


class Service:
    """One running instance; ``start()`` then await ``stopped``."""

    def __init__(self, config):
        self.config = config
        self.stopping = False
        self.exit_code = EXIT_OK
        self.port = None

    def start(self) -> None:
        """Open the store, start the processes, listen. Call from the event loop's thread."""
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        self.instance = str(uuid.uuid4())
        self.backend = open_backend(self.config, self.instance)  # first: it may be in use
        self.store = self.backend.store
        try:
            sockets = tornado.netutil.bind_sockets(self.config.server.port, self.config.server.host)
        except OSError:
            self.store.close()
            raise
        self.port = sockets[0].getsockname()[1]
        self.config = with_actual_port(self.config, self.port)
        try:
            os.makedirs(self.config.local.directory, exist_ok=True)
        except OSError as exc:
            self.store.close()
            raise StartError(f"local.directory {self.config.local.directory}: {exc.strerror}") from None
        self.readers = ThreadPoolExecutor(4, thread_name_prefix="store-read")
        self.store_gauges = StoreGauges(self._store_figures, self.readers)
        self.store_probe = BoundedRead(self.store.problem, self.readers,
                                       wait_seconds=HEALTH_PROBE_SECONDS)
        self.listing_slots = asyncio.Semaphore(self.store.listings_at_once or 2 ** 16)
        self.pool = WorkerPool(self.config, on_event=lambda event: self.dispatcher.post(event))
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(store=self.store, pool=self.pool, metrics=self.metrics,
                                     on_fatal=self._on_fatal,
                                     on_outbox=lambda: self.courier.wake(),
                                     **dispatcher_settings(self.config))
        # registered when the store opened: the lease is kept until the dispatcher keeps it
        with self.store.kept_alive():
            manager = self.pool.start_manager(self.backend.manager_class)
            self.shared = self.backend.make_shared(manager)
            self.pool.start_workers(self.shared)
            self.delete_at_host = hosts.build_deleter(self.config, self.shared)
            self.courier = Courier(call=self.dispatcher.call, store=self.store,
                                   metrics=self.metrics, delete_at_host=self.delete_at_host,
                                   **courier_settings(self.config, self.store))
            loop.run_in_executor(None, hosts.learn_limits, self.config, self.shared)
        self.operations = Operations(store=self.store, writer=self.dispatcher,
                                     readers=self.readers, forget=self.shared.coordinator.forget,
                                     host=self.config.resolved_image_host)
        self.dispatcher.start()
        self.courier.start()
        retention = self.config.retention
        self.pruner = Pruner(self.store, older_than=retention.finished_jobs_seconds,
                             every=retention.check_seconds, metrics=self.metrics)
        self.pruner.start()
        self.health = Health(instance=self.instance, store_probe=self.store_probe,
                             dispatcher=self.dispatcher, pool=self.pool,
                             workers_expected=self.config.workers.processes,
                             credential_problem=self.credential_problem,
                             stopping=lambda: self.stopping, readers=self.readers)
        self.store.listen(on_work=self.dispatcher.wake,  # (heard only in a cluster)
                          on_pause=lambda: self.pool.tell_gate(True), on_state=self._listening)
        self.open_files = open_file_limit()
        self.http = make_server(make_app(self), self.config, self.open_files)
        self.http.add_sockets(sockets)

        def when_stopped():
            self.dispatcher.stopped.wait()
            loop.call_soon_threadsafe(self._finish)

        loop.run_in_executor(None, when_stopped)

    def _store_figures(self):
        """What /metrics reads of the store (blocking): see ``StoreGauges``."""
        queued, oldest = self.store.queue_depth()
        return queued, oldest, self.credential_problem() is not None

    def _listening(self, listening: bool) -> None:
        """The store's listening connection is up (work added meanwhile is looked for at
        once), or lost; workers hear it either way (``backends.postgres.tickets``)."""
        self.pool.tell_gate(listening)
        if listening:
            self.dispatcher.wake()

    def credential_problem(self):
        """Why the image host's credential is dead (Imgur refused it for good), or None.
        Blocking (a manager or database round trip): call it off the event loop."""
        credentials = self.shared.credentials
        if credentials is None:
            return None
        try:
            return credentials.current(patient=False)[2]
        except Exception:  # the manager or the database is down: said elsewhere in health
            return None

    async def workers_ready(self, timeout: float = 30.0) -> bool:
        """Wait until every worker has built its sessions (so the first job starts at once)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.dispatcher.ready_workers() < self.config.workers.processes:
            if asyncio.get_running_loop().time() > deadline or self.stopped.done():
                log.warning("only %d of %d workers are ready after %.0f s; serving anyway",
                            self.dispatcher.ready_workers(), self.config.workers.processes, timeout)
                return False
            await asyncio.sleep(0.02)
        return True

    def stop(self, *, immediate: bool = False) -> None:
        """First call: refuse new jobs and drain within the grace period. Second: stop now."""
        if not self.stopping:
            log.info("stop requested; no new jobs are accepted")
        self.stopping = True
        self.dispatcher.stop(self.config.workers.shutdown_grace_seconds, immediate=immediate)

    def _on_fatal(self, reason: str) -> None:
        self.exit_code = EXIT_MANAGER_LOST
        self.stopping = True

    def _finish(self) -> None:
        self.courier.stop()
        self.pruner.stop()
        self.http.stop()
        self.readers.shutdown(wait=False)
        self.store.close()
        if not self.stopped.done():
            self.stopped.set_result(self.exit_code)


def dispatcher_settings(config) -> dict:
    """What the dispatcher needs of the configuration."""
    workers = config.workers
    return dict(per_worker=workers.uploads_per_process + workers.fetch_ahead,
                max_attempts=config.imgur.max_attempts,
                max_queued=config.server.max_queued_urls_per_key,
                host=config.resolved_image_host, poll_seconds=config.storage.poll_seconds)


def courier_settings(config, store) -> dict:
    """What the courier needs of the configuration: only a clustered store has effects that
    other instances add, looked for every ``poll_seconds`` (else once a minute)."""
    return dict(host=config.resolved_image_host, webhooks=config.webhooks, fetch=config.fetch,
                poll_seconds=config.storage.poll_seconds if store.clustered else 60.0)


def with_actual_port(config, port: int):
    """Links of the local host must name the port really bound (``port: 0`` binds any free one)."""
    if config.server.public_url or config.server.port == port:
        return config
    return replace(config, server=replace(config.server, port=port))
