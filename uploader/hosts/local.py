"""The embedded image host: files under a directory, served by the service at ``/i/<name>``.

It is the default when no Imgur credentials are configured, so the service is useful
(and testable end to end) out of the box. Names look like Imgur's: 7 random
alphanumerics plus the extension of the sniffed type.
"""
import errno
import os
import re
import secrets
import string
import tempfile

from ..errors import HostFull
from . import Uploaded

_ALPHABET = string.ascii_letters + string.digits
NAME_PATTERN = re.compile(r"^[A-Za-z0-9]{7}\.[a-z]{3,4}$")


def new_name(ext: str) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(7)) + "." + ext


class LocalHost:
    """Stores uploads as files; ``base_url`` is where the service is reachable."""

    name = "local"
    label = "the local host"

    def __init__(self, *, directory: str, base_url: str):
        self.directory = directory
        self.base_url = base_url.rstrip("/")
        os.makedirs(directory, exist_ok=True)

    def upload(self, data: bytes, *, filename: str, mime: str) -> Uploaded:
        """Store the bytes under a new name; ``HostFull`` when the disk (or a quota) has
        no room for them, which passes once space is freed."""
        try:
            return self._store(data, filename)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise HostFull(f"the local image directory is full ({exc.strerror})") from None
            raise

    def _store(self, data: bytes, filename: str) -> Uploaded:
        ext = os.path.splitext(filename)[1].lstrip(".") or "bin"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            while True:
                name = new_name(ext)
                target = os.path.join(self.directory, name)
                try:
                    os.link(tmp, target)  # atomic, and never overwrites another upload
                    break
                except FileExistsError:
                    continue
        finally:
            os.unlink(tmp)
        return Uploaded(link=f"{self.base_url}/i/{name}", deletehash=name)

    def delete(self, deletehash: str) -> bool:
        """Remove a stored image (its link then answers 404); False when it was not there."""
        if not NAME_PATTERN.match(deletehash):
            return False
        try:
            os.unlink(os.path.join(self.directory, deletehash))
            return True
        except FileNotFoundError:
            return False
