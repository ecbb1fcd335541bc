"""A bare Tornado process answering the API's two most frequent calls with canned bodies.

The reference for the frontend scenario: what a Tornado process with no store, no
dispatcher and no workers answers in, measured beside the service under the same load,
so the service's API latency is judged against what Tornado itself gives on this machine.
Run as ``python -m testbed.bench.bare``: prints its URL, serves until stdin closes.
"""
import json
import sys
import threading
import uuid

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

JOB = {"id": str(uuid.uuid4()), "created": "2026-11-29T00:00:00.000Z", "finished": None,
       "status": "in-progress", "uploaded": {"pending": [], "complete": [], "failed": []},
       "retry_of": None, "callback": None,
       "urls": [{"url": f"http://denied.bench.invalid/{n}.jpg", "state": "failed", "link": None,
                 "reason": "refused: denied.bench.invalid is denied (fetch.denied_hosts)",
                 "attempts": 1, "reused": False, "image_id": None, "deleted": False,
                 "waiting": None, "progress": None} for n in range(10)]}


class Job(tornado.web.RequestHandler):
    def get(self, job_id):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(JOB))


class Upload(tornado.web.RequestHandler):
    def post(self):
        json.loads(self.request.body)["urls"]  # read, as the service reads it
        self.set_status(202)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"jobId": str(uuid.uuid4())}))


def main() -> None:
    app = tornado.web.Application([(r"/v1/images/upload", Upload),
                                   (r"/v1/images/upload/([^/]+)", Job)])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
    loop = tornado.ioloop.IOLoop.current()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.add_callback(loop.stop)),
                     daemon=True).start()
    loop.start()


if __name__ == "__main__":
    main()
