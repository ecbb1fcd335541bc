"""Starting up: what cannot work is one line and exit code 2, found before anything starts;
``--dev`` lets a person try the service on their own machine."""
import os
import socket
import subprocess
import sys

import pytest
import yaml

from uploader import preflight
from uploader.cli import dev_config
from uploader.config import config_from_dict

from .postgres_server import free_port
from .support import REPO, ServiceProcess

pytestmark = pytest.mark.system  # starts processes or servers


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "uploader.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def config_file(tmp_path, **sections):
    path = tmp_path / "config.yaml"
    base = {"server": {"host": "127.0.0.1", "port": 0},
            "storage": {"path": str(tmp_path / "store.sqlite3")},
            "local": {"directory": str(tmp_path / "images")},
            "workers": {"processes": 1, "uploads_per_process": 1}}
    path.write_text(yaml.safe_dump({**base, **sections}))
    return path


def one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_damaged_sqlite_store_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "store.sqlite3").write_bytes(b"this is not a database, it is a note\n" * 10)
    config = config_file(tmp_path)
    for args in ((), ("--check-config",)):
        done = run_cli("--config", str(config), *args)
        assert done.returncode == 2
        line = one_line(done.stderr)
        assert str(tmp_path / "store.sqlite3") in line and "not a SQLite database" in line
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--config", str(config_file(tmp_path, server={"host": "127.0.0.1",
                                                                      "port": port})))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_check_config_reaches_for_the_database(tmp_path):
    url = f"postgresql://uploader:s3cret-password@127.0.0.1:{free_port()}/nothing"
    done = run_cli("--config", str(config_file(tmp_path, storage={"url": url})), "--check-config")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "storage.url" in line and "cannot connect" in line
    assert "s3cret-password" not in done.stdout + done.stderr


def test_preflight_names_what_is_not_writable(tmp_path, monkeypatch):
    config = config_from_dict({"storage": {"path": str(tmp_path / "sub" / "store.sqlite3")},
                               "local": {"directory": str(tmp_path / "images")}}, environ={})
    assert preflight.problems(config) == []
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if str(path).startswith(str(tmp_path)) else real_access(path, mode)))
    found = preflight.problems(config)
    assert len(found) == 2
    assert found[0].startswith(f"the directory of storage.path {tmp_path / 'sub' / 'store.sqlite3'}")
    assert "not writable" in found[0]
    assert found[1].startswith("local.directory (the images)") and "not writable" in found[1]


def test_a_store_path_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "store.sqlite3").mkdir()
    config = config_from_dict({"storage": {"path": str(tmp_path / "store.sqlite3")}}, environ={})
    assert preflight.problems(config) == [
        f"storage.path {tmp_path / 'store.sqlite3'} is a directory, not a SQLite file"]


def test_dev_mode_listens_on_loopback_and_fetches_from_it(tmp_path, image_source):
    config = config_from_dict({"server": {"host": "0.0.0.0"}}, environ={})
    assert not config.fetch.allow_private_networks
    dev = dev_config(config)
    assert dev.server.host == "127.0.0.1" and dev.fetch.allow_private_networks
    path = config_file(tmp_path, server={"host": "0.0.0.0", "port": 0})
    service = ServiceProcess(path, command=[sys.executable, "-m", "uploader.cli", "--dev",
                                            "--config", str(path)]).start()
    try:
        assert service.url.startswith("http://127.0.0.1:")
        job = service.wait_job(service.post_job([image_source.url_for("/img/dev.png")]))
        assert job["uploaded"]["failed"] == []
        assert "DEVELOPMENT MODE" in service.read_log()
    finally:
        service.stop()


@pytest.mark.parametrize("entry", ["allowed_hosts"])
def test_a_deprecated_key_is_said_once_in_the_log(tmp_path, entry):
    path = config_file(tmp_path, fetch={entry: ["images.example"]})
    done = run_cli("--config", str(path), "--check-config")
    assert done.returncode == 0
    assert done.stderr.count("fetch.allowed_hosts is deprecated") == 1
