"""The command line of the client: parse it, run the command, map the outcome to an exit code."""
import argparse
import os
import sys

import requests

from .api import Api, ClientError, check_key
from .follow import report, wait

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_SERVER = "http://localhost:8000"


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
