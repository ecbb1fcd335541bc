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
