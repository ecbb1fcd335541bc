"""Starting up: what cannot work is one line and exit code 2, found before anything starts;
``--dev`` lets a person try the service on their own machine."""
import json
import socket
import subprocess
import sys
import uuid

import pytest
import yaml

from testbed.postgres_server import free_port
from uploader import preflight
from uploader.cli import dev_config
from uploader.config import config_from_dict
from uploader.errors import StoreUnavailable
from uploader.backends import open_store

from tests.support import REPO, ServiceProcess

pytestmark = pytest.mark.system  # starts processes or servers


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "uploader", *args], cwd=REPO,
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


def first_problem(text):
    """--check-config: the problems come first (then notes, the configuration, the verdict)."""
    line = text.splitlines()[0]
    assert line.startswith("problem: "), text
    return line


def test_a_damaged_sqlite_store_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "store.sqlite3").write_bytes(b"this is not a database, it is a note\n" * 10)
    config = config_file(tmp_path)
    for args, line_of in (((), one_line), (("--check-config",), first_problem)):
        done = run_cli("--config", str(config), *args)
        assert done.returncode == 2
        line = line_of(done.stderr)
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
    line = first_problem(done.stderr)
    assert "storage.url" in line and "cannot connect" in line
    assert "s3cret-password" not in done.stdout + done.stderr


def test_a_wrong_database_password_is_an_authentication_failure_naming_the_user(postgres):
    import psycopg

    role = "u_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres.url(), autocommit=True) as conn:  # this role alone asks
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")  # for a password
        hba = conn.execute("SHOW hba_file").fetchone()[0]
        with open(hba, "r+") as f:
            rules = f.read()
            f.seek(0)
            f.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n{rules}")
        conn.execute("SELECT pg_reload_conf()")
    url = f"postgresql://{role}:wrong-password@127.0.0.1:{postgres.port}/postgres"
    config = config_from_dict({"storage": {"url": url}}, environ={})
    (problem,) = preflight.problems(config, connect=True)
    assert problem == (f"storage.url postgresql://{role}:***@127.0.0.1:{postgres.port}/postgres: "
                       f'PostgreSQL authentication failed for user "{role}": the password was '
                       "refused; check the user and password of storage.url (or env DATABASE_URL)")
    with pytest.raises(StoreUnavailable) as caught:  # what bin/serve says when it opens it
        open_store(config.storage, "an-instance")
    assert str(caught.value).startswith(f'PostgreSQL authentication failed for user "{role}"')
    assert "unreachable" not in str(caught.value) and "wrong-password" not in str(caught.value)


def test_paths_are_probed_by_creating_them_and_the_probe_leaves_nothing(tmp_path):
    config = config_from_dict({"storage": {"path": str(tmp_path / "sub" / "store.sqlite3")},
                               "local": {"directory": str(tmp_path / "a" / "b" / "images")}},
                              environ={})
    assert preflight.problems(config) == []
    assert list(tmp_path.iterdir()) == []  # what the probe made, it removed
    # /proc lets root pass every permission check, and takes no new directory or file.
    config = config_from_dict({"storage": {"path": "/proc/uploader-probe/store.sqlite3"},
                               "local": {"directory": "/proc/uploader-probe/images"}}, environ={})
    found = preflight.problems(config)
    assert found == [
        "storage.path /proc/uploader-probe/store.sqlite3: cannot create /proc/uploader-probe: "
        "No such file or directory",
        "local.directory (the images) /proc/uploader-probe/images: cannot create "
        "/proc/uploader-probe: No such file or directory"]


def test_check_config_prints_the_problems_first_and_fails_as_serve_would(tmp_path):
    path = config_file(tmp_path, local={"directory": "/proc/uploader-probe/images"})
    checked = run_cli("--config", str(path), "--check-config")
    served = run_cli("--config", str(path))
    assert (checked.returncode, served.returncode) == (2, 2)
    problem = "local.directory (the images) /proc/uploader-probe/images: cannot create"
    assert first_problem(checked.stderr).startswith(f"problem: {problem}")
    assert one_line(served.stderr).startswith(f"cannot start: {problem}")
    lines = checked.stderr.splitlines()
    assert lines[1].startswith("connections: at most ") and "open-file limit" in lines[1]
    assert lines[-1] == "1 problem(s), listed first: bin/serve would not start"
    assert json.loads(checked.stdout)["local"]["directory"] == "/proc/uploader-probe/images"


def test_too_low_an_open_file_limit_is_a_problem():
    config = config_from_dict({"workers": {"processes": 4}}, environ={})
    assert preflight.problems(config, open_files=4096) == []
    (problem,) = preflight.problems(config, open_files=120)
    assert problem == ("the open-file limit (ulimit -n) of 120 leaves room for 4 connections "
                       "beside the 116 files the service keeps for itself; raise it to at "
                       "least 148")


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
    service = ServiceProcess(path, command=[sys.executable, "-m", "uploader", "--dev",
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
