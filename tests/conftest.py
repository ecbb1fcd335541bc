"""Shared fixtures: the local image source, the fake Imgur, and the real service in a subprocess."""
import pytest

from tests.fakes.image_source import ImageSource
from tests.fakes.imgur import FakeImgur

from .support import ServiceProcess, write_config


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


@pytest.fixture
def start_service(tmp_path):
    """``start_service(**config_sections)`` runs the service; every one started is stopped after."""
    started = []

    def start(config_path=None, **sections):
        path = config_path or write_config(tmp_path, **sections)
        service = ServiceProcess(path).start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.kill()
