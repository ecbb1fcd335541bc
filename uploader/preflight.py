"""What would stop the service once started, found before it starts: one line each.

``bin/serve`` runs these checks before it opens anything, and ``--check-config`` runs them
too (with a database connection attempt), so an unwritable store, a damaged SQLite file,
an unreachable database or an S3 bucket we cannot write to is one clear line and exit
code 2, not a traceback later (or every URL failing).
"""
import os
from typing import List

from .config import redact_url_password

SQLITE_HEADER = b"SQLite format 3\x00"


def problems(config, *, connect: bool = False) -> List[str]:
    """Every problem found; ``connect``: also try to reach a PostgreSQL store."""
    found = []
    storage = config.storage
    if storage.url:
        if connect:
            found += _database_problems(storage.url)
    else:
        found += _sqlite_problems(storage.path)
    if config.resolved_image_host == "local":
        found += _directory_problems(config.local.directory, "local.directory (the images)")
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
    if not os.path.exists(path):
        return _directory_problems(os.path.dirname(os.path.abspath(path)) or ".",
                                   f"the directory of storage.path {path}")
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        return [f"storage.path {path} cannot be read: {exc.strerror}"]
    if header and header != SQLITE_HEADER:
        return [f"storage.path {path} is not a SQLite database (damaged, or another kind "
                "of file); move it away to start afresh"]
    if not os.access(path, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(path)),
                                                     os.W_OK):
        return [f"storage.path {path} is not writable (the file and its directory must be)"]
    return []


def _directory_problems(directory: str, what: str) -> List[str]:
    """A directory the service must write in: it exists and is writable, or can be made."""
    probe = os.path.abspath(directory)
    while not os.path.exists(probe):  # the nearest ancestor that exists must let us create
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return [f"{what} {directory}: {probe} is not a directory"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"{what} {directory} is not writable"
                + ("" if probe == os.path.abspath(directory) else f" ({probe} is not)")]
    return []


def _database_problems(url: str) -> List[str]:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        return [f"storage.url {redact_url_password(url)}: cannot connect: {reason}"]
    return []
