"""A fake of the service's job API, as issue 12 specifies it, serving the real web page.

The web page is written against job-control endpoints that land on main in parallel
(list, retry, cancel, image delete, webhook status, API keys). This fake speaks that
contract so the page's handling of every answer can be tested in a browser now. It runs
Tornado in a background thread with the page's real routes (``uploader.page``) in front
of an in-memory API:

    GET    /openapi.json                      -> the operations it has (listing optional)
    POST   /v1/images/upload                  -> 202 {"jobId"}; URLs with "fail" fail,
                                                 URLs with "slow" stay queued until cancelled
    GET    /v1/images/upload?limit=&before=   -> {"jobs": [...], "next"}, newest first
    GET    /v1/images/upload/<id>             -> the job document
    DELETE /v1/images/upload/<id>             -> 200, the job with queued URLs cancelled
                                                 (X-Cancelled-Urls: how many)
    POST   /v1/images/upload/<id>/retry       -> 202 {"jobId"} of a job of the failed URLs
    DELETE /v1/images/<image_id>              -> 202 {"image_id", "link"}, the entry marked deleted
    GET    /i/<name>.png                      -> a small PNG (the thumbnails)

Run-time controls: ``key`` (every API call then needs ``Authorization: Bearer <key>``,
else 401 with ``WWW-Authenticate: Bearer``), ``listing`` (False: no listing at all),
``busy(n)`` (the next n calls answer 503 with Retry-After), ``refuse(method, status,
error)`` (the next such call answers that error), ``unreachable`` (connections are closed
without an answer), ``callback`` (the webhook status new jobs carry). ``requests`` records
(method, path, Authorization header) of every API call.
"""
import asyncio
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import tornado.httpserver
import tornado.netutil
import tornado.web

from testbed.fakes.image_source import make_image
from uploader.config import config_from_dict
from uploader.page import web_routes
from uploader.backends import sql

CANCELLED = sql.CANCELLED  # the service's own words
MISSING = "HTTP 404 from source"


def stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class FakeJobApi:
    """``with FakeJobApi() as api: api.url``; state and controls are plain attributes."""

    def __init__(self):
        self.key = None
        self.listing = True
        self.unreachable = False
        self.callback = None
        self.jobs = {}  # id -> job document, in creation order
        self.images = {}  # image id -> (job id, url)
        self.requests = []
        self._busy = 0
        self._refusals = {}
        self._clock = datetime(2026, 11, 27, 3, 10, 41, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="fake-job-api",
                                        daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def _run(self, started):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        config = config_from_dict({"image_host": "local", "server": {"public_url": self.url}},
                                  environ={})
        args = {"fake": self}
        app = tornado.web.Application(web_routes(config) + [
            (r"/openapi.json", SpecHandler, args),
            (r"/v1/images/upload", JobsHandler, args),
            (r"/v1/images/upload/([^/]+)", JobHandler, args),
            (r"/v1/images/upload/([^/]+)/retry", RetryHandler, args),
            (r"/v1/images/([^/]+)", ImageHandler, args),
            (r"/i/([a-z0-9]+)\.png", PictureHandler, args),
        ], log_function=lambda handler: None)
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        started.set()
        self._loop.run_forever()
        self._loop.close()

    def stop(self):
        self._loop.call_soon_threadsafe(self._server.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def url(self):
        """The page and the links share this origin (``localhost``, as the service prints it)."""
        return f"http://localhost:{self.port}"

    # -- controls ------------------------------------------------------------------------
    def busy(self, n, retry_after=1):
        with self._lock:
            self._busy, self._retry_after = n, retry_after

    def refuse(self, method, status, error):
        """The next API call with ``method`` answers ``status`` ``{"error": error}``."""
        with self._lock:
            self._refusals[method] = (status, error)

    def seed(self, n):
        """``n`` finished one-image jobs, older than any made later."""
        for index in range(n):
            self.create([f"http://images.example/seed-{index}.png"])

    # -- the model -----------------------------------------------------------------------
    def create(self, urls, retry_of=None):
        with self._lock:
            self._clock += timedelta(seconds=1)
            job_id = str(uuid.uuid4())
            entries = []
            for url in dict.fromkeys(urls):
                entry = {"url": url, "state": "queued", "link": None, "reason": None,
                         "attempts": 0, "reused": False, "waiting": None, "progress": None,
                         "image_id": None, "deleted": False}
                if "slow" not in url:
                    entry.update(attempts=1, state="failed" if "fail" in url else "complete")
                if entry["state"] == "failed":
                    entry["reason"] = MISSING
                elif entry["state"] == "complete":
                    image_id = uuid.uuid4().hex[:8]
                    entry.update(link=f"{self.url}/i/{image_id}.png", image_id=image_id)
                    self.images[image_id] = (job_id, url)
                entries.append(entry)
            job = {"id": job_id, "created": stamp(self._clock), "finished": None,
                   "status": "in-progress", "urls": entries, "callback": self.callback,
                   "retry_of": retry_of}
            self._settle(job)
            self.jobs[job_id] = job
            return job_id

    def _settle(self, job):
        states = [entry["state"] for entry in job["urls"]]
        job["uploaded"] = {
            "pending": [e["url"] for e in job["urls"] if e["state"] not in ("complete", "failed")],
            "complete": [e["link"] for e in job["urls"] if e["state"] == "complete"],
            "failed": [e["url"] for e in job["urls"] if e["state"] == "failed"]}
        if all(state in ("complete", "failed") for state in states):
            job["status"] = "complete"
            job["finished"] = job["finished"] or job["created"]

    def cancel(self, job_id):
        """Fail the job's queued URLs: (the job, how many)."""
        with self._lock:
            job = self.jobs[job_id]
            queued = [entry for entry in job["urls"] if entry["state"] == "queued"]
            for entry in queued:
                entry.update(state="failed", reason=CANCELLED)
            self._settle(job)
            return job, len(queued)

    def delete_image(self, image_id):
        """Mark it deleted; its link."""
        with self._lock:
            job_id, url = self.images.pop(image_id)
            for entry in self.jobs[job_id]["urls"]:
                if entry["url"] == url:
                    entry["deleted"] = True
                    return entry["link"]

    def summaries(self, limit, before):
        with self._lock:
            newest_first = list(reversed(self.jobs.values()))
        if before:
            ids = [job["id"] for job in newest_first]
            newest_first = newest_first[ids.index(before) + 1:] if before in ids else []
        page = newest_first[:limit]
        more = len(newest_first) > limit
        return {"jobs": [{"id": job["id"], "created": job["created"], "finished": job["finished"],
                          "status": job["status"],
                          "counts": {name: len(job["uploaded"][name])
                                     for name in ("pending", "complete", "failed")},
                          "retry_of": job["retry_of"]}
                         for job in page],
                "next": page[-1]["id"] if more and page else None}


class FakeHandler(tornado.web.RequestHandler):
    def initialize(self, fake):
        self.fake = fake

    def prepare(self):
        fake = self.fake
        if fake.unreachable:
            self.request.connection.stream.close()
            raise tornado.web.Finish()
        fake.requests.append((self.request.method, self.request.uri,
                              self.request.headers.get("Authorization")))
        if fake.key and self.request.headers.get("Authorization") != f"Bearer {fake.key}":
            self.set_header("WWW-Authenticate", "Bearer")
            self.answer(401, {"error": "a valid API key is required (Authorization: Bearer)"})
            raise tornado.web.Finish()
        with fake._lock:
            busy = fake._busy > 0
            fake._busy -= busy
            refusal = fake._refusals.pop(self.request.method, None)
        if busy:
            self.set_header("Retry-After", str(fake._retry_after))
            self.answer(503, {"error": "the service is shutting down; retry shortly"})
            raise tornado.web.Finish()
        if refusal:
            self.answer(refusal[0], {"error": refusal[1]})
            raise tornado.web.Finish()

    def sent_json(self):
        """POSTs carry JSON, as the service demands (415 otherwise)."""
        given = self.request.headers.get("Content-Type", "")
        if given.split(";")[0].strip() == "application/json":
            return True
        self.answer(415, {"error": f"Content-Type must be application/json, got {given!r}"})
        return False

    def answer(self, status, body=None):
        self.set_status(status)
        if body is not None:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.write(json.dumps(body))
        self.finish()

    def job_or_404(self, job_id):
        if job_id not in self.fake.jobs:
            self.answer(404, {"error": f"no job with id {job_id!r}"})
            raise tornado.web.Finish()
        return self.fake.jobs[job_id]


class SpecHandler(FakeHandler):
    def get(self):
        upload = {"post": {}}
        if self.fake.listing:
            upload["get"] = {}
        self.answer(200, {"openapi": "3.0.3", "paths": {"/v1/images/upload": upload}})


class JobsHandler(FakeHandler):
    def get(self):
        if not self.fake.listing:
            self.answer(405, {"error": "method GET is not allowed on /v1/images/upload"})
            return
        limit = int(self.get_query_argument("limit", "50"))
        self.answer(200, self.fake.summaries(limit, self.get_query_argument("before", None)))

    def post(self):
        if not self.sent_json():
            return
        try:
            urls = json.loads(self.request.body)["urls"]
        except (ValueError, KeyError, TypeError):
            self.answer(400, {"error": "body must be a JSON object with a list of urls"})
            return
        if not urls:
            self.answer(400, {"error": "urls must not be empty"})
            return
        self.answer(202, {"jobId": self.fake.create(urls)})


class JobHandler(FakeHandler):
    def get(self, job_id):
        self.answer(200, self.job_or_404(job_id))

    def delete(self, job_id):
        self.job_or_404(job_id)
        job, cancelled = self.fake.cancel(job_id)
        self.set_header("X-Cancelled-Urls", str(cancelled))
        self.answer(200, job)


class RetryHandler(FakeHandler):
    def post(self, job_id):
        if not self.sent_json():
            return
        job = self.job_or_404(job_id)
        if job["status"] != "complete":
            self.answer(409, {"error": f"job {job_id} is {job['status']}: only a complete job can be retried"})
        elif not job["uploaded"]["failed"]:
            self.answer(409, {"error": f"job {job_id} has no failed URL to retry"})
        else:
            self.answer(202, {"jobId": self.fake.create(job["uploaded"]["failed"], retry_of=job_id)})


class ImageHandler(FakeHandler):
    def delete(self, image_id):
        if image_id not in self.fake.images:
            self.answer(404, {"error": f"no image with id {image_id!r}"})
            return
        link = self.fake.delete_image(image_id)
        self.answer(202, {"image_id": image_id, "link": link})


class PictureHandler(tornado.web.RequestHandler):
    def initialize(self, fake):
        pass

    def get(self, name):
        self.set_header("Content-Type", "image/png")
        self.finish(make_image("png", name))
