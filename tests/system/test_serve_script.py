"""End to end through bin/serve, as a user or a container runs it."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, ServiceProcess, write_config

pytestmark = pytest.mark.system  # starts processes or servers

VENV_BIN = str(Path(sys.executable).parent)


def serve_env():
    """An environment whose python3 can import the service, like an activated venv or the image."""
    return {"PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}


def test_bin_serve_starts_serves_and_stops_on_sigterm(tmp_path, image_source):
    config = write_config(tmp_path)
    service = ServiceProcess(config, command=[str(REPO / "bin/serve"), "--config", str(config)],
                             env=serve_env()).start()
    try:
        job = service.wait_job(service.post_job([image_source.url_for("/img/e2e.gif")]))
        assert len(job["uploaded"]["complete"]) == 1
        # exec: the pid we started is the service itself, so the signal reaches it
        with open(f"/proc/{service.proc.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1:3] == [b"-m", b"uploader"]
        service.signal(signal.SIGTERM)
        assert service.wait(15) == 0
    finally:
        service.cleanup()


def test_check_config_accepts_the_default_file():
    done = subprocess.run([str(REPO / "bin/serve"), "--check-config", "--config",
                           str(REPO / "config/default.yaml")], env={**os.environ, **serve_env()},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stderr
    assert '"processes": 4' in done.stdout


def test_bad_config_stops_start_up_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  processes: four\n")
    done = subprocess.run([str(REPO / "bin/serve"), "--config", str(bad)],
                          env={**os.environ, **serve_env()}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "workers.processes" in done.stderr
    assert "Starting Server" not in done.stdout


def test_secrets_never_reach_check_config_output():
    done = subprocess.run([str(REPO / "bin/serve"), "--check-config"],
                          env={**os.environ, **serve_env(), "ACCESS_TOKEN": "s3cret-token-value"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert "s3cret-token-value" not in done.stdout + done.stderr
