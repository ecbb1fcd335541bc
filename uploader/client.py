"""Command-line client of a running service: submit URLs, watch the job, print the links.

    bin/upload [options] [--callback URL] URL... | -f FILE    submit, watch, print the table
    bin/upload [options] retry JOB      a new job of JOB's failed URLs, watched the same way
    bin/upload [options] cancel JOB     cancel JOB, wait for its URLs in flight, its table
    bin/upload [options] jobs [--limit N] [--all]   your jobs, newest first, a line each
    bin/upload [options] delete IMAGE_ID...         delete uploaded images, a line each
    options: --server URL, --key KEY, --interval S, --timeout S (before or after a command)

An upload, a retry and a cancel print ``job <id>`` on stdout first (so ``> out`` keeps
the id), then a progress bar on stderr and the job's table on stdout.

A command is named by the first word that is neither an option nor an option's value;
a URL starts with http(s):// and so never names one, and ``bin/upload URL...`` and
``-f FILE`` work as they always did. It talks to the service only over its public HTTP
API, so it works the same against a local process or a container. The server is
--server, else $UPLOADER_URL; the API key (sent as ``Authorization: Bearer``, never
printed) is --key, else $UPLOADER_API_KEY.

Exit codes: 0 every URL of the job uploaded, 1 some failed (after ``cancel`` too: a
cancelled URL is a failed one, so 0 means nothing was left to cancel), 2 nothing to
report (bad usage, service unreachable or refusing, or --timeout reached), 130 Ctrl-C.
``jobs`` exits 0 once listed; ``delete`` 0 when every image was deleted, 1 when one
was not (unknown, deleted already, or another key's), 2 on 401 or a network failure.
"""
import argparse
import os
import re
import sys
import time
from urllib.parse import quote

import requests
from requests.auth import AuthBase

try:
    from tqdm import tqdm
except ImportError:  # optional: plain progress lines without it
    tqdm = None

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
REQUEST_TIMEOUT = 30.0  # seconds for one HTTP request to the service
DEFAULT_SERVER = "http://localhost:8000"
FINAL_STATES = ("complete", "failed")
CALLBACK_GRACE = 5.0  # seconds a finished job is watched further while its webhook is pending


class ClientError(Exception):
    """Why the client cannot go on; printed as one line, exit code 2."""


