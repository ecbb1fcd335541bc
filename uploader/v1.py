"""The ``/v1`` API: submit, list, read, retry and cancel jobs; list and delete images.

    POST   /v1/images/upload              a job (202, Location)
    GET    /v1/images/upload              the caller's jobs, newest first, a page at a time
    GET    /v1/images/upload/<id>         one job and each URL's fate
    DELETE /v1/images/upload/<id>         cancel: queued URLs fail, in-flight ones finish
    POST   /v1/images/upload/<id>/retry   a new job of exactly the failed URLs (202)
    GET    /v1/images                     the caller's links, oldest first, streamed
    DELETE /v1/images/<image_id>          delete an image at its host (204)

Handlers never block: writes are dispatcher calls awaited as futures, reads run on the
store's reader threads, a deletion at the host on the default executor. With API keys,
every caller sees its own jobs and links only: another's answer 404.
"""
import asyncio
import json
import logging
import uuid

import tornado.web

from . import jobs
from .errors import HostError, RetryableHostError
from .handlers import ApiError, BaseHandler
from .render import job_document, job_summary
from .submission import SubmissionError, parse_submission

log = logging.getLogger(__name__)

LINKS_PAGE = 10_000
LIST_DEFAULT, LIST_MAX = 50, 500


def _job_id(job_id: str) -> str:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, f"no job with id {job_id!r}") from None
    return job_id


def refuse_while_stopping(service) -> None:
    if service.stopping:
        raise ApiError(503, "the service is shutting down; retry shortly",
                       headers={"Retry-After": "5"})


async def create(handler, urls, **options) -> None:
    """Create a job of the caller's and answer 202 with its id and Location."""
    job_id = str(uuid.uuid4())
    await handler.wait(handler.service.dispatcher.submit(job_id, urls, account=handler.account,
                                                         **options))
    log.info("job %s accepted with %d URLs", job_id, len(urls))
    handler.set_header("Location", f"/v1/images/upload/{job_id}")
    handler.write_json(202, {"jobId": job_id})


@tornado.web.stream_request_body
class UploadHandler(BaseHandler):
    """POST /v1/images/upload: validate, create the job, answer 202 at once.
    GET /v1/images/upload: the caller's jobs."""

    guarded = True

    def prepare(self):
        super().prepare()
        if self.request.method not in ("POST", "GET"):
            # Refuse now: the body of a PUT/PATCH/DELETE would otherwise reach data_received.
            raise tornado.web.HTTPError(405)
        self.body = bytearray()
        if self.request.method == "GET":
            return
        refuse_while_stopping(self.service)
        self.require_json()
        self.limit = self.service.config.server.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise ApiError(413, f"body is {length} bytes; the limit is {self.limit}")

    def data_received(self, chunk):
        if self._finished or self.request.method != "POST":
            return
        self.body += chunk
        if len(self.body) > self.limit:
            self.send_error(413, exc_info=(ApiError, ApiError(
                413, f"body is over the limit of {self.limit} bytes"), None))

    async def post(self):
        loop = asyncio.get_running_loop()
        try:
            job = await loop.run_in_executor(
                None, lambda: parse_submission(
                    bytes(self.body), max_urls=self.service.config.server.max_urls_per_job))
        except SubmissionError as exc:
            raise ApiError(exc.status, str(exc)) from None
        await create(self, job.urls, callback_url=job.callback_url)

    async def get(self):
        limit = self.get_query_argument("limit", str(LIST_DEFAULT))
        if not limit.isdigit() or not 1 <= int(limit) <= LIST_MAX:
            raise ApiError(400, f"limit must be a whole number from 1 to {LIST_MAX}, got {limit!r}")
        before = self.get_query_argument("before", None)
        if before is not None and not (before.isdigit() and len(before) <= 19):
            raise ApiError(400, f"before must be a cursor this service gave (\"next\"), got {before!r}")
        rows, cursor = await self.in_reader(self.service.store.list_jobs, self.account,
                                            int(limit), None if before is None else int(before))
        self.write_json(200, {"jobs": [job_summary(row) for row in rows], "next": cursor})


