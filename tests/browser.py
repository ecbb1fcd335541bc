"""Headless Debian Chromium driven by selenium, for the tests of the web page.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``.ci/run`` installs
them); selenium-manager is never asked to download one. The flags keep Chromium from
calling home (the tests run without a network) and its console and network logs are
kept, so a test can read what the page logged and every request it made.
"""
import json
import shutil
import tempfile
import time
import urllib.parse

from selenium import webdriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,900"]


class Browser:
    """A started Chromium; ``quit()`` ends it and removes its profile."""

    def __init__(self, *, width=1000, height=900):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        self.driver.set_window_size(width, height)

    def quit(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def wait(self, condition, timeout=30.0, what="the page"):
        """Poll ``condition()`` until it returns something true; that is returned."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def text(self, element_id):
        return self.js("const e = document.getElementById(arguments[0]);"
                       "return e && !e.hidden ? e.textContent : null;", element_id)

    def console(self):
        """Console entries since the last call (each a dict with level, source, message)."""
        return self.driver.get_log("browser")

    def requests(self):
        """URLs of every request the page sent since the last call."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls


def origin(url):
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
