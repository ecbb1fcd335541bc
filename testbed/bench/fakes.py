"""The fakes, each in a child process of its own (so none shares a GIL with what it serves)."""
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys

from . import REPO, TOKEN
from .measure import cpu_seconds

HUGE_BUDGET = 10**12
S3_BUCKET = "bench"


def serve_fake(kind: str, latency: float) -> None:
    """Child process entry: run one fake, print its URL, serve until stdin closes.

    The fake Imgur keeps no image bytes (the large scenario uploads GBs) and has budgets
    too large to matter. ``s3`` is moto's S3 server with the bucket ``S3_BUCKET`` (it keeps
    what it is sent, in memory; ``latency`` does not apply).
    """
    from testbed.fakes.image_source import ImageSource
    from testbed.fakes.imgur import FakeImgur
    from testbed.fakes.s3 import MotoS3

    logging.basicConfig(level=logging.WARNING)
    if kind == "s3":
        fake = MotoS3()
        fake.start()
        fake.client().create_bucket(Bucket=S3_BUCKET)
    elif kind == "imgur":
        fake = FakeImgur(access_tokens=(TOKEN,), keep_images=False)
        fake.set_budgets(user_limit=HUGE_BUDGET, client_limit=HUGE_BUDGET, post_limit=HUGE_BUDGET)
    else:
        fake = ImageSource()
    if kind != "s3":
        fake.latency = latency
        fake.start()
    print(fake.url, flush=True)
    sys.stdin.read()  # EOF when the bench closes the pipe or dies
    fake.stop()


def sized_urls(source: str, nbytes: int, count: int, tag: str) -> list:
    """Distinct URLs whose bytes differ too (the image source tags bytes with the query)."""
    return [f"{source}/sized/{nbytes}.jpg?{tag}-{i}" for i in range(count)]


class FakeProcess:
    """A fake (``imgur``, ``source`` or ``s3``) in a child process of its own process group."""

    def __init__(self, kind: str, latency: float = 0.0):
        self.kind, self.latency = kind, latency
        self.proc = None
        self.url = None

    def start(self) -> "FakeProcess":
        code = ("import sys; from testbed.bench.fakes import serve_fake; "
                "serve_fake(sys.argv[1], float(sys.argv[2]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, self.kind, str(self.latency)], cwd=REPO, env=child_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"fake {self.kind} did not start")
        self.url = line
        return self

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.proc.pid])

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc)


# --- child-process plumbing, shared with the service under test

def child_env() -> dict:
    """The bench's environment minus the service's settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACCESS_TOKEN", "IMGUR_CLIENT_ID", "IMGUR_CLIENT_SECRET",
                        "IMGUR_REFRESH_TOKEN", "PORT", "UPLOADER_CONFIG")
           and not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # boto3 asks nothing beyond this machine
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def kill_group(proc) -> None:
    """SIGKILL the process group ``proc`` leads and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
