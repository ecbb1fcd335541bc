"""What would stop the service once started, found before it starts: one line each.

``bin/serve`` runs these checks before it opens anything, and ``--check-config`` runs them
too (with a database connection attempt), so an unwritable store, a damaged SQLite file,
an unreachable database, a refused database login, an S3 bucket we cannot write to or an
open-file limit too low to serve is one clear line and exit code 2, not a traceback later
(or every URL failing). Paths are probed by creating what the service would create (and
removing it again): a permission check passes places that refuse a write.
"""
from typing import List, Optional

from .backends import storage_problems
from .connections import connection_limit, files_kept, open_file_limit
from .writable import directory_problems


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
    found += storage_problems(config.storage, connect=connect)
    if config.resolved_image_host == "local":
        found += directory_problems(config.local.directory,
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