def read_url_file(path, stdin=None):
    """URLs from ``path`` (``-`` = stdin), one per line; blank lines and ``#`` comments skipped."""
    if path == "-":
        lines = (stdin or sys.stdin).read().splitlines()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _error_text(response):
    """The service's ``error`` field, or the start of whatever it sent instead."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message") or error
    return str(error) if error else (response.text.strip()[:200] or response.reason)


_KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a Bearer token may hold


def check_key(key):
    """The API key as given, stripped; ``None`` when empty. A key an HTTP header cannot carry
    is refused here, in words that do not repeat it (``requests`` would quote it)."""
    key = (key or "").strip()
    if key and not _KEY_CHARACTERS.fullmatch(key):
        raise ClientError("the API key has characters an HTTP header cannot carry "
                          "(spaces, control or non-ASCII characters)")
    return key or None


class _Bearer(AuthBase):
    """``Authorization: Bearer <key>``; its repr does not show the key."""

    def __init__(self, key):
        self.key = key

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.key}"
        return request

    def __repr__(self):
        return "<Bearer ***>"


class Api:
    """The service's HTTP API as this client uses it.

    Every call is one request; a network failure or a refusal becomes one ClientError
    saying what was being done. The key travels in the session's ``Authorization``
    header only and appears in no message.
    """

    def __init__(self, session, server, key=None):
        self.session, self.server, self.key = session, server.rstrip("/"), key
        if key:  # an auth object, not a header: ~/.netrc cannot replace it, and requests
            session.auth = _Bearer(key)  # drops it on a redirect to another host

    def request(self, method, path, doing, **kwargs):
        try:
            return self.session.request(method, f"{self.server}{path}", timeout=REQUEST_TIMEOUT,
                                        **kwargs)
        except requests.RequestException as exc:
            why = "is the service running?" if isinstance(exc, requests.ConnectionError) else exc
            raise ClientError(f"cannot reach {self.server} {doing}: {why}") from None

    def refused(self, response, what, missing=None):
        """The ClientError for an unexpected answer: ``what (status): the service's reason``,
        or for 401 what to do about the key, for 404 ``missing``."""
        status = response.status_code
        if status == 401:
            return ClientError("the service refused this API key" if self.key else
                               "the service needs an API key: pass --key or set UPLOADER_API_KEY")
        if status == 404 and missing:
            return ClientError(missing)
        return ClientError(f"{what} ({status}): {_error_text(response)}")

    @staticmethod
    def json(response, what):
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{what}: the service sent invalid JSON") from None

    def submit(self, urls, callback=None):
        """POST the URLs (and the webhook's address, if any); return the new job's id."""
        body = {"urls": urls}
        if callback:
            body["callback_url"] = callback
        response = self.request("POST", "/v1/images/upload", "to submit the job", json=body)
        if response.status_code != 202:
            raise self.refused(response, "service refused the job")
        return self.job_id(response)

    def job_id(self, response):
        try:
            return response.json()["jobId"]
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"service answered 202 without a jobId: {response.text[:200]!r}") from None

    def retry(self, job_id):
        """POST the retry of a job's failed URLs; return the new job's id."""
        response = self.request("POST", f"{_job_path(job_id)}/retry", f"to retry job {job_id}",
                                json={})
        if response.status_code != 202:
            raise self.refused(response, f"service refused to retry job {job_id}",
                               missing=_no_such_job(job_id))
        return self.job_id(response)

    def cancel(self, job_id):
        """DELETE the job: its queued URLs fail as cancelled. Return its document and how
        many URLs this cancelled (None from a service that does not say)."""
        response = self.request("DELETE", _job_path(job_id), f"to cancel job {job_id}")
        if response.status_code != 200:
            raise self.refused(response, f"service refused to cancel job {job_id}",
                               missing=_no_such_job(job_id))
        job = self.json(response, f"job {job_id}")
        if not isinstance(job, dict):
            raise ClientError(f"job {job_id}: the service sent {response.text[:200]!r}")
        cancelled = response.headers.get("X-Cancelled-Urls", "")
        return job, int(cancelled) if cancelled.isdigit() else None

    def jobs(self, limit=None, before=None):
        """One page of the caller's jobs, newest first: ``{"jobs": [...], "next": cursor}``."""
        params = {name: value for name, value in (("limit", limit), ("before", before))
                  if value is not None}
        response = self.request("GET", "/v1/images/upload", "to list the jobs", params=params)
        if response.status_code != 200:
            raise self.refused(response, "service refused to list the jobs")
        page = self.json(response, "the list of jobs")
        if not isinstance(page, dict) or not isinstance(page.get("jobs"), list):
            raise ClientError(f"the list of jobs: the service sent {response.text[:200]!r}")
        return page

    def delete_image(self, image_id):
        """DELETE an uploaded image: ``None`` once deleted (202: its link is gone from the
        service, which removes the bytes at the host next; an older service answered 204),
        else why not. A 401 raises, as a network failure does: every other image would
        meet the same refusal."""
        response = self.request("DELETE", f"/v1/images/{quote(image_id, safe='')}",
                                f"to delete image {image_id}")
        if response.status_code in (202, 204):
            return None
        if response.status_code == 401:
            raise self.refused(response, "")
        if response.status_code == 404:
            return "no such image (already deleted, or it belongs to another key)"
        return f"service refused ({response.status_code}): {_error_text(response)}"

    def job(self, job_id):
        """GET the job's current state."""
        response = self.request("GET", _job_path(job_id), f"while waiting for job {job_id}")
        if response.status_code != 200:
            raise self.refused(response, f"cannot read job {job_id}", missing=_no_such_job(job_id))
        return self.json(response, f"job {job_id}")


def _job_path(job_id):
    return f"/v1/images/upload/{quote(str(job_id), safe='')}"


def _no_such_job(job_id):
    return f"no such job {job_id} (or it belongs to another key)"


class _Progress:
    """A tqdm bar on stderr, or plain ``done/total`` lines when tqdm is not installed."""

    def __init__(self, total, job_id):
        self.done, self.total = 0, total
        self.bar = tqdm(total=total, unit="url", desc=f"job {job_id}", file=sys.stderr) if tqdm else None

    def update(self, done):
        if done != self.done:
            if self.bar is not None:
                self.bar.update(done - self.done)
            else:
                print(f"{done}/{self.total} done", file=sys.stderr, flush=True)
            self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()


def job_progress(job, submitted):
    """(URLs finished, URLs in the job). The service keeps one of each duplicate (also when
    spelled differently), so the total is what its document lists, not how many were
    ``submitted``; that count is only the fallback for a document without a list."""
    urls = job.get("urls")
    if isinstance(urls, list):
        done = sum(1 for item in urls if isinstance(item, dict) and item.get("state") in FINAL_STATES)
        return done, len(urls)
    uploaded = job.get("uploaded") or {}
    done = len(uploaded.get("complete") or ()) + len(uploaded.get("failed") or ())
    return done, (done + len(uploaded.get("pending") or ())) or submitted


def wait(api, job_id, submitted, *, interval, timeout=None):
    """Poll until the job is complete, showing progress; return the final job.

    A webhook is delivered after its job completes: while it is still ``pending`` the
    polls go on for up to CALLBACK_GRACE seconds (never past --timeout), so the report
    can say how it went; then the job is reported whatever the webhook's state.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = completed = None
    try:
        while True:
            job = api.job(job_id)
            done, total = job_progress(job, submitted)
            if progress is None:  # the first answer says how many URLs the job really has
                progress = _Progress(total, job_id)
            progress.update(done)
            now = time.monotonic()
            if job.get("status") == "complete":
                completed = completed or now
                patience = completed + CALLBACK_GRACE
                if deadline is not None:
                    patience = min(patience, deadline)
                if _callback(job).get("state") != "pending" or now + interval > patience:
                    return job
            elif deadline is not None and now + interval > deadline:
                raise ClientError(f"timed out after {timeout:g}s; job {job_id} goes on in the service")
            time.sleep(interval)
    finally:
        if progress is not None:
            progress.close()


def _callback(job):
    callback = job.get("callback")
    return callback if isinstance(callback, dict) else {}


def report(job):
    """The final table, one line per URL (with the webhook's state last, if the job has
    one), and whether every URL was uploaded. An uploaded entry shows its image id, for
    ``bin/upload delete``; one deleted since is marked GONE (it was uploaded: it counts
    as such)."""
    lines, all_ok = [], True
    for item in job.get("urls") or []:
        if item.get("state") == "complete" and item.get("link"):
            notes = [f"image {item['image_id']}"] if item.get("image_id") else []
            notes += ["deleted"] if item.get("deleted") else []
            lines.append(f"{'GONE' if item.get('deleted') else 'OK':<4}  {item.get('url')}  ->  "
                         f"{item['link']}" + (f"  ({', '.join(notes)})" if notes else ""))
        else:
            all_ok = False
            reason = item.get("reason") or f"not uploaded ({item.get('state')})"
            lines.append(f"FAIL  {item.get('url')}  :  {reason}")
    if not job.get("urls"):  # a service without per-URL detail: report what it has
        uploaded = job.get("uploaded") or {}
        lines += [f"OK    {link}" for link in uploaded.get("complete", ())]
        lines += [f"FAIL  {url}  :  failed" for url in uploaded.get("failed", ())]
        all_ok = not uploaded.get("failed")
    callback = _callback(job)
    if callback:
        attempts = callback.get("attempts") or 0
        line = (f"callback  {callback.get('url')}  :  {callback.get('state')}, "
                f"{attempts} attempt{'' if attempts == 1 else 's'}")
        if callback.get("last_error"):
            line += f"; last error: {callback['last_error']}"
        lines.append(line)
    return lines, all_ok


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


USAGE = """%(prog)s [options] URL... | -f FILE
       %(prog)s [options] retry JOB
       %(prog)s [options] cancel JOB
       %(prog)s [options] jobs [--limit N] [--all]
       %(prog)s [options] delete IMAGE_ID..."""

COMMANDS_HELP = """\
commands (a first word that is not a URL; 'upload COMMAND --help' says more):
  retry JOB    submit a new job of JOB's failed URLs and watch it as an upload
  cancel JOB   cancel JOB (its queued URLs fail as cancelled, the URLs in flight
               finish), wait for it to complete and print its table
  jobs         your jobs, newest first, one line each: id, created, status, counts
  delete IMAGE_ID...
               delete uploaded images (the table shows each one's image id)

exit codes: 0 every URL uploaded (every image deleted), 1 some URL failed (also
when cancelled; some image not deleted), 2 nothing to report (bad usage; the
service unreachable or refusing; --timeout reached)
"""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _service_options(parser, *, defaults=True):
    """--server and --key. A subcommand's copies default to SUPPRESS: given after the
    command's name they override what was given before it, else they leave it."""
    def default(value):
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--server", metavar="URL",
                        default=default(os.environ.get("UPLOADER_URL") or DEFAULT_SERVER),
                        help=f"service base URL (default: $UPLOADER_URL or {DEFAULT_SERVER})")
    parser.add_argument("--key", metavar="KEY", default=default(os.environ.get("UPLOADER_API_KEY")),
                        help="API key, sent as 'Authorization: Bearer KEY' (default: "
                             "$UPLOADER_API_KEY, which other users cannot see in ps)")


def _watch_options(parser, *, defaults=True):
    """--interval and --timeout, for the commands that follow a job to its end."""
    parser.add_argument("--interval", metavar="SECONDS", type=_seconds,
                        default=0.5 if defaults else argparse.SUPPRESS,
                        help="seconds between polls of the job (default: 0.5)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                        default=None if defaults else argparse.SUPPRESS,
                        help="give up waiting after this many seconds (default: wait)")


def _upload_parser(add_help=True):
    parser = argparse.ArgumentParser(
        prog="upload", usage=USAGE, add_help=add_help, epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Re-host images through a running image-service: submit the URLs,\n"
                    "show progress, print each URL's link (and image id) or reason.")
    parser.add_argument("urls", nargs="*", metavar="URL", help="image URLs to upload")
    parser.add_argument("-f", "--file", help="read URLs from FILE, one per line ('-' = stdin)")
    _service_options(parser)
    parser.add_argument("--callback", metavar="URL",
                        help="ask the service to POST the finished job to this http(s) URL "
                             "(a webhook); the report shows whether it was delivered")
    _watch_options(parser)
    return parser


def _commands_parser():
    parser = argparse.ArgumentParser(prog="upload", usage=USAGE, epilog=COMMANDS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _service_options(parser)
    _watch_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in [
            ("retry", "submit a new job of JOB's failed URLs, then watch it as an upload: "
                      "progress, table, exit code 1 if a URL failed again"),
            ("cancel", "cancel JOB: its queued URLs fail as cancelled, the URLs in flight "
                       "finish; then wait for the job to complete and print its table "
                       "(exit code 1 if any URL failed, as after an upload)")]:
        command = commands.add_parser(name, prog=f"upload {name}", help=help_text,
                                      description=help_text)
        command.add_argument("job", metavar="JOB", help="the job's id")
        _service_options(command, defaults=False)
        _watch_options(command, defaults=False)
    listing = "your jobs, newest first, one line each: id, created, status, counts"
    command = commands.add_parser("jobs", prog="upload jobs", help=listing, description=listing)
    command.add_argument("--limit", metavar="N", type=_positive_int,
                         help="at most N jobs (a page of N with --all; the service's "
                              "default is 50, its maximum 500)")
    command.add_argument("--all", action="store_true", help="every job, page after page")
    _service_options(command, defaults=False)
    removal = ("delete uploaded images, one line each; exit code 1 if one was not "
               "deleted (unknown, deleted already, or another key's)")
    command = commands.add_parser("delete", prog="upload delete", help=removal,
                                  description=removal)
    command.add_argument("image_ids", nargs="+", metavar="IMAGE_ID",
                         help="an image id, as the table after an upload shows it")
    _service_options(command, defaults=False)
    return parser


def parse_args(argv):
    """Today's upload arguments, unless the first word that is neither an option nor an
    option's value names a command (a URL never does). The upload parser itself finds
    that word, so it reads option values exactly as it would parse them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    known = _upload_parser(add_help=False).parse_known_args(argv)[0]
    if known.urls and known.urls[0] in COMMANDS:
        parser = _commands_parser()
        if known.callback is not None or known.file is not None:
            parser.error(f"--callback and -f belong to an upload, not to {known.urls[0]}")
        return parser.parse_args(argv)
    parser = _upload_parser()
    args = parser.parse_args(argv)
    if bool(args.urls) == bool(args.file):
        parser.error("give either URLs or -f FILE")
    args.command = "upload"
    return args


def watch(api, job_id, submitted, args):
    """Say the job's id first (on stdout, so ``> out`` keeps it for retry and cancel),
    follow the job to its end with a progress bar, print its table; the exit code."""
    print(f"job {job_id}", flush=True)
    try:
        job = wait(api, job_id, submitted, interval=args.interval, timeout=args.timeout)
    except KeyboardInterrupt:
        print(f"\nupload: interrupted; job {job_id} goes on in the service", file=sys.stderr)
        return EXIT_INTERRUPTED
    lines, all_ok = report(job)
    for line in lines:
        print(line)
    return EXIT_OK if all_ok else EXIT_SOME_FAILED


def upload(api, args):
    """Submit the URLs of the command line or of -f FILE, then watch the job."""
    urls = read_url_file(args.file) if args.file else args.urls
    if not urls:
        raise ClientError(f"no URLs in {args.file}")
    return watch(api, api.submit(urls, args.callback), len(urls), args)


def retry(api, args):
    """A new job of the failed URLs of args.job, watched as an upload is."""
    return watch(api, api.retry(args.job), 0, args)


def cancel(api, args):
    """Cancel args.job, say how many URLs that cancelled (none: say why), follow it until
    its URLs in flight are done, print its table."""
    job, cancelled = api.cancel(args.job)
    job_id = job.get("id") or args.job
    if cancelled == 0:
        why = ("it is complete" if job.get("status") == "complete" else
               "no URL was queued; the URLs in flight finish")
        print(f"upload: nothing to cancel in job {job_id}: {why}", file=sys.stderr)
    elif cancelled:
        print(f"upload: cancelled {cancelled} queued URL{'' if cancelled == 1 else 's'} of job "
              f"{job_id}", file=sys.stderr)
    return watch(api, job_id, len(job.get("urls") or ()), args)


def jobs(api, args):
    """The caller's jobs, newest first, one line each; with --all every page."""
    cursor, cursors, shown = None, set(), 0
    while True:
        page = api.jobs(args.limit, cursor)
        for job in page["jobs"]:
            print(job_line(job))
        shown += len(page["jobs"])
        cursor = page.get("next")
        if not cursor:
            break
        if not args.all:
            print("upload: there are more jobs: --all lists them all", file=sys.stderr)
            break
        if cursor in cursors:
            raise ClientError(f"the service gave the cursor {cursor!r} twice; stopping there")
        cursors.add(cursor)
    if not shown:
        print("upload: no jobs", file=sys.stderr)
    return EXIT_OK


def job_line(job):
    """``id  created  status  N complete, N failed, N pending``."""
    counts = job.get("counts") or {}
    tally = ", ".join(f"{counts.get(name, 0)} {name}" for name in ("complete", "failed", "pending"))
    job_id, created, status = (str(job.get(name) or "?") for name in ("id", "created", "status"))
    return f"{job_id}  {created}  {status:<11}  {tally}"


def delete(api, args):
    """Delete each image (once, however often named), one line each."""
    all_ok = True
    for image_id in dict.fromkeys(args.image_ids):
        why = api.delete_image(image_id)
        print(f"OK    {image_id}  deleted" if why is None else f"FAIL  {image_id}  :  {why}")
        all_ok = all_ok and why is None
    return EXIT_OK if all_ok else EXIT_SOME_FAILED


COMMANDS = {"retry": retry, "cancel": cancel, "jobs": jobs, "delete": delete}


def main(argv=None):
    args = parse_args(argv)
    try:
        key = check_key(args.key)
        with requests.Session() as session:
            api = Api(session, args.server, key)
            return (upload if args.command == "upload" else COMMANDS[args.command])(api, args)
    except ClientError as exc:
        print(f"upload: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
