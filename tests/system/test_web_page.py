"""The web page at ``/``, as a person uses it: in a real browser (Debian's Chromium, selenium).

One browser serves the whole module. The page is tested twice over:

- against the real service (local image host, the local image source): a mixed job
  submitted through the form, watched live, its thumbnails, reasons and own address;
  nothing fetched from another origin, nothing in the console, hostile text shown as text;
- against ``testbed.fakes.job_api``, a fake of the job-control API as issue 12 specifies it
  (list, retry, cancel, image delete, webhook status, API keys, 503), whose endpoints land
  on main in parallel: every action, and every error the API can answer.

The browser is required: without /usr/bin/chromium these tests fail (``.ci/run`` installs it).
"""
import re
import urllib.parse

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser import Browser, origin
from testbed.fakes.job_api import CANCELLED, MISSING, FakeJobApi
from uploader.config import config_from_dict
from uploader.page import content_security_policy

pytestmark = pytest.mark.system  # starts processes or servers

HOSTILE = 'https://x/"><script>window.hacked=1</script><img/src=x/onerror=window.hacked=2>'
PAGE_BUDGET = 50_000


@pytest.fixture(scope="module")
def browser():
    started = Browser()
    yield started
    started.quit()


@pytest.fixture(scope="module")
def fake_api():
    with FakeJobApi() as api:
        yield api


@pytest.fixture
def fake(fake_api, browser):
    """The fake API, reset, with the browser's logs and this tab's storage cleared after."""
    fake_api.key, fake_api.listing, fake_api.unreachable, fake_api.callback = None, True, False, None
    fake_api.requests.clear()
    fake_api.jobs.clear()
    fake_api.images.clear()
    yield fake_api
    fake_api.key, fake_api.unreachable = None, False
    browser.driver.get(fake_api.url + "/")
    browser.js("sessionStorage.clear()")
    browser.console(), browser.requests()


def page_url(service):
    """The page at the origin the local host's links use (``http://localhost:<port>``)."""
    return service.url.replace("//127.0.0.1:", "//localhost:") + "/"


def open_page(browser, url):
    browser.console(), browser.requests()  # drop what came before
    browser.driver.get(url)
    browser.wait(lambda: browser.js("return document.readyState") == "complete")


def submit(browser, urls):
    box = browser.driver.find_element(By.ID, "urls")
    box.clear()
    box.send_keys("\n".join(urls))
    browser.driver.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()


def job_status(browser):
    return browser.js("const s = document.getElementById('job-status');"
                      "return document.getElementById('job').hidden ? null : s.dataset.status;")


def wait_complete(browser, timeout=60.0):
    browser.wait(lambda: job_status(browser) == "complete", timeout, "the job to be complete")


def wait_shown(browser, other_than):
    """Wait until the page shows a job other than ``other_than`` (the address changes
    first, the job on the page a moment later: until then the old job's status shows)."""
    browser.wait(lambda: shown_job_id(browser) not in (None, other_than)
                 and browser.text("job-id") == shown_job_id(browser), what="the new job shown")


def shown_job_id(browser):
    match = re.fullmatch(r"#/jobs/(.+)", browser.js("return location.hash"))
    return match and urllib.parse.unquote(match.group(1))


def rows(browser):
    """What the page shows of each URL: state, source text, reason, thumbnail, links, buttons."""
    return browser.js("""
        return [...document.querySelectorAll('#job-urls > li')].map((li) => {
          const img = li.querySelector('.thumb img');
          const text = (sel) => { const e = li.querySelector(sel); return e ? e.textContent : null; };
          return {state: li.dataset.state, url: text('.source'), reason: text('.reason .why'),
                  img: img && img.getAttribute('src'), loaded: Boolean(img && img.complete && img.naturalWidth > 0),
                  thumbLink: img && img.closest('a').getAttribute('href'), text: li.textContent,
                  buttons: [...li.querySelectorAll('button')].filter((b) => !b.hidden).map((b) => b.textContent)};
        });""")


def click(browser, element_id):
    browser.driver.find_element(By.ID, element_id).click()


def click_text(browser, text, scope="document"):
    """Click the visible button whose label is ``text``."""
    button = browser.wait(lambda: browser.js(
        f"return [...{scope}.querySelectorAll('button')].find((b) => !b.hidden && b.offsetParent"
        " && b.textContent === arguments[0]) || null;", text), what=f"a button {text!r}")
    button.click()


