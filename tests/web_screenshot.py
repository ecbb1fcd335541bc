"""Takes docs/screenshot.png: the web page showing a finished mixed job.

    .venv/bin/python -m tests.web_screenshot [docs/screenshot.png]

Runs the real service (local image host) and the local image source, submits a few
pictures, a missing one and a web page through the page itself, waits for the job to
finish and its thumbnails to load, and saves the whole page. Nothing leaves this machine.
"""
import struct
import sys
import tempfile
import zlib
from pathlib import Path

from tests.browser import Browser
from testbed.fakes.image_source import ImageSource
from tests.support import REPO, ServiceProcess, write_config


def picture(width, height, top, bottom):
    """A PNG of a sky-to-ground gradient with a sun, so thumbnails show something."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    rows = []
    for y in range(height):
        row = bytearray(b"\0")
        for x in range(width):
            mix = y / (height - 1)
            pixel = [round(a + (b - a) * mix) for a, b in zip(top, bottom)]
            if (x - width * 0.7) ** 2 + (y - height * 0.3) ** 2 < (height * 0.15) ** 2:
                pixel = [255, 214, 90]
            row += bytes(pixel)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0] if argv else REPO / "docs" / "screenshot.png")
    with tempfile.TemporaryDirectory() as tmp, ImageSource() as source:
        scenes = {"/photos/dawn.png": ((250, 140, 90), (60, 40, 90)),
                  "/photos/noon.png": ((90, 170, 240), (40, 120, 60)),
                  "/photos/dusk.png": ((40, 50, 120), (200, 90, 60))}
        for path, (top, bottom) in scenes.items():
            source.add(path, picture(160, 120, top, bottom))
        urls = [source.url_for(path) for path in scenes]
        urls += [source.url_for("/status/404"), source.url_for("/html")]
        service = ServiceProcess(write_config(Path(tmp))).start()
        browser = Browser(width=900, height=900)
        try:
            browser.driver.get(service.url.replace("127.0.0.1", "localhost") + "/")
            browser.driver.find_element("id", "urls").send_keys("\n".join(urls))
            browser.driver.find_element("id", "upload-button").click()
            browser.wait(lambda: browser.js(
                "return document.getElementById('job-status').dataset.status") == "complete",
                what="the job to finish")
            browser.wait(lambda: browser.js(
                "const imgs = [...document.querySelectorAll('#job-urls img')];"
                "return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0);"),
                what="the thumbnails")
            browser.js("document.activeElement.blur()")
            height = browser.js("return document.documentElement.scrollHeight")
            browser.driver.set_window_size(900, height + 200)
            browser.js("window.scrollTo(0, 0)")
            target.parent.mkdir(parents=True, exist_ok=True)
            browser.driver.find_element("tag name", "body").screenshot(str(target))
        finally:
            browser.quit()
            service.stop()
    print(f"saved {target}")


if __name__ == "__main__":
    main()
