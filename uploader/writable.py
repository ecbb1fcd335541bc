"""Whether the service can write where it must: found by writing, not by permissions."""
import contextlib
import os
import tempfile
from typing import List


def directory_problems(directory: str, what: str) -> List[str]:
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
