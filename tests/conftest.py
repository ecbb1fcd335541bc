"""Shared fixtures: the local image source, the fake Imgur, S3 (moto), PostgreSQL (and
PgBouncer in front of it), and the real service.

Every test that runs the service does so on both storage backends: ``backend`` is a
fixture parameter (``sqlite``, ``postgresql``), and ``storage`` is the matching
``storage`` section: a SQLite file in the test's directory, or a fresh database on the
session's throwaway PostgreSQL server (short leases, so drills do not wait long).
"""
import os
from pathlib import Path

import pytest

from testbed.fakes.image_source import ImageSource
from testbed.fakes.imgur import FakeImgur
from testbed.fakes.s3 import MotoS3, S3FaultProxy
from testbed.pgbouncer_server import PgBouncer
from testbed.postgres_server import PostgresServer

# boto3 (in the tests and in every service they start) never looks for credentials beyond
# this machine: no instance metadata service, whatever a test leaves unconfigured.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from tests.support import ServiceProcess, write_config

BACKENDS = ("sqlite", "postgresql")
UNIT = Path(__file__).parent / "unit"
# A test that needs one of these starts processes or servers: it is a "system" test.
SYSTEM_FIXTURES = {"postgres", "pgbouncer", "storage", "make_config", "start_service",
                   "module_service", "cluster", "browser"}


def pytest_collection_modifyitems(items):
    """Mark system tests (``bin/test -m "not system"`` runs the others, in seconds), and
    keep tests/unit free of them: a unit test that starts processes or servers is an error.
    (A file in tests/system may hold cases that start nothing, such as the store's contract
    on memory and SQLite: they stay unmarked and run with the fast tests too.)"""
    misplaced = []
    for item in items:
        if SYSTEM_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.system)
            if UNIT in item.path.parents:
                misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError("tests/unit holds tests that start processes or servers "
                                "(move them to tests/system): " + ", ".join(misplaced))


@pytest.fixture
def image_source():
    with ImageSource() as source:
        yield source


@pytest.fixture
def fake_imgur():
    """A fake Imgur with budgets too large to matter (rate-limit tests set their own)."""
    with FakeImgur() as imgur:
        imgur.set_budgets(user_limit=10**6, user_remaining=10**6, client_limit=10**7,
                          client_remaining=10**7, post_limit=10**5, post_remaining=10**5)
        yield imgur


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server on loopback for the session; each test makes buckets of its own."""
    with MotoS3() as server:
        yield server


@pytest.fixture
def s3_proxy(moto_s3):
    """A proxy in front of moto that fails requests when told (``fail_next``)."""
    with S3FaultProxy(moto_s3.url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session; if it cannot start, tests fail."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer(postgres):
    """PgBouncer in transaction pooling mode in front of the session's PostgreSQL (its
    ``behind(url)`` is a database's URL through it); if it cannot start, tests fail."""
    with PgBouncer(postgres) as bouncer:
        yield bouncer


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def storage_section(backend, directory, request) -> dict:
    """A ``storage`` section for ``backend``: a SQLite file in ``directory``, or a fresh
    database on the session's PostgreSQL server."""
    section = {"path": str(directory / "store.sqlite3")}
    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        section.update(url=server.create_database(), lease_seconds=3, poll_seconds=0.5)
    return section


@pytest.fixture
def storage(backend, request, tmp_path):
    """The ``storage`` section of this test's backend."""
    return storage_section(backend, tmp_path, request)


# A store's contract runs on every backend, the in-memory one too (it is kept faithful so);
# the databases' runs are system tests.
STORES = (pytest.param("sqlite", marks=pytest.mark.system),
          pytest.param("postgresql", marks=pytest.mark.system), "memory")


class Stores:
    """Instances' stores on one fresh store of a kind: ``open(instance)``; ``storage``: its
    ``storage`` section ({} in memory)."""

    def __init__(self, kind, directory, request):
        from uploader.backends import memory

        self.kind, self.opened, self.rows = kind, [], memory.Rows()
        self.storage = {} if kind == "memory" else storage_section(kind, directory, request)

    def open(self, instance: str):
        from uploader.backends import memory, open_store
        from uploader.config import StorageConfig

        store = (memory.MemoryStore(instance, self.rows) if self.kind == "memory"
                 else open_store(StorageConfig(**self.storage), instance))
        self.opened.append(store)
        return store


@pytest.fixture(params=STORES)
def stores(request, tmp_path):
    """``stores.open(instance)``: stores of this test's kind (SQLite, PostgreSQL, memory),
    all closed after the test."""
    made = Stores(request.param, tmp_path, request)
    yield made
    for store in made.opened:
        store.close()


@pytest.fixture(scope="module", params=BACKENDS)
def module_service(request, tmp_path_factory):
    """``module_service(**sections)``: one service per module and backend, for tests that
    only ask it questions (each must leave it as it found it, or not care)."""
    started = {}

    def start(**sections):
        if "service" not in started:
            directory = tmp_path_factory.mktemp(f"module-{request.param}")
            sections["storage"] = storage_section(request.param, directory, request)
            started["service"] = ServiceProcess(write_config(directory, **sections)).start()
        return started["service"]

    yield start
    if "service" in started:
        started["service"].kill()


@pytest.fixture
def make_config(tmp_path, storage):
    """``make_config(**sections)``: a config file for this test's backend."""
    def make(**sections):
        sections["storage"] = {**storage, **sections.get("storage", {})}
        return write_config(tmp_path, **sections)
    return make


@pytest.fixture
def start_service(make_config):
    """``start_service(**config_sections)`` runs the service; every one started is stopped after."""
    started = []

    def start(config_path=None, **sections):
        service = ServiceProcess(config_path or make_config(**sections)).start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.kill()
