"""The ``/v1`` API: submit, list, read, retry and cancel jobs; list and delete images.

    POST   /v1/images/upload              a job (202, Location)
    GET    /v1/images/upload              the caller's jobs, newest first, a page at a time
    GET    /v1/images/upload/<id>         one job and each URL's fate
    DELETE /v1/images/upload/<id>         cancel: queued URLs fail, in-flight ones finish
    POST   /v1/images/upload/<id>/retry   a new job of exactly the failed URLs (202)
    GET    /v1/images                     the caller's links, oldest first, streamed
    DELETE /v1/images/<image_id>          delete an image; its bytes go next, via the outbox (202)

Handlers parse, authorize, call a service operation (``operations``: submit, retry,
cancel, delete an image) or read, and render. They never block: writes are dispatcher
calls awaited as futures, reads run on the store's reader threads. With API keys,
every caller sees its own jobs and links only: another's answer 404.
"""
import asyncio
import json
import logging
import re
import uuid

import tornado.web

from .handlers import ApiError, BaseHandler
from .render import job_document, job_summary
from .submission import SubmissionError, parse_submission

log = logging.getLogger(__name__)

LINKS_PAGE = 10_000
LIST_DEFAULT, LIST_MAX = 50, 500
MAX_CURSOR = 2 ** 63 - 1  # a cursor is a job's sequence number: 64 bits in either store
_DIGITS = re.compile(r"[0-9]{1,19}")


def _whole_number(text: str, largest: int):
    """``text`` as a whole number from 0 to ``largest`` (ASCII digits only), else None."""
    if not _DIGITS.fullmatch(text) or int(text) > largest:
        return None
    return int(text)


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


def accepted(handler, job_id: str) -> None:
    """Answer 202 with a new job's id and Location."""
    handler.set_header("Location", f"/v1/images/upload/{job_id}")
    handler.write_json(202, {"jobId": job_id})


class UploadHandler(BaseHandler):
    """POST /v1/images/upload: validate, create the job, answer 202 at once.
    GET /v1/images/upload: the caller's jobs."""

    guarded = True

    def body_limit(self) -> int:
        if self.request.method == "POST":
            return self.service.config.server.max_body_bytes
        return super().body_limit()

    def keep_body(self, chunk):
        self.body += chunk

    def prepare(self):
        self.body = bytearray()
        super().prepare()
        if self.request.method not in ("POST", "GET"):
            # Refuse now: the body of a PUT/PATCH/DELETE would otherwise reach data_received.
            raise tornado.web.HTTPError(405)
        if self.request.method == "GET":
            return
        refuse_while_stopping(self.service)
        self.require_json()

    async def post(self):
        loop = asyncio.get_running_loop()
        try:
            job = await loop.run_in_executor(
                None, lambda: parse_submission(
                    bytes(self.body), max_urls=self.service.config.server.max_urls_per_job))
        except SubmissionError as exc:
            raise ApiError(exc.status, str(exc)) from None
        accepted(self, await self.operate(self.service.operations.submit(
            job.urls, self.account, callback_url=job.callback_url)))

    async def get(self):
        limit = _whole_number(self.get_query_argument("limit", str(LIST_DEFAULT)), LIST_MAX)
        if limit is None or limit < 1:
            raise ApiError(400, f"limit must be a whole number from 1 to {LIST_MAX}, "
                                f"got {self.get_query_argument('limit')!r}")
        before = self.get_query_argument("before", None)
        if before is not None:
            before = _whole_number(before, MAX_CURSOR)
            if before is None:
                raise ApiError(400, "before must be a cursor this service gave (\"next\"), "
                                    f"got {self.get_query_argument('before')!r}")
        rows, cursor = await self.in_reader(self.service.store.list_jobs, self.account,
                                            limit, before)
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
        accepted(self, await self.operate(self.service.operations.retry(
            _job_id(job_id), self.account)))


class JobHandler(BaseHandler):
    """GET /v1/images/upload/<jobId>: the job and each URL's fate.
    DELETE /v1/images/upload/<jobId>: cancel it; answers the job, and in
    ``X-Cancelled-Urls`` how many queued URLs this cancel failed (0: nothing to cancel)."""

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
        cancelled = await self.operate(self.service.operations.cancel(
            _job_id(job_id), self.account))
        self.set_header("X-Cancelled-Urls", str(cancelled))  # 0: nothing was left to cancel
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
    """DELETE /v1/images/<image_id>: delete an image. Its deletion is recorded first, in one
    transaction (the link leaves the listing and dedup, its jobs show it deleted, the
    outbox owes the host the removal of its bytes); the courier then removes the bytes,
    retried until the host confirms. So a failure at any step never leaves a dead link
    that looks alive: 202, and the bytes follow. A link another account holds too (S3 gives
    identical bytes one link) stays at the host for them: only this account's hold ends."""

    guarded = True

    async def delete(self, image_id):
        link = await self.operate(self.service.operations.delete_image(image_id, self.account))
        self.write_json(202, {"image_id": image_id, "link": link})


def routes(args: dict) -> list:
    return [
        (r"/v1/images/upload", UploadHandler, args),
        (r"/v1/images/upload/([^/]+)/retry", RetryHandler, args),
        (r"/v1/images/upload/([^/]+)", JobHandler, args),
        (r"/v1/images", ImagesHandler, args),
        (r"/v1/images/([^/]+)", ImageHandler, args),
    ]
