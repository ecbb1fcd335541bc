"""The command-line client: against a small fake of the service's two job endpoints, the
job-control contract of issue 11 (retry, cancel, jobs, delete, callbacks, API keys) against
requests-mock, and every command over real HTTP against the job API fake of the web page's
tests (``testbed/fakes/job_api.py``)."""
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from image_client import cli as client
from image_client import follow
from testbed.fakes.job_api import CANCELLED as FAKE_CANCELLED
from testbed.fakes.job_api import MISSING as FAKE_MISSING
from testbed.fakes.job_api import FakeJobApi
from uploader.submission import normalize_url

from tests.support import REPO



class FakeService:
    """Accepts one job and finishes it after ``polls_to_finish`` polls.

    ``outcomes`` maps a URL to ``("ok", link)`` or ``("fail", reason)``; unknown URLs
    succeed. ``refuse`` = (status, body) answers the submission with an error instead.
    """

    def __init__(self):
        self.outcomes = {}
        self.polls_to_finish = 2
        self.refuse = None
        self.submitted = []
        self.polls = 0
        self.job_urls = []
        self.lock = threading.Lock()

    def submit(self, body):
        self.submitted.append(body)
        if self.refuse:
            return self.refuse
        distinct = {}  # like the service: one URL of each duplicate, as first spelled
        for url in body["urls"]:
            distinct.setdefault(normalize_url(url), url)
        self.job_urls = list(distinct.values())
        return 202, {"jobId": "job-1"}

    def job(self, job_id):
        if job_id != "job-1" or not self.job_urls:
            return 404, {"error": f"no job {job_id}"}
        with self.lock:
            self.polls += 1
            finished = self.polls >= self.polls_to_finish
        done_count = len(self.job_urls) if finished else len(self.job_urls) // 2
        items, uploaded = [], {"pending": [], "complete": [], "failed": []}
        for i, url in enumerate(self.job_urls):
            kind, value = self.outcomes.get(url, ("ok", f"https://i.example/{i}.png"))
            if i >= done_count:
                items.append({"url": url, "state": "queued", "link": None, "reason": None,
                              "attempts": 0})
                uploaded["pending"].append(url)
            elif kind == "ok":
                items.append({"url": url, "state": "complete", "link": value, "reason": None,
                              "attempts": 1})
                uploaded["complete"].append(value)
            else:
                items.append({"url": url, "state": "failed", "link": None, "reason": value,
                              "attempts": 5})
                uploaded["failed"].append(url)
        return 200, {"id": job_id, "created": "2024-01-01T00:00:00Z",
                     "finished": "2024-01-01T00:00:01Z" if finished else None,
                     "status": "complete" if finished else "in-progress",
                     "uploaded": uploaded, "urls": items}


def make_handler(service):
    class Handler(BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/images/upload":
                return self.answer(404, {"error": "not found"})
            length = int(self.headers["Content-Length"])
            self.answer(*service.submit(json.loads(self.rfile.read(length))))

        def do_GET(self):
            prefix = "/v1/images/upload/"
            if not self.path.startswith(prefix):
                return self.answer(404, {"error": "not found"})
            self.answer(*service.job(self.path[len(prefix):]))

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def service():
    fake = FakeService()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def run(service, *args):
    return client.main(["--server", service.url, "--interval", "0.01", *args])


def test_all_uploaded_prints_table_and_exits_0(service, capsys):
    urls = ["http://a.example/1.png", "http://a.example/2.png"]
    assert run(service, *urls) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "job job-1",  # first, so that `bin/upload ... > out` keeps it for retry and cancel
        "OK    http://a.example/1.png  ->  https://i.example/0.png",
        "OK    http://a.example/2.png  ->  https://i.example/1.png",
    ]
    assert service.submitted == [{"urls": urls}]
    assert service.polls == 2
    assert "2/2" in err  # the progress bar went to stderr


def test_some_failed_exits_1(service, capsys):
    service.outcomes = {"http://a.example/bad.gif": ("fail", "HTTP 404 from source")}
    assert run(service, "http://a.example/ok.png", "http://a.example/bad.gif") == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        "job job-1",
        "OK    http://a.example/ok.png  ->  https://i.example/0.png",
        "FAIL  http://a.example/bad.gif  :  HTTP 404 from source",
    ]


def test_refused_job_prints_the_error_and_exits_2(service, capsys):
    service.refuse = (400, {"error": "'urls' must be a non-empty list of http(s) URLs"})
    assert run(service, "not-a-url") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "400" in err and "'urls' must be a non-empty list of http(s) URLs" in err
    assert "Traceback" not in err


def test_unknown_job_exits_2(service, capsys, monkeypatch):
    monkeypatch.setattr(service, "submit", lambda body: (202, {"jobId": "other"}))
    assert run(service, "http://a.example/1.png") == 2
    assert capsys.readouterr().err == (
        "upload: error: no such job other (or it belongs to another key)\n")


