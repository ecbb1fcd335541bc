"""What a client may ask of the service besides reading: submit, retry and cancel a job,
delete an image. The handlers parse, authorize, call one of these and render; the rules
live here, testable without Tornado (each is a coroutine on the caller's event loop).

Writes go to the dispatcher (the one writer: ``submit``, ``call``) and are awaited as
futures; reads run on the store's reader threads. A store that cannot answer raises
``StoreUnavailable``; a refusal raises ``NotFound``, ``Conflict`` or ``QueueFull``, whose
message is meant for the client.
"""
import asyncio
import logging
import uuid

from . import jobs
from .render import job_document

log = logging.getLogger("uploader.v1")  # the log lines keep their logger's name


class NotFound(Exception):
    """No such job or image (for this account)."""


class Conflict(Exception):
    """The job or image is not in a state that allows it."""


class Operations:
    def __init__(self, *, store, writer, readers, forget, host: str):
        self.store = store
        self.writer = writer  # the dispatcher: ``submit`` and ``call`` on its thread
        self.readers = readers  # the store's reader threads
        self.forget = forget  # (sha256, account): drop a link from the dedup index
        self.host = host  # the image host in use

    async def _read(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)

    async def submit(self, urls, account, **options) -> str:
        """Create a job of ``account``'s (``options``: ``retry_of``, ``callback_url``); its
        id once committed. ``QueueFull`` when the key has as many URLs queued as allowed."""
        job_id = str(uuid.uuid4())
        await asyncio.wrap_future(self.writer.submit(job_id, urls, account=account, **options))
        log.info("job %s accepted with %d URLs", job_id, len(urls))
        return job_id

    async def retry(self, job_id: str, account) -> str:
        """A new job holding exactly the failed URLs of a complete job (with its callback)."""
        found = await self._read(self.store.read_job, job_id, account)
        if found is None:
            raise NotFound(f"no job with id {job_id!r}")
        document = job_document(*found)
        if document["status"] != jobs.JOB_COMPLETE:
            raise Conflict(f"job {job_id} is {document['status']}: only a complete job "
                           "can be retried")
        failed = document["uploaded"]["failed"]
        if not failed:
            raise Conflict(f"job {job_id} has no failed URL to retry")
        return await self.submit(failed, account, retry_of=job_id, callback_url=found[0][5])

    async def cancel(self, job_id: str, account) -> int:
        """Fail the job's queued URLs (in-flight ones finish); how many it failed."""
        cancelled = await asyncio.wrap_future(self.writer.call(
            lambda store: store.cancel(job_id, account)))
        if cancelled is None:
            raise NotFound(f"no job with id {job_id!r}")
        log.info("job %s cancelled: %d queued URLs failed", job_id, cancelled)
        return cancelled

    async def delete_image(self, image_id: str, account) -> str:
        """Record an image's deletion in one transaction (the link leaves the listing and
        dedup, its jobs show it deleted, the outbox owes the host the removal of its
        bytes; the courier does that next). A link another account holds too stays at
        the host for them. Returns the link."""
        found = await self._read(self.store.image, image_id, account)
        if found is None:
            raise NotFound(f"no image with id {image_id!r}")
        link, host, _, sha256 = found
        if host and host != self.host:
            raise Conflict(f"image {image_id} is on the {host} host, which this service "
                           "no longer uses; delete it there")
        recorded = await asyncio.wrap_future(self.writer.call(
            lambda store: store.delete_image(image_id, account)))
        if recorded is None:
            raise NotFound(f"no image with id {image_id!r}")
        try:
            self.forget(sha256, account)
        except Exception as exc:  # the embedded index may still hold it: only until restart
            log.warning("could not drop image %s from the dedup index: %s", image_id, exc)
        link, _host, shared = recorded
        log.info("image %s deleted (%s); %s", image_id, link,
                 "another account holds the same link: kept at the host" if shared
                 else "its bytes are removed at the host next")
        return link
