"""What the service publishes carries no personal metadata and no pixel bomb, on every host
(the stripping itself, format by format: tests/unit/test_metadata.py).
"""
import hashlib

import pytest
import requests

from testbed.fakes.image_source import declared_png

from tests.pictures import ORIENTATION, SECRET, decoded, exif, photo, picture, saved, strip


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")  # the source's MPF
def test_the_service_stores_stripped_bytes_refuses_a_pixel_bomb_and_takes_webp_locally(
        start_service, image_source):
    service = start_service()  # the local host, strip_metadata and max_pixels as by default
    source_photo, source_webp = photo(), saved(picture(), "WEBP", exif=exif(), xmp=b"<x>SECRET</x>")
    image_source.add("/photo.jpg", source_photo, content_type="image/jpeg")
    image_source.add("/bomb.png", declared_png(60_000, 60_000))
    image_source.add("/photo.webp", source_webp, content_type="image/webp")
    urls = [image_source.url_for(path) for path in ("/photo.jpg", "/bomb.png", "/photo.webp")]
    job = service.wait_job(service.post_job(urls))
    photo_entry, bomb_entry, webp_entry = job["urls"]

    stored = requests.get(photo_entry["link"], timeout=10).content
    assert stored == strip(source_photo) and SECRET not in stored
    assert dict(decoded(stored).getexif()) == {ORIENTATION: 6}  # no GPS; still the right way up
    assert service.query("SELECT sha256 FROM links WHERE link = ?", (photo_entry["link"],)) == [
        (hashlib.sha256(stored).hexdigest(),)]  # the digest names the bytes stored

    assert (bomb_entry["state"], bomb_entry["reason"]) == (
        "failed", "image is 60000 x 60000 pixels, over the limit of 100,000,000 (images.max_pixels)")
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'failure_class="too_many_pixels"' in metrics

    assert webp_entry["state"] == "complete" and webp_entry["link"].endswith(".webp")
    served = requests.get(webp_entry["link"], timeout=10)
    assert served.headers["Content-Type"] == "image/webp"
    assert served.content == strip(source_webp) and SECRET not in served.content