def test_unreachable_service_exits_2_without_traceback(service, capsys):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()
    assert client.main(["--server", url, "http://a.example/1.png"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach {url}" in err and "Traceback" not in err


def test_timeout_exits_2(service, capsys):
    service.polls_to_finish = 10**6
    assert run(service, "--timeout", "0.05", "http://a.example/1.png") == 2
    assert "timed out" in capsys.readouterr().err


def test_url_file_skips_comments_and_blank_lines(service, capsys, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("# my images\n\nhttp://a.example/1.png\n  http://a.example/2.png  \n"
                       "   # indented comment\nhttp://a.example/3.png#fragment\n")
    assert run(service, "-f", str(listing)) == 0
    assert service.submitted == [{"urls": ["http://a.example/1.png", "http://a.example/2.png",
                                           "http://a.example/3.png#fragment"]}]
    assert len(capsys.readouterr().out.splitlines()) == 4  # the job's id and 3 URLs


def test_url_file_dash_reads_stdin(service, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("http://a.example/1.png\n"))
    assert run(service, "-f", "-") == 0
    assert service.submitted == [{"urls": ["http://a.example/1.png"]}]


def test_missing_or_empty_url_file_exits_2(service, capsys, tmp_path):
    assert run(service, "-f", str(tmp_path / "missing.txt")) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    assert run(service, "-f", str(empty)) == 2
    assert "no URLs" in capsys.readouterr().err
    assert service.submitted == []


@pytest.mark.parametrize("argv", [[], ["-f", "x.txt", "http://a.example/1.png"],
                                  ["--interval", "soon", "http://a.example/1.png"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        client.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_server_defaults_to_uploader_url(service, monkeypatch, capsys):
    monkeypatch.setenv("UPLOADER_URL", service.url + "/")
    assert client.main(["--interval", "0.01", "http://a.example/1.png"]) == 0
    assert service.submitted


def test_plain_progress_lines_without_tqdm(service, monkeypatch, capsys):
    monkeypatch.setattr(follow, "tqdm", None)
    assert run(service, "http://a.example/1.png", "http://a.example/2.png") == 0
    assert capsys.readouterr().err.splitlines() == ["1/2 done", "2/2 done"]


def test_progress_counts_the_urls_of_the_job_not_the_arguments(service, monkeypatch, capsys):
    """A B A2 A: the service keeps A once (A2 is A spelled differently), so the job has 2."""
    monkeypatch.setattr(follow, "tqdm", None)
    a, b, a2 = "http://a.example/1.png", "http://a.example/2.png", "HTTP://A.example:80/./1.png#top"
    assert run(service, a, b, a2, a) == 0
    assert service.submitted == [{"urls": [a, b, a2, a]}]
    out, err = capsys.readouterr()
    assert err.splitlines() == ["1/2 done", "2/2 done"]
    assert len(out.splitlines()) == 3  # the job's id and 2 URLs


def test_the_bar_ends_full_for_duplicates(service, capsys):
    assert run(service, *["http://a.example/1.png"] * 3, "http://a.example/2.png") == 0
    err = capsys.readouterr().err
    assert "2/2" in err and "/4" not in err


@pytest.mark.parametrize("job, expected", [
    ({"urls": [{"state": "complete"}, {"state": "failed"}, {"state": "in_flight"}]}, (2, 3)),
    ({"uploaded": {"pending": ["u3"], "complete": ["l1"], "failed": ["u2"]}}, (2, 3)),
    ({"uploaded": {"pending": [], "complete": [], "failed": []}}, (0, 7)),
    ({}, (0, 7)),
])
def test_job_progress_reads_the_document(job, expected):
    assert follow.job_progress(job, 7) == expected


def test_bin_upload_wrapper(service):
    result = subprocess.run(
        [str(REPO / "bin" / "upload"), "--server", service.url, "--interval", "0.01",
         "http://a.example/1.png"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "job job-1\nOK    http://a.example/1.png  ->  https://i.example/0.png\n"


def test_the_client_imports_nothing_of_the_service():
    """image_client is a program of its own: each of its modules imports with the service's
    package (``uploader``) made unimportable."""
    code = ("import importlib, pkgutil, sys; sys.modules['uploader'] = None; import image_client; "
            "names = [m.name for m in pkgutil.walk_packages(image_client.__path__, 'image_client.')]; "
            "[importlib.import_module(name) for name in names]; print(' '.join(sorted(names)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {"image_client.api", "image_client.cli", "image_client.follow",
                                          "image_client.__main__"}


# -- the job-control contract (issue 11), against requests-mock -----------------------------

SERVER = "http://127.0.0.1:9"  # never reached: requests-mock answers in the service's place
UPLOAD = f"{SERVER}/v1/images/upload"
KEY = "s3cret-Key_0123456789"


def entry(url, state="complete", link=None, reason=None, image_id=None, deleted=False):
    return {"url": url, "state": state, "link": link, "reason": reason, "attempts": 1,
            "reused": False, "waiting": None, "image_id": image_id, "deleted": deleted}


def job_doc(job_id, *entries, status="complete", callback=None, **extra):
    finished = status == "complete"
    return {"id": job_id, "created": "2026-11-27T03:10:41.512Z",
            "finished": "2026-11-27T03:10:43.018Z" if finished else None, "status": status,
            "uploaded": {"pending": [e["url"] for e in entries if e["state"] not in FINAL],
                         "complete": [e["link"] for e in entries if e["state"] == "complete"],
                         "failed": [e["url"] for e in entries if e["state"] == "failed"]},
            "urls": list(entries), "callback": callback, **extra}


FINAL = ("complete", "failed")
CAT = entry("http://a.example/cat.png", link="https://i.example/cat.png", image_id="img-cat")
DOG = entry("http://a.example/dog.png", "failed", reason="HTTP 404 from source")


def cli(*args):
    return client.main(["--server", SERVER, "--interval", "0", *args])


def mock_upload(requests_mock, doc, job_id="job-1"):
    """A submission answered with ``job_id``, whose document is ``doc``."""
    requests_mock.post(UPLOAD, status_code=202, json={"jobId": job_id},
                       headers={"Location": f"/v1/images/upload/{job_id}"})
    requests_mock.get(f"{UPLOAD}/{job_id}", json=doc)


def authorizations(requests_mock):
    return [request.headers.get("Authorization") for request in requests_mock.request_history]


def test_the_key_is_sent_on_every_request_and_never_printed(requests_mock, capsys):
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli("--key", KEY, CAT["url"]) == 0
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 2
    out, err = capsys.readouterr()
    assert KEY not in out + err


def test_the_key_defaults_to_uploader_api_key(requests_mock, monkeypatch, capsys):
    monkeypatch.setenv("UPLOADER_API_KEY", KEY)
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli(CAT["url"]) == 0
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 2
    requests_mock.reset_mock()
    assert cli("--key", "other-key", CAT["url"]) == 0  # the option wins over the variable
    assert authorizations(requests_mock) == ["Bearer other-key"] * 2


@pytest.mark.parametrize("env", [None, "", "  "])
def test_without_a_key_no_authorization_is_sent(requests_mock, monkeypatch, env):
    if env is None:
        monkeypatch.delenv("UPLOADER_API_KEY", raising=False)
    else:
        monkeypatch.setenv("UPLOADER_API_KEY", env)
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli(CAT["url"]) == 0
    assert authorizations(requests_mock) == [None, None]


def test_a_netrc_entry_does_not_replace_the_key(requests_mock, monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli("--key", KEY, CAT["url"]) == 0
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "caf\u00e9"])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(requests_mock, capsys, key):
    assert cli("--key", key, CAT["url"]) == 2
    out, err = capsys.readouterr()
    assert err == ("upload: error: the API key has characters an HTTP header cannot carry "
                   "(spaces, control or non-ASCII characters)\n")
    assert out == "" and not requests_mock.called


def test_the_help_does_not_show_the_key(monkeypatch, capsys):
    monkeypatch.setenv("UPLOADER_API_KEY", KEY)
    with pytest.raises(SystemExit) as info:
        client.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--key KEY" in out and KEY not in out


def unauthorized(requests_mock, method, url):
    requests_mock.register_uri(method, url, status_code=401, headers={"WWW-Authenticate": "Bearer"},
                               json={"error": "a valid API key is required"})


def test_401_without_a_key_says_how_to_give_one(requests_mock, monkeypatch, capsys):
    monkeypatch.delenv("UPLOADER_API_KEY", raising=False)
    unauthorized(requests_mock, "POST", UPLOAD)
    assert cli(CAT["url"]) == 2
    assert capsys.readouterr() == (
        "", "upload: error: the service needs an API key: pass --key or set UPLOADER_API_KEY\n")


def test_401_with_a_key_says_it_was_refused_without_showing_it(requests_mock, capsys):
    unauthorized(requests_mock, "POST", UPLOAD)
    assert cli("--key", KEY, CAT["url"]) == 2
    assert capsys.readouterr() == ("", "upload: error: the service refused this API key\n")


def test_a_job_of_another_key_is_no_such_job(requests_mock, capsys):
    requests_mock.post(UPLOAD, status_code=202, json={"jobId": "job-1"})
    requests_mock.get(f"{UPLOAD}/job-1", status_code=404, json={"error": "no job 'job-1'"})
    assert cli("--key", KEY, CAT["url"]) == 2
    assert capsys.readouterr().err == (
        "upload: error: no such job job-1 (or it belongs to another key)\n")


@pytest.mark.parametrize("status, error", [
    (400, "urls[0] is not an absolute http(s) URL"),
    (415, "Content-Type must be application/json"),
    (413, "more than 1000 distinct URLs"),
])
def test_a_refused_submission_shows_the_services_reason(requests_mock, capsys, status, error):
    requests_mock.post(UPLOAD, status_code=status, json={"error": error})
    assert cli(CAT["url"]) == 2
    assert capsys.readouterr() == (
        "", f"upload: error: service refused the job ({status}): {error}\n")


def test_a_submission_is_json(requests_mock):
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli(CAT["url"]) == 0
    post = requests_mock.request_history[0]
    assert post.headers["Content-Type"] == "application/json"
    assert post.json() == {"urls": [CAT["url"]]}


def test_a_job_id_is_quoted_into_the_path(requests_mock):
    requests_mock.post(UPLOAD, status_code=202, json={"jobId": "../../images/x"})
    requests_mock.get(f"{UPLOAD}/..%2F..%2Fimages%2Fx", json=job_doc("x", CAT))
    assert cli(CAT["url"]) == 0
    assert requests_mock.last_request.path == "/v1/images/upload/..%2f..%2fimages%2fx"


HOOK = "https://hooks.example/done"


def callback(state, attempts=1, last_error=None):
    return {"url": HOOK, "state": state, "attempts": attempts, "last_error": last_error}


def test_callback_is_sent_as_callback_url(requests_mock, capsys):
    mock_upload(requests_mock, job_doc("job-1", CAT, callback=callback("delivered")))
    assert cli("--callback", HOOK, CAT["url"]) == 0
    assert requests_mock.request_history[0].json() == {"urls": [CAT["url"]], "callback_url": HOOK}
    assert capsys.readouterr().out.splitlines() == [
        "job job-1",
        f"OK    {CAT['url']}  ->  {CAT['link']}  (image img-cat)",
        f"callback  {HOOK}  :  delivered, 1 attempt",
    ]


def test_a_refused_callback_url_shows_the_services_reason(requests_mock, capsys):
    requests_mock.post(UPLOAD, status_code=400,
                       json={"error": "callback_url must be an absolute http(s) URL"})
    assert cli("--callback", "ftp://hooks.example/", CAT["url"]) == 2
    assert capsys.readouterr().err == ("upload: error: service refused the job (400): "
                                       "callback_url must be an absolute http(s) URL\n")


def test_a_failed_callback_shows_its_last_error_and_leaves_the_exit_code(requests_mock, capsys):
    doc = job_doc("job-1", CAT, callback=callback("failed", 5, "HTTP 500 from the callback"))
    mock_upload(requests_mock, doc)
    assert cli("--callback", HOOK, CAT["url"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"callback  {HOOK}  :  failed, 5 attempts; last error: HTTP 500 from the callback")


def test_a_pending_callback_is_watched_until_delivered(requests_mock, capsys):
    mock_upload(requests_mock, None)
    requests_mock.get(f"{UPLOAD}/job-1", [
        {"json": job_doc("job-1", entry(CAT["url"], "queued"), status="pending",
                         callback=callback("pending", 0))},
        {"json": job_doc("job-1", CAT, callback=callback("pending", 0))},
        {"json": job_doc("job-1", CAT, callback=callback("pending", 1, "connection refused"))},
        {"json": job_doc("job-1", CAT, callback=callback("delivered", 2))},
    ])
    assert cli("--callback", HOOK, CAT["url"]) == 0
    assert requests_mock.call_count == 5  # the POST and four polls
    assert capsys.readouterr().out.splitlines()[-1] == f"callback  {HOOK}  :  delivered, 2 attempts"


@pytest.mark.parametrize("grace, timeout", [(0.05, None), (60, "0.05")])
def test_a_pending_callback_is_waited_for_a_little_only(requests_mock, monkeypatch, capsys,
                                                        grace, timeout):
    """CALLBACK_GRACE bounds the wait, and so does --timeout, without calling it a time-out:
    the job itself is finished."""
    monkeypatch.setattr(follow, "CALLBACK_GRACE", grace)
    mock_upload(requests_mock, job_doc("job-1", CAT, callback=callback("pending", 0)))
    args = ["--interval", "0.01"] + (["--timeout", timeout] if timeout else [])
    started = time.monotonic()
    assert cli(*args, "--callback", HOOK, CAT["url"]) == 0
    assert time.monotonic() - started < 30  # not the 60 s of the grace
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == f"callback  {HOOK}  :  pending, 0 attempts"
    assert "timed out" not in err


def test_the_table_shows_image_ids_and_marks_deleted_images(requests_mock, capsys):
    gone = entry("http://a.example/old.png", link="https://i.example/old.png",
                 image_id="img-old", deleted=True)
    mock_upload(requests_mock, job_doc("job-1", CAT, gone, DOG))
    assert cli(CAT["url"], gone["url"], DOG["url"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "job job-1",
        f"OK    {CAT['url']}  ->  {CAT['link']}  (image img-cat)",
        f"GONE  {gone['url']}  ->  {gone['link']}  (image img-old, deleted)",
        f"FAIL  {DOG['url']}  :  HTTP 404 from source",
    ]


def test_a_deleted_image_still_counts_as_uploaded(requests_mock, capsys):
    gone = dict(CAT, deleted=True)
    mock_upload(requests_mock, job_doc("job-1", gone))
    assert cli(CAT["url"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("GONE  ")


# -- retry and cancel ------------------------------------------------------------------------

def test_retry_submits_the_retry_then_watches_the_new_job(requests_mock, capsys):
    requests_mock.post(f"{UPLOAD}/job-1/retry", status_code=202, json={"jobId": "job-2"},
                       headers={"Location": "/v1/images/upload/job-2"})
    requests_mock.get(f"{UPLOAD}/job-2", [
        {"json": job_doc("job-2", entry(DOG["url"], "queued"), status="pending",
                         retry_of="job-1")},
        {"json": job_doc("job-2", DOG, retry_of="job-1")},
    ])
    assert cli("--key", KEY, "retry", "job-1") == 1  # the URL failed again
    post = requests_mock.request_history[0]
    assert (post.method, post.path) == ("POST", "/v1/images/upload/job-1/retry")
    assert post.headers["Content-Type"] == "application/json" and post.json() == {}
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 3
    out, err = capsys.readouterr()
    assert out == f"job job-2\nFAIL  {DOG['url']}  :  HTTP 404 from source\n"  # its id first
    assert "job job-2" in err and "1/1" in err  # the progress bar of the new job
    assert KEY not in out + err


def test_retry_exits_0_when_every_url_is_uploaded_this_time(requests_mock, capsys):
    requests_mock.post(f"{UPLOAD}/job-1/retry", status_code=202, json={"jobId": "job-2"})
    requests_mock.get(f"{UPLOAD}/job-2", json=job_doc("job-2", CAT, retry_of="job-1"))
    assert cli("retry", "job-1") == 0
    assert capsys.readouterr().out == (
        f"job job-2\nOK    {CAT['url']}  ->  {CAT['link']}  (image img-cat)\n")


@pytest.mark.parametrize("status, body, message", [
    (409, {"error": "job job-1 has no failed URL to retry"},
     "service refused to retry job job-1 (409): job job-1 has no failed URL to retry"),
    (409, {"error": "job job-1 is not complete"},
     "service refused to retry job job-1 (409): job job-1 is not complete"),
    (404, {"error": "no job 'job-1'"}, "no such job job-1 (or it belongs to another key)"),
    (415, {"error": "Content-Type must be application/json"},
     "service refused to retry job job-1 (415): Content-Type must be application/json"),
    (401, {"error": "a valid API key is required"}, "the service refused this API key"),
])
def test_a_refused_retry_is_one_line_and_exit_2(requests_mock, capsys, status, body, message):
    requests_mock.post(f"{UPLOAD}/job-1/retry", status_code=status, json=body)
    assert cli("--key", KEY, "retry", "job-1") == 2
    assert capsys.readouterr() == ("", f"upload: error: {message}\n")
    assert requests_mock.call_count == 1


def test_an_unreachable_service_during_a_retry(requests_mock, capsys):
    requests_mock.post(f"{UPLOAD}/job-1/retry", exc=requests.ConnectionError("refused"))
    assert cli("retry", "job-1") == 2
    assert capsys.readouterr().err == (
        f"upload: error: cannot reach {SERVER} to retry job job-1: is the service running?\n")


def test_interrupting_a_retry_names_the_new_job(requests_mock, monkeypatch, capsys):
    requests_mock.post(f"{UPLOAD}/job-1/retry", status_code=202, json={"jobId": "job-2"})
    requests_mock.get(f"{UPLOAD}/job-2", json=job_doc("job-2", entry(DOG["url"], "queued"),
                                                      status="pending"))

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(follow.time, "sleep", interrupt)
    assert cli("retry", "job-1") == 130
    assert capsys.readouterr().err.endswith(
        "upload: interrupted; job job-2 goes on in the service\n")


CANCELLED = "cancelled at the client's request"


def test_cancel_waits_for_the_urls_in_flight_then_prints_the_table(requests_mock, capsys):
    slow = "http://a.example/slow.png"
    queued = entry("http://a.example/queued.png", "failed", reason=CANCELLED)
    requests_mock.delete(f"{UPLOAD}/job-1", json=job_doc(
        "job-1", CAT, entry(slow, "in_flight"), queued, status="in-progress"),
        headers={"X-Cancelled-Urls": "1"})
    requests_mock.get(f"{UPLOAD}/job-1", [
        {"json": job_doc("job-1", CAT, entry(slow, "in_flight"), queued, status="in-progress")},
        {"json": job_doc("job-1", CAT, entry(slow, link="https://i.example/slow.png",
                                             image_id="img-slow"), queued)},
    ])
    assert cli("--key", KEY, "cancel", "job-1") == 1  # a cancelled URL is a failed one
    assert [(r.method, r.path) for r in requests_mock.request_history] == [
        ("DELETE", "/v1/images/upload/job-1"), ("GET", "/v1/images/upload/job-1"),
        ("GET", "/v1/images/upload/job-1")]
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 3
    out, err = capsys.readouterr()
    assert "upload: cancelled 1 queued URL of job job-1\n" in err
    assert out.splitlines() == [
        "job job-1",
        f"OK    {CAT['url']}  ->  {CAT['link']}  (image img-cat)",
        f"OK    {slow}  ->  https://i.example/slow.png  (image img-slow)",
        f"FAIL  {queued['url']}  :  {CANCELLED}",
    ]


def test_cancel_of_a_job_with_nothing_left_to_cancel_says_so_and_exits_0(requests_mock, capsys):
    requests_mock.delete(f"{UPLOAD}/job-1", json=job_doc("job-1", CAT),
                         headers={"X-Cancelled-Urls": "0"})
    requests_mock.get(f"{UPLOAD}/job-1", json=job_doc("job-1", CAT))
    assert cli("cancel", "job-1") == 0
    out, err = capsys.readouterr()
    assert out == f"job job-1\nOK    {CAT['url']}  ->  {CAT['link']}  (image img-cat)\n"
    assert err.startswith("upload: nothing to cancel in job job-1: it is complete\n")


def test_a_cancel_with_every_url_in_flight_says_nothing_was_queued(requests_mock, capsys):
    running = job_doc("job-1", entry(CAT["url"], "in_flight"), status="in-progress")
    requests_mock.delete(f"{UPLOAD}/job-1", json=running, headers={"X-Cancelled-Urls": "0"})
    requests_mock.get(f"{UPLOAD}/job-1", json=job_doc("job-1", CAT))
    assert cli("cancel", "job-1") == 0
    assert capsys.readouterr().err.startswith(
        "upload: nothing to cancel in job job-1: no URL was queued; the URLs in flight finish\n")


@pytest.mark.parametrize("status, body, message", [
    (404, {"error": "no job 'job-1'"}, "no such job job-1 (or it belongs to another key)"),
    (409, {"error": "the job is already complete"},
     "service refused to cancel job job-1 (409): the job is already complete"),
    (503, {"error": "the service is shutting down"},
     "service refused to cancel job job-1 (503): the service is shutting down"),
])
def test_a_refused_cancel_is_one_line_and_exit_2(requests_mock, capsys, status, body, message):
    requests_mock.delete(f"{UPLOAD}/job-1", status_code=status, json=body)
    assert cli("cancel", "job-1") == 2
    assert capsys.readouterr() == ("", f"upload: error: {message}\n")


def test_a_cancel_without_a_key_says_how_to_give_one(requests_mock, monkeypatch, capsys):
    monkeypatch.delenv("UPLOADER_API_KEY", raising=False)
    unauthorized(requests_mock, "DELETE", f"{UPLOAD}/job-1")
    assert cli("cancel", "job-1") == 2
    assert capsys.readouterr().err == (
        "upload: error: the service needs an API key: pass --key or set UPLOADER_API_KEY\n")


# -- telling commands from URLs --------------------------------------------------------------

def test_options_may_come_before_or_after_the_command(requests_mock):
    requests_mock.delete(f"{UPLOAD}/job-1", json=job_doc("job-1", CAT))
    requests_mock.get(f"{UPLOAD}/job-1", json=job_doc("job-1", CAT))
    assert client.main(["--server", SERVER, "--key", KEY, "--interval", "0",
                        "cancel", "job-1"]) == 0
    assert client.main(["cancel", "job-1", "--server", SERVER, "--key", KEY]) == 0
    # after the command's name an option overrides the same option given before it
    assert client.main(["--server", "http://127.0.0.1:1", "--key", "before", "cancel",
                        "--server", SERVER, "--key", KEY, "job-1", "--interval", "0"]) == 0
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 6


def test_a_command_word_as_an_options_value_is_not_a_command(requests_mock, tmp_path,
                                                             monkeypatch):
    mock_upload(requests_mock, job_doc("job-1", CAT))
    assert cli("--key", "retry", CAT["url"]) == 0  # the key is "retry": an upload
    assert authorizations(requests_mock) == ["Bearer retry"] * 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cancel").write_text(CAT["url"] + "\n")
    assert cli("-f", "cancel") == 0  # a URL file named "cancel"
    assert requests_mock.request_history[2].json() == {"urls": [CAT["url"]]}


@pytest.mark.parametrize("argv", [["retry"], ["retry", "job-1", "job-2"], ["cancel"],
                                  ["retry", "job-1", "--interval", "soon"],
                                  ["delete"], ["jobs", "job-1"]])
def test_command_usage_errors_exit_2(argv, requests_mock, capsys):
    with pytest.raises(SystemExit) as info:
        client.main(argv)
    assert info.value.code == 2
    assert "usage: upload " in capsys.readouterr().err
    assert not requests_mock.called


@pytest.mark.parametrize("argv", [["cancel", "job-1", "--callback", HOOK],
                                  ["--callback", HOOK, "jobs"], ["-f", "urls.txt", "retry", "x"]])
def test_upload_options_with_a_command_are_named_in_the_error(argv, requests_mock, capsys):
    with pytest.raises(SystemExit) as info:
        client.main(argv)
    assert info.value.code == 2
    command = next(word for word in argv if word in client.COMMANDS)
    assert capsys.readouterr().err.endswith(
        f"upload: error: --callback and -f belong to an upload, not to {command}\n")
    assert not requests_mock.called


@pytest.mark.parametrize("command", ["retry", "cancel"])
def test_each_command_has_its_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        client.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: upload {command} [-h]")


def test_the_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        client.main(["--help"])
    out = capsys.readouterr().out
    assert all(f"upload [options] {command}" in out for command in client.COMMANDS)


# -- jobs and delete -------------------------------------------------------------------------

def summary(job_id, status="complete", complete=1, failed=0, pending=0):
    return {"id": job_id, "created": f"2026-11-27T03:10:4{job_id[-1]}.000Z",
            "finished": None if status != "complete" else "2026-11-27T03:11:00.000Z",
            "status": status,
            "counts": {"pending": pending, "complete": complete, "failed": failed}}


def mock_listing(requests_mock, jobs, page_size=50):
    """Newest first; ``next`` is the last id of a page when more follow."""
    def answer(request, context):
        limit = int(request.qs.get("limit", [page_size])[0])
        before = request.qs.get("before", [None])[0]
        ids = [job["id"] for job in jobs]
        rest = jobs[ids.index(before) + 1:] if before else jobs
        page = rest[:limit]
        return {"jobs": page, "next": page[-1]["id"] if len(rest) > limit else None}
    requests_mock.get(UPLOAD, json=answer)


LISTED = [summary("job-5", "in-progress", complete=1, pending=2), summary("job-4", failed=2),
          summary("job-3"), summary("job-2", "pending", complete=0, pending=1),
          summary("job-1", complete=3)]
LINES = [
    "job-5  2026-11-27T03:10:45.000Z  in-progress  1 complete, 0 failed, 2 pending",
    "job-4  2026-11-27T03:10:44.000Z  complete     1 complete, 2 failed, 0 pending",
    "job-3  2026-11-27T03:10:43.000Z  complete     1 complete, 0 failed, 0 pending",
    "job-2  2026-11-27T03:10:42.000Z  pending      0 complete, 0 failed, 1 pending",
    "job-1  2026-11-27T03:10:41.000Z  complete     3 complete, 0 failed, 0 pending",
]


def test_jobs_lists_one_page_newest_first(requests_mock, capsys):
    mock_listing(requests_mock, LISTED)
    assert cli("--key", KEY, "jobs") == 0
    assert capsys.readouterr() == ("\n".join(LINES) + "\n", "")
    assert [r.url for r in requests_mock.request_history] == [UPLOAD]  # the service's limit
    assert authorizations(requests_mock) == [f"Bearer {KEY}"]


def test_jobs_limit_shows_a_page_and_says_there_are_more(requests_mock, capsys):
    mock_listing(requests_mock, LISTED)
    assert cli("jobs", "--limit", "2") == 0
    assert capsys.readouterr() == ("\n".join(LINES[:2]) + "\n",
                                   "upload: there are more jobs: --all lists them all\n")
    assert requests_mock.last_request.qs == {"limit": ["2"]}


def test_jobs_all_follows_next(requests_mock, capsys):
    mock_listing(requests_mock, LISTED)
    assert cli("--key", KEY, "jobs", "--all", "--limit", "2") == 0
    assert capsys.readouterr() == ("\n".join(LINES) + "\n", "")
    assert [r.qs for r in requests_mock.request_history] == [
        {"limit": ["2"]}, {"limit": ["2"], "before": ["job-4"]},
        {"limit": ["2"], "before": ["job-2"]}]
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 3


def test_jobs_all_stops_when_a_cursor_comes_back(requests_mock, capsys):
    requests_mock.get(UPLOAD, json={"jobs": [summary("job-1", complete=3)], "next": "job-1"})
    assert cli("jobs", "--all") == 2
    out, err = capsys.readouterr()
    assert out == (LINES[-1] + "\n") * 2
    assert err == "upload: error: the service gave the cursor 'job-1' twice; stopping there\n"


def test_jobs_without_any_says_so(requests_mock, capsys):
    requests_mock.get(UPLOAD, json={"jobs": [], "next": None})
    assert cli("jobs") == 0
    assert capsys.readouterr() == ("", "upload: no jobs\n")


@pytest.mark.parametrize("status, body, message", [
    (400, {"error": "limit must be between 1 and 500"},
     "service refused to list the jobs (400): limit must be between 1 and 500"),
    (405, {"error": "method GET is not allowed on /v1/images/upload"},
     "service refused to list the jobs (405): method GET is not allowed on /v1/images/upload"),
    (401, {"error": "a valid API key is required"},
     "the service needs an API key: pass --key or set UPLOADER_API_KEY"),
    (200, {"uploaded": []}, "the list of jobs: the service sent '{\"uploaded\": []}'"),
])
def test_a_refused_listing_is_one_line_and_exit_2(requests_mock, monkeypatch, capsys,
                                                  status, body, message):
    monkeypatch.delenv("UPLOADER_API_KEY", raising=False)
    requests_mock.get(UPLOAD, status_code=status, json=body)
    assert cli("jobs", "--limit", "501") == 2
    assert capsys.readouterr() == ("", f"upload: error: {message}\n")


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_jobs_limit_must_be_a_positive_number(requests_mock, capsys, limit):
    with pytest.raises(SystemExit) as info:
        client.main(["jobs", "--limit", limit])
    assert info.value.code == 2
    assert "usage: upload jobs" in capsys.readouterr().err
    assert not requests_mock.called


IMAGES = f"{SERVER}/v1/images"


def test_delete_deletes_each_image_once_one_line_each(requests_mock, capsys):
    requests_mock.delete(f"{IMAGES}/img-cat", status_code=202,
                         json={"image_id": "img-cat", "link": "https://i.example/cat.png"})
    requests_mock.delete(f"{IMAGES}/img-dog", status_code=204)  # as an older service answered
    assert cli("--key", KEY, "delete", "img-cat", "img-dog", "img-cat") == 0
    assert capsys.readouterr() == ("OK    img-cat  deleted\nOK    img-dog  deleted\n", "")
    assert [(r.method, r.path) for r in requests_mock.request_history] == [
        ("DELETE", "/v1/images/img-cat"), ("DELETE", "/v1/images/img-dog")]
    assert authorizations(requests_mock) == [f"Bearer {KEY}"] * 2


def test_delete_goes_on_past_an_image_it_cannot_delete_and_exits_1(requests_mock, capsys):
    requests_mock.delete(f"{IMAGES}/img-gone", status_code=404, json={"error": "no image"})
    requests_mock.delete(f"{IMAGES}/img-odd", status_code=409, json={"error": "still uploading"})
    requests_mock.delete(f"{IMAGES}/img-cat", status_code=202, json={})
    assert cli("delete", "img-gone", "img-odd", "img-cat") == 1
    assert capsys.readouterr() == (
        "FAIL  img-gone  :  no such image (already deleted, or it belongs to another key)\n"
        "FAIL  img-odd  :  service refused (409): still uploading\n"
        "OK    img-cat  deleted\n", "")


def test_delete_quotes_the_id_into_the_path(requests_mock):
    requests_mock.delete(f"{IMAGES}/..%2Fupload%2Fjob-1", status_code=202, json={})
    assert cli("delete", "../upload/job-1") == 0
    assert requests_mock.last_request.path == "/v1/images/..%2fupload%2fjob-1"


def test_delete_stops_at_a_401_without_showing_the_key(requests_mock, capsys):
    unauthorized(requests_mock, "DELETE", f"{IMAGES}/img-cat")
    assert cli("--key", KEY, "delete", "img-cat", "img-dog") == 2
    assert capsys.readouterr() == ("", "upload: error: the service refused this API key\n")
    assert requests_mock.call_count == 1


def test_delete_stops_when_the_service_cannot_be_reached(requests_mock, capsys):
    requests_mock.delete(f"{IMAGES}/img-cat", status_code=204)
    requests_mock.delete(f"{IMAGES}/img-dog", exc=requests.ConnectTimeout("timed out"))
    assert cli("delete", "img-cat", "img-dog", "img-owl") == 2
    out, err = capsys.readouterr()
    assert out == "OK    img-cat  deleted\n"
    assert err == (f"upload: error: cannot reach {SERVER} to delete image img-dog: "
                   "is the service running?\n")


# -- every command over real HTTP: the job-control fake the web page's tests use ----------

@pytest.fixture
def job_api():
    with FakeJobApi() as api:
        api.key = KEY
        api.server = f"http://127.0.0.1:{api.port}"  # its own url says localhost
        yield api


def test_every_command_against_the_job_api_fake(job_api, capsys):
    def upload(*args):
        code = client.main(["--server", job_api.server, "--key", KEY, "--interval", "0", *args])
        out, err = capsys.readouterr()
        assert KEY not in out + err
        return code, out.splitlines()

    ok, bad, slow = ("http://images.example/ok.png", "http://images.example/fail.png",
                     "http://images.example/slow.png")
    code, table = upload(ok, bad)
    assert code == 1
    first = next(iter(job_api.jobs))
    image_id = job_api.jobs[first]["urls"][0]["image_id"]
    assert table == [f"job {first}",
                     f"OK    {ok}  ->  {job_api.url}/i/{image_id}.png  (image {image_id})",
                     f"FAIL  {bad}  :  {FAKE_MISSING}"]

    code, table = upload("retry", first)
    second = list(job_api.jobs)[-1]
    assert (code, table) == (1, [f"job {second}", f"FAIL  {bad}  :  {FAKE_MISSING}"])
    assert job_api.jobs[second]["retry_of"] == first

    job_api.callback = {"url": HOOK, "state": "delivered", "attempts": 1, "last_error": None}
    third = job_api.create([slow])  # stays queued until cancelled
    assert upload("cancel", third) == (1, [f"job {third}", f"FAIL  {slow}  :  {FAKE_CANCELLED}",
                                           f"callback  {HOOK}  :  delivered, 1 attempt"])

    code, lines = upload("jobs", "--all", "--limit", "2")
    assert code == 0 and [line.split()[0] for line in lines] == [third, second, first]

    assert upload("delete", image_id, "no-such-image") == (1, [
        f"OK    {image_id}  deleted",
        "FAIL  no-such-image  :  no such image (already deleted, or it belongs to another key)"])
    assert job_api.jobs[first]["urls"][0]["deleted"] is True

    assert {authorization for *_, authorization in job_api.requests} == {f"Bearer {KEY}"}
    assert {method for method, *_ in job_api.requests} == {"GET", "POST", "DELETE"}


def test_bin_upload_runs_a_command_with_the_key_from_the_environment(job_api):
    job_api.seed(2)
    result = subprocess.run([str(REPO / "bin" / "upload"), "jobs"], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "UPLOADER_URL": job_api.server,
                                 "UPLOADER_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(job_api.jobs)[::-1]
    assert KEY not in result.stdout + result.stderr
    refused = subprocess.run([str(REPO / "bin" / "upload"), "--server", job_api.server, "jobs"],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "UPLOADER_API_KEY"})
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        2, "", "upload: error: the service needs an API key: pass --key or set UPLOADER_API_KEY\n")


def test_a_job_line_survives_missing_fields():
    assert client.job_line({"id": "job-9", "created": None, "status": None}) == (
        "job-9  ?  ?            0 complete, 0 failed, 0 pending")
