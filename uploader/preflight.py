"""What would stop the service once started, found before it starts: one line each.

``bin/serve`` runs these checks before it opens anything, and ``--check-config`` runs them
too (with a database connection attempt), so an unwritable store, a damaged SQLite file,
an unreachable database, a refused database login, an S3 bucket we cannot write to or an
open-file limit too low to serve is one clear line and exit code 2, not a traceback later
(or every URL failing). Paths are probed by creating what the service would create (and
removing it again): a permission check passes places that refuse a write.
"""
import contextlib
import os
import tempfile
from typing import List, Optional

from .config import redact_url_password
from .connections import connection_limit, files_kept, open_file_limit

SQLITE_HEADER = b"SQLite format 3\x00"


MIN_CONNECTIONS = 32  # fewer, and a handful of slow clients would keep everyone waiting


def problems(config, *, connect: bool = False, open_files: Optional[int] = None) -> List[str]:
    """Every problem found; ``connect``: also try to reach a PostgreSQL store;
    ``open_files``: the open-file limit to judge (default: this process's)."""
    found = []
    open_files = open_file_limit() if open_files is None else open_files
    if connection_limit(config, open_files) < MIN_CONNECTIONS:
        kept = files_kept(config)
        found.append(f"the open-file limit (ulimit -n) of {open_files} leaves room for "
                     f"{connection_limit(config, open_files)} connections beside the {kept} "
                     f"files the service keeps for itself; raise it to at least "
                     f"{kept + MIN_CONNECTIONS}")
    storage = config.storage
    if storage.url:
        if connect:
            found += _database_problems(storage.url)
    else:
        found += _sqlite_problems(storage.path)
    if config.resolved_image_host == "local":
        found += _directory_problems(config.local.directory,
                                     f"local.directory (the images) {config.local.directory}")
    if config.resolved_image_host == "s3":
        found += _bucket_problems(config.s3)
    return found


def _bucket_problems(s3) -> List[str]:
    """The bucket exists and takes (and gives up) an object: a probe written and deleted."""
    from .errors import HostError
    from .hosts.s3 import S3Host

    try:
        S3Host.from_config(s3).probe()
    except HostError as exc:  # its reason names the bucket, the step and the cause
        return [str(exc)]
    return []


def _sqlite_problems(path: str) -> List[str]:
    if os.path.isdir(path):
        return [f"storage.path {path} is a directory, not a SQLite file"]
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.exists(path):
        return _directory_problems(directory, f"storage.path {path}")
    try:
        with open(path, "r+b") as f:  # opened for writing, as SQLite will; nothing written
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return [f"storage.path {path} cannot be opened for writing: {exc.strerror}"]
    if header and header != SQLITE_HEADER:
        return [f"storage.path {path} is not a SQLite database (damaged, or another kind "
                "of file); move it away to start afresh"]
    # Its journal (-wal) and shared memory (-shm) files are made beside it.
    return _directory_problems(directory, f"storage.path {path}")


def _directory_problems(directory: str, what: str) -> List[str]:
    """A directory the service must write in (``what`` names it in a problem): made if
    missing, as the service would make it, and a file created in it and removed. The
    probe leaves nothing behind: what it made, it removes. A permission check would not
    do: root passes every one, and places such as /proc refuse what they permit."""
    target = os.path.abspath(directory)
    missing = []
    probe = target
    while not os.path.exists(probe):  # the nearest ancestor that exists
        missing.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return [f"{what}: {probe} is not a directory"]
    made = []
    try:
        for path in reversed(missing):
            os.mkdir(path)
            made.append(path)
        handle, name = tempfile.mkstemp(dir=target, prefix=".uploader-probe-")
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        failed = (f"cannot create {exc.filename}" if exc.filename in missing
                  else f"cannot write in {target}")
        return [f"{what}: {failed}: {exc.strerror}"]
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    return []


def _database_problems(url: str) -> List[str]:
    import psycopg

    from .backends.postgres.store import login_refused

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = login_refused(exc) or "cannot connect: " + " ".join(str(exc).split())
        return [f"storage.url {redact_url_password(url)}: {reason}"]
    return []
