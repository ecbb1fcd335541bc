"""The real ``make_app`` served in-process over a stand-in service: for tests of what the
front end answers and logs, with no store, worker or process behind it."""
import shutil
import tempfile
import types

import tornado.testing

from uploader.app import make_app
from uploader.config import Config, LocalConfig
from uploader.metrics import Metrics


class AppTestCase(tornado.testing.AsyncHTTPTestCase):
    """``self.service``: what ``stand_in()`` makes (override it for more); ``self.directory``:
    a temporary directory for the local host's images, removed afterwards."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.service = self.stand_in()
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.directory)

    def stand_in(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(config=Config(local=LocalConfig(directory=self.directory)),
                                     stopping=False, metrics=Metrics())

    def get_app(self):
        return make_app(self.service)