def errors_in(console):
    return [entry for entry in console if entry["level"] in ("SEVERE", "WARNING")]


# -- served files ----------------------------------------------------------------------------

def test_page_and_files_carry_the_policy_and_nosniff_and_stay_small(start_service):
    service = start_service()
    port = urllib.parse.urlsplit(service.url).port
    policy = (f"default-src 'self'; img-src 'self' http://localhost:{port}; object-src 'none'; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    page = requests.get(service.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=UTF-8"
    assets = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    assert sorted(set(assets)) == ["/web/app.css", "/web/app.js", "/web/icon.svg"]
    kinds = {"/web/app.css": "text/css", "/web/app.js": "text/javascript", "/web/icon.svg": "image/svg+xml"}
    total = len(page.content)
    for answer in [page] + [requests.get(service.url + path, timeout=10) for path in sorted(set(assets))]:
        assert answer.status_code == 200, answer.url
        assert answer.headers["Content-Security-Policy"] == policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        if answer is not page:
            assert answer.headers["Content-Type"].startswith(kinds[urllib.parse.urlsplit(answer.url).path])
            total += len(answer.content)
    assert total < PAGE_BUDGET, f"the page weighs {total} bytes"

    missing = requests.get(service.url + "/web/index.html", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "no such resource: /web/index.html"}
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    refused = requests.post(service.url + "/", data=b"x", timeout=10)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    assert refused.json() == {"error": "method POST is not allowed on /"}


@pytest.mark.parametrize("settings, images", [
    ({"image_host": "local", "server": {"port": 8123}}, "'self' http://localhost:8123"),
    ({"image_host": "local", "server": {"public_url": "https://Img.Example.org:8443/base/"}},
     "'self' https://img.example.org:8443"),
    ({"imgur": {"access_token": "t"}}, "'self' https://i.imgur.com"),
    ({"imgur": {"client_id": "c", "api_url": "http://127.0.0.1:8080/"}},
     "'self' https://i.imgur.com http://127.0.0.1:8080"),
])
def test_policy_lets_thumbnails_come_from_the_image_hosts_link_origin(settings, images):
    policy = content_security_policy(config_from_dict(settings, environ={}))
    assert f"; img-src {images};" in policy
    assert policy.startswith("default-src 'self';") and "unsafe" not in policy


# -- against the real service ----------------------------------------------------------------

def test_a_mixed_job_live_with_thumbnails_reasons_and_its_own_address(start_service, image_source,
                                                                        browser):
    service = start_service()
    url = page_url(service)
    good = [image_source.url_for(f"/img/page-{n}.{ext}") for n, ext in enumerate(["png", "jpg", "gif"])]
    large = image_source.url_for("/sized/1048576.jpg?pace=0.25")  # 1 MiB in 16 parts, ~4 s
    failing = [image_source.url_for("/status/404"), image_source.url_for("/html"), HOSTILE]
    open_page(browser, url)
    assert browser.js("return document.querySelector('#upload-form textarea[name=urls]').labels.length") == 1
    submit(browser, good + [large] + failing)

    # Live, without a reload: the job runs, the large image shows its bytes, then all is done.
    browser.wait(lambda: job_status(browser) == "in-progress", what="the job in progress")
    browser.wait(lambda: any(row["url"] == large and re.search(r"\d+(\.\d)? KB of 1\.0 MB", row["text"])
                             for row in rows(browser)), what="the large image's bytes")
    wait_complete(browser)
    job_id = shown_job_id(browser)
    job = service.job(job_id)
    assert job["status"] == "complete"
    assert browser.text("job-id") == job_id
    assert browser.text("job-counts") == "7 of 7 images done: 4 uploaded, 3 failed"
    assert browser.js("const p = document.getElementById('job-progress'); return [p.value, p.max]") == [7, 7]

    def check_rows():
        shown = browser.wait(lambda: (r := rows(browser)) and all(
            row["loaded"] for row in r if row["state"] == "complete") and r, what="thumbnails")
        assert [row["url"] for row in shown] == [entry["url"] for entry in job["urls"]]
        for row, entry in zip(shown, job["urls"]):
            assert row["state"] == entry["state"]
            if entry["state"] == "complete":
                assert row["img"] == row["thumbLink"] == entry["link"]
                assert origin(entry["link"]) == origin(url)  # the local host, as the page
            else:
                assert row["img"] is None and row["reason"] == entry["reason"]  # word for word
        reasons = {row["url"]: row["reason"] for row in shown if row["reason"]}
        assert list(reasons) == failing
        assert reasons[failing[0]] == "HTTP 404 from source"
        assert reasons[failing[1]] == "not an image: looks like HTML"

    check_rows()
    # The hostile URL is text: no element, no script ran.
    assert browser.js("return [document.scripts.length, window.hacked === undefined,"
                      " document.querySelectorAll('#job-urls script, #job-urls [onerror]').length]") == [
        1, True, 0]

    # The job's own address shows it again after a reload.
    assert browser.driver.current_url == f"{url}#/jobs/{job_id}"
    browser.driver.refresh()
    wait_complete(browser)
    check_rows()
    assert browser.text("job-id") == job_id

    # The job controls against the real API: delete an image, then retry the failed URLs.
    click_text(browser, "Delete image")  # the first uploaded image's
    click_text(browser, "Yes, delete it")
    browser.wait(lambda: rows(browser)[0]["state"] == "deleted", what="the image deleted")
    assert service.job(job_id)["urls"][0]["deleted"] is True
    click(browser, "job-retry")
    click_text(browser, "Yes, retry")
    wait_shown(browser, other_than=job_id)
    wait_complete(browser)
    assert browser.text("job-retry-of") == f"Retry of the failed images of job {job_id}"
    assert [row["url"] for row in rows(browser)] == failing
    assert service.job(shown_job_id(browser))["retry_of"] == job_id

    requested = browser.requests()
    assert requested and {origin(r) for r in requested} == {origin(url)}, requested
    assert errors_in(browser.console()) == []


# -- against the job-control contract (the fake) ---------------------------------------------

def recent_rows(browser):
    """What the page shows of each recent job: its id, time, retry mark and counts."""
    return browser.js("""
        return [...document.querySelectorAll('#recent-list li')].map((li) => {
          const mark = li.querySelector('.retry-mark');
          return {job: li.querySelector('a').dataset.job, time: li.querySelector('time').textContent,
                  retry: mark && mark.textContent, retryOf: mark && mark.title,
                  counts: li.querySelector('.counts').textContent};
        });""")


def test_job_controls_delete_retry_cancel_and_recent_jobs(fake, browser):
    # The reader's zone is not the API's (UTC): times are shown in it, and say which it is.
    browser.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    try:
        job_controls_and_recent_jobs(fake, browser)
    finally:
        browser.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


def job_controls_and_recent_jobs(fake, browser):
    fake.seed(21)
    fake.callback = {"url": "https://hooks.example/done", "state": "failed", "attempts": 3,
                     "last_error": "HTTP 500 from the webhook"}
    open_page(browser, fake.url + "/")
    browser.wait(lambda: browser.text("recent-list"), what="recent jobs")
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#recent-list li")) == 20  # the page asks 20 at a time
    click(browser, "recent-more")
    browser.wait(lambda: len(browser.driver.find_elements(By.CSS_SELECTOR, "#recent-list li")) == 21)
    assert browser.text("recent-more") is None
    oldest = recent_rows(browser)[-1]  # made at 2026-11-27T03:10:42.000Z
    assert re.search(r"\b27\D+2026\D+12:10:42\s*PM GMT\+9$", oldest["time"]), oldest
    assert oldest["counts"] == "1 image: 1 uploaded, 0 failed" and oldest["retry"] is None

    good, bad = "https://images.example/cat.png", "https://images.example/fail.png"
    submit(browser, [good, bad])
    wait_complete(browser)
    first = shown_job_id(browser)
    assert browser.text("job-callback") == (
        "https://hooks.example/done: failed, 3 attempts; last error: HTTP 500 from the webhook")
    assert browser.text("job-cancel") is None
    shown = browser.wait(lambda: (r := rows(browser)) and r[0]["loaded"] and r)
    assert shown[1]["reason"] == MISSING and shown[0]["buttons"] == ["Delete image"]
    assert browser.js("return document.querySelector('#recent-list a').dataset.job") == first

    # Delete an image: asked first, then gone (no thumbnail), the entry says so.
    click_text(browser, "Delete image")
    click_text(browser, "Yes, delete it")
    browser.wait(lambda: rows(browser)[0]["state"] == "deleted", what="the image deleted")
    assert rows(browser)[0]["img"] is None and "Deleted" in rows(browser)[0]["text"]
    assert ("DELETE", f"/v1/images/{fake.jobs[first]['urls'][0]['image_id']}", None) in fake.requests
    assert browser.text("job-counts") == "2 of 2 images done: 0 uploaded, 1 deleted, 1 failed"
    assert browser.text("job-created").endswith("GMT+9")

    # Retry the failed URL: asked first; then a new job, shown at its own address, that says
    # what it retries, and is marked as a retry among the recent jobs.
    click(browser, "job-retry")
    assert browser.text("job-retry") is None  # the question stands in its place
    click_text(browser, "No")
    assert browser.js("return document.activeElement.id") == "job-retry"
    assert not [uri for method, uri, _ in fake.requests if uri.endswith("/retry")]
    click(browser, "job-retry")
    assert "Upload the 1 failed image again, as a new job?" in browser.text("job")
    click_text(browser, "Yes, retry")
    wait_shown(browser, other_than=first)
    wait_complete(browser)
    assert browser.text("job-retry-of") == f"Retry of the failed images of job {first}"
    assert [row["url"] for row in rows(browser)] == [bad]
    retried = shown_job_id(browser)
    newest = browser.wait(lambda: (r := recent_rows(browser))[0]["job"] == retried and r,
                          what="the retry among the recent jobs")
    assert newest[0]["retry"] == "retry" and newest[0]["retryOf"] == f"Retry of job {first}"
    assert newest[0]["counts"] == "1 image: 0 uploaded, 1 failed"
    assert newest[1]["job"] == first and newest[1]["retry"] is None
    assert newest[1]["counts"] == "2 images: 1 uploaded, 1 failed"
    browser.driver.find_element(By.ID, "job-retry-of-link").click()
    browser.wait(lambda: shown_job_id(browser) == first, what="the first job again")

    # Cancel a job still running: offered while it runs, asked first, then complete.
    submit(browser, ["https://images.example/slow-1.png", "https://images.example/slow-2.png"])
    browser.wait(lambda: browser.text("job-cancel"), what="the cancel button")
    running = shown_job_id(browser)
    click(browser, "job-cancel")
    click_text(browser, "No")
    assert browser.js("return document.activeElement.id") == "job-cancel"
    assert fake.jobs[running]["status"] == "in-progress"
    click(browser, "job-cancel")
    click_text(browser, "Yes, cancel it")
    wait_complete(browser)
    assert [row["reason"] for row in rows(browser)] == [CANCELLED, CANCELLED]
    assert browser.text("job-cancel") is None
    browser.wait(lambda: browser.js("return document.querySelector('#recent-list a').dataset.job")
                 == running, what="the recent jobs refreshed")

    # On a phone: nothing wider than the screen.
    browser.driver.set_window_size(375, 800)
    try:
        assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.driver.set_window_size(1000, 900)


def test_every_action_shows_the_apis_error(fake, browser):
    open_page(browser, fake.url + "/")
    fake.refuse("POST", 400, "urls[0]: 'not a url' is not an absolute http or https URL")
    submit(browser, ["not a url"])
    browser.wait(lambda: browser.text("upload-error")
                 == "urls[0]: 'not a url' is not an absolute http or https URL", what="the 400")
    assert browser.text("job") is None

    submit(browser, ["https://images.example/a.png", "https://images.example/fail-b.png"])
    wait_complete(browser)
    job_id = shown_job_id(browser)
    path = f"/v1/images/upload/{job_id}/retry"
    fake.refuse("POST", 404, f"no such resource: {path}")
    click(browser, "job-retry")
    click_text(browser, "Yes, retry")
    browser.wait(lambda: browser.text("job-error") == f"no such resource: {path}", what="retry's 404")
    assert shown_job_id(browser) == job_id

    fake.refuse("DELETE", 405, "method DELETE is not allowed on /v1/images/abc")
    click_text(browser, "Delete image")
    click_text(browser, "Yes, delete it")
    browser.wait(lambda: "method DELETE is not allowed on /v1/images/abc" in rows(browser)[0]["text"],
                 what="delete's 405")
    assert rows(browser)[0]["loaded"]

    submit(browser, ["https://images.example/slow.png"])
    browser.wait(lambda: browser.text("job-cancel"), what="the cancel button")
    fake.refuse("DELETE", 405, "method DELETE is not allowed on /v1/images/upload/x")
    click(browser, "job-cancel")
    click_text(browser, "Yes, cancel it")
    browser.wait(lambda: browser.text("job-error") == "method DELETE is not allowed on /v1/images/upload/x",
                 what="cancel's 405")

    # Another job's address, without a reload: nothing of the job shown before stays, not
    # even its status (which a test, or a script, reads as this job's).
    assert job_status(browser) is not None
    browser.js("location.hash = '#/jobs/5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11'")
    browser.wait(lambda: browser.text("job-error")
                 == "no job with id '5f6c1c4a-3a0e-4f6e-8f1c-2b0b2b7f9d11'", what="the unknown job")
    assert job_status(browser) is None


def test_an_api_key_is_asked_for_kept_in_this_tab_only_and_sent(fake, browser):
    fake.key = "s3cret-key"
    open_page(browser, fake.url + "/")
    browser.wait(lambda: browser.text("key"), what="the key form")
    assert browser.js("return document.activeElement.id") == "key-input"
    assert "a valid API key is required" in browser.text("key-message")
    browser.driver.find_element(By.ID, "key-input").send_keys("wrong" + Keys.ENTER)
    browser.wait(lambda: "refused this key" in (browser.text("key-message") or ""), what="a refusal")
    browser.driver.find_element(By.ID, "key-input").send_keys("s3cret-key" + Keys.ENTER)
    browser.wait(lambda: browser.text("recent") is not None, what="recent jobs with the key")
    assert browser.text("key") is None

    submit(browser, ["https://images.example/keyed.png"])
    wait_complete(browser)
    assert ("POST", "/v1/images/upload", "Bearer s3cret-key") in fake.requests
    assert all(auth == "Bearer s3cret-key" for method, uri, auth in fake.requests[-3:])
    assert browser.js("return [sessionStorage.getItem('image-service.api-key'), localStorage.length,"
                      " document.cookie]") == ["s3cret-key", 0, ""]

    # A reload keeps it (same tab); "Forget API key" drops it.
    browser.driver.refresh()
    wait_complete(browser)
    click(browser, "key-forget")
    assert browser.js("return sessionStorage.length") == 0
    assert browser.text("key-forget") is None


def test_a_busy_or_unreachable_service_is_said_and_retried(fake, browser):
    open_page(browser, fake.url + "/")
    browser.wait(lambda: browser.text("recent"), what="the page settled")
    browser.js("window.notices = []; new MutationObserver(() => window.notices.push("
               "document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent))"
               ".observe(document.getElementById('notice'), {childList: true, attributes: true});")
    fake.busy(1)
    submit(browser, ["https://images.example/busy.png"])
    wait_complete(browser)
    assert "The service is busy or stopping; retrying in 1 second…" in browser.js("return window.notices")
    assert browser.text("notice") is None
    assert [m for m, uri, _ in fake.requests if uri == "/v1/images/upload"].count("POST") == 2

    submit(browser, ["https://images.example/slow-3.png"])
    browser.wait(lambda: job_status(browser) == "in-progress")
    fake.unreachable = True
    browser.wait(lambda: (browser.text("notice") or "").startswith("Cannot reach the service."),
                 what="the unreachable notice")
    fake.unreachable = False
    fake.cancel(shown_job_id(browser))
    wait_complete(browser, timeout=30)
    browser.wait(lambda: browser.text("notice") is None, what="the notice gone")


def test_without_a_job_listing_the_section_stays_hidden_quietly(fake, browser):
    fake.listing = False
    open_page(browser, fake.url + "/")
    browser.wait(lambda: ("GET", "/openapi.json", None) in fake.requests, what="the API description")
    # Keyboard only: the text box, Tab to the button, Enter.
    box = browser.driver.find_element(By.ID, "urls")
    box.send_keys("https://images.example/typed.png")
    box.send_keys(Keys.TAB)
    assert browser.js("return document.activeElement.id") == "upload-button"
    browser.driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_complete(browser)
    assert browser.text("recent") is None
    assert not [uri for method, uri, _ in fake.requests if uri.startswith("/v1/images/upload?")]
    assert errors_in(browser.console()) == []
