"""The command-line client against a small fake of the service's two job endpoints."""
import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from uploader import client
from uploader.submission import normalize_url

ROOT = Path(__file__).resolve().parent.parent


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
    assert "no job other" in capsys.readouterr().err


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
    assert len(capsys.readouterr().out.splitlines()) == 3


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
    monkeypatch.setattr(client, "tqdm", None)
    assert run(service, "http://a.example/1.png", "http://a.example/2.png") == 0
    assert capsys.readouterr().err.splitlines() == ["1/2 done", "2/2 done"]


def test_progress_counts_the_urls_of_the_job_not_the_arguments(service, monkeypatch, capsys):
    """A B A2 A: the service keeps A once (A2 is A spelled differently), so the job has 2."""
    monkeypatch.setattr(client, "tqdm", None)
    a, b, a2 = "http://a.example/1.png", "http://a.example/2.png", "HTTP://A.example:80/./1.png#top"
    assert run(service, a, b, a2, a) == 0
    assert service.submitted == [{"urls": [a, b, a2, a]}]
    out, err = capsys.readouterr()
    assert err.splitlines() == ["1/2 done", "2/2 done"]
    assert len(out.splitlines()) == 2


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
    assert client.job_progress(job, 7) == expected


def test_bin_upload_wrapper(service):
    result = subprocess.run(
        [str(ROOT / "bin" / "upload"), "--server", service.url, "--interval", "0.01",
         "http://a.example/1.png"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK    http://a.example/1.png  ->  https://i.example/0.png\n"