class RetryHandler(BaseHandler):
    """POST /v1/images/upload/<id>/retry: a new job holding exactly the failed URLs of <id>
    (with its callback), whose document says ``retry_of``. The body is not read."""

    guarded = True

    def prepare(self):
        super().prepare()
        if self.request.method == "POST":
            refuse_while_stopping(self.service)
            self.require_json()

    async def post(self, job_id):
        found = await self.in_reader(self.service.store.read_job, _job_id(job_id), self.account)
        if found is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        document = job_document(*found)
        if document["status"] != jobs.JOB_COMPLETE:
            raise ApiError(409, f"job {job_id} is {document['status']}: only a complete job "
                                "can be retried")
        failed = document["uploaded"]["failed"]
        if not failed:
            raise ApiError(409, f"job {job_id} has no failed URL to retry")
        await create(self, failed, retry_of=job_id, callback_url=found[0][5])


class JobHandler(BaseHandler):
    """GET /v1/images/upload/<jobId>: the job and each URL's fate.
    DELETE /v1/images/upload/<jobId>: cancel it; answers the job."""

    guarded = True

    async def get(self, job_id):
        _job_id(job_id)
        store, account = self.service.store, self.account

        def read_and_encode():  # a big job's JSON is built off the event loop too
            found = store.read_job(job_id, account)
            return None if found is None else json.dumps(job_document(*found))

        body = await self.in_reader(read_and_encode)
        if body is None:
            raise ApiError(404, f"no job with id {job_id!r}")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body)

    async def delete(self, job_id):
        account = self.account
        cancelled = await self.wait(self.service.dispatcher.call(
            lambda store: store.cancel(_job_id(job_id), account)))
        if not cancelled:
            raise ApiError(404, f"no job with id {job_id!r}")
        log.info("job %s cancelled", job_id)
        await self.get(job_id)


class ImagesHandler(BaseHandler):
    """GET /v1/images: the caller's links, oldest first, streamed page by page from one
    snapshot (deleted ones left out)."""

    guarded = True

    async def get(self):
        async with self.service.listing_slots:  # a store's listings at once (store.sql)
            listing = self.service.store.links(LINKS_PAGE, self.account)
            pages = await self.in_reader(listing.__enter__)
            try:
                self.set_header("Content-Type", "application/json; charset=UTF-8")
                self.write('{"uploaded": [')
                separator = ""
                while page := await self.in_reader(next, pages, None):
                    self.write(separator + ", ".join(json.dumps(link) for link in page))
                    separator = ", "
                    await self.flush()
                self.finish("]}")
            finally:
                await self.in_reader(listing.__exit__, None, None, None)


class ImageHandler(BaseHandler):
    """DELETE /v1/images/<image_id>: delete the image at its host; its link leaves the
    listing, and its bytes are uploaded afresh if they come again."""

    guarded = True

    async def delete(self, image_id):
        service, account = self.service, self.account
        found = await self.in_reader(service.store.image, image_id, account)
        if found is None:
            raise ApiError(404, f"no image with id {image_id!r}")
        link, host, deletehash, sha256 = found
        if host and host != service.config.resolved_image_host:
            raise ApiError(409, f"image {image_id} is on the {host} host, which this service "
                                "no longer uses; delete it there")
        later = None
        try:
            await asyncio.get_running_loop().run_in_executor(None, service.delete_at_host,
                                                             deletehash)
        except RetryableHostError as exc:  # recorded below and tried again until done
            later = str(exc)
        except HostError as exc:
            raise ApiError(409, f"the host refused to delete image {image_id}: {exc}") from None

        def mark(store):
            if not store.mark_deleted(image_id, account):
                return False
            if later is not None:
                store.add_effect("host_delete", deletehash,
                                 body=json.dumps({"host": host, "link": link, "error": later}))
            return True

        if not await self.wait(service.dispatcher.call(mark)):
            raise ApiError(404, f"no image with id {image_id!r}")
        try:
            service.pool.shared.coordinator.forget(sha256, account)
        except Exception as exc:  # the embedded index may still hold it: only until restart
            log.warning("could not drop image %s from the dedup index: %s", image_id, exc)
        log.info("image %s deleted (%s)%s", image_id, link,
                 f"; the host will be asked again: {later}" if later else "")
        self.set_status(204)
        self.finish()


def routes(args: dict) -> list:
    return [
        (r"/v1/images/upload", UploadHandler, args),
        (r"/v1/images/upload/([^/]+)/retry", RetryHandler, args),
        (r"/v1/images/upload/([^/]+)", JobHandler, args),
        (r"/v1/images", ImagesHandler, args),
        (r"/v1/images/([^/]+)", ImageHandler, args),
    ]
