"""Headers of the images the local host serves at /i/<name>, checked in-process."""
import json
import shutil
import tempfile

import tornado.testing
import tornado.web

from uploader.app import LocalImageHandler
from testbed.fakes.image_source import make_image

IMMUTABLE = "public, max-age=31536000, immutable"
NAME = "AbCd123.png"


class LocalImageHeadersTest(tornado.testing.AsyncHTTPTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.image = make_image("png", "headers")
        with open(f"{self.directory}/{NAME}", "wb") as out:
            out.write(self.image)
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.directory)

    def get_app(self):
        return tornado.web.Application([(r"/i/(.+)", LocalImageHandler, {"path": self.directory})])

    def test_an_image_may_be_cached_for_good_and_is_not_sniffed(self):
        response = self.fetch(f"/i/{NAME}")
        assert response.code == 200
        assert response.body == self.image
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Cache-Control"] == IMMUTABLE
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    def test_head_range_and_revalidation_answers_carry_the_same_headers(self):
        head = self.fetch(f"/i/{NAME}", method="HEAD")
        part = self.fetch(f"/i/{NAME}", headers={"Range": "bytes=0-7"})
        etag = head.headers["Etag"]
        unchanged = self.fetch(f"/i/{NAME}", headers={"If-None-Match": etag})
        assert (head.code, part.code, unchanged.code) == (200, 206, 304)
        assert part.body == self.image[:8]
        for response in (head, part, unchanged):
            assert response.headers["Cache-Control"] == IMMUTABLE
            assert response.headers["X-Content-Type-Options"] == "nosniff"

    def test_errors_are_not_cached_but_are_not_sniffed_either(self):
        for path in ("/i/Zzzz999.png", "/i/../setup.cfg", "/i/not-a-name.html"):
            response = self.fetch(path)
            assert response.code == 404, path
            assert "error" in json.loads(response.body)
            assert "immutable" not in response.headers.get("Cache-Control", ""), path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
