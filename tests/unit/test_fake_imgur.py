"""The fake Imgur speaks the wire protocol: the real ImgurHost talks to it over loopback."""
import base64
import hashlib
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from uploader.errors import AuthRejectedError, PermanentHostError, RetryableHostError
from testbed.fakes.imgur import FakeImgur
from uploader.hosts.imgur import ImgurHost

from tests.support import REPO

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
       b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x03\x00\x00\x00\x02\x08\x06\x00\x00\x00"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
WEBP = (b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11"
        b"\x88\x88\xfe\x07\x00")
CLIENT = {"refresh_token": "test-refresh", "client_id": "test-client", "client_secret": "test-secret"}


@pytest.fixture
def fake():
    with FakeImgur() as imgur:
        yield imgur


@pytest.fixture
def host(fake):
    return ImgurHost(api_url=fake.url, access_token="test-token", timeout_seconds=5)


def upload(host, data=GIF, name="cat.gif", mime="image/gif"):
    return host.upload(data, filename=name, mime=mime)


def post_raw(fake, path="/3/image", auth="Client-ID test-client", **kwargs):
    headers = {"Authorization": auth} if auth else {}
    return requests.post(fake.url + path, headers=headers, timeout=5, **kwargs)


# -- uploads -------------------------------------------------------------------------------

def test_an_upload_is_stored_and_served(fake, host):
    uploaded = upload(host)
    match = re.fullmatch(r"https://i\.imgur\.example/([A-Za-z0-9]{7})\.gif", uploaded.link)
    assert match
    assert re.fullmatch(r"[A-Za-z0-9]{15}", uploaded.deletehash)
    assert fake.image_bytes(uploaded.link) == GIF
    served = requests.get(f"{fake.url}/{match.group(1)}.gif", timeout=5)
    assert served.content == GIF and served.headers["Content-Type"] == "image/gif"
    [record] = fake.uploads
    assert (record.path, record.auth, record.size) == ("/3/image", "bearer", len(GIF))
    assert record.status == 200
    assert record.sha256 == hashlib.sha256(GIF).hexdigest()
    assert record.image_id == match.group(1)


def test_the_success_body_looks_like_imgurs(fake):
    answer = post_raw(fake, files={"image": ("p.png", PNG, "image/png")}, data={"name": "p.png"})
    body = answer.json()
    assert (answer.status_code, body["success"], body["status"]) == (200, True, 200)
    data = body["data"]
    assert (data["type"], data["width"], data["height"], data["size"]) == ("image/png", 3, 2, len(PNG))
    assert data["name"] == "p.png" and data["account_id"] == 0 and data["title"] is None
    assert isinstance(data["datetime"], int) and data["link"].endswith(f"/{data['id']}.png")


@pytest.mark.parametrize("path", ["/3/image", "/3/upload", "/3/image.json", "/3/upload.json"])
@pytest.mark.parametrize("data, ext", [(GIF, "gif"), (PNG, "png"), (JPEG, "jpg"),
                                        (b"II*\x00" + bytes(8), "tiff"), (b"BM" + bytes(30), "bmp")])
def test_every_upload_path_and_format(fake, path, data, ext):
    answer = post_raw(fake, path, files={"image": ("f", data, "application/octet-stream")})
    assert answer.status_code == 200
    assert answer.json()["data"]["link"].endswith("." + ext)


@pytest.mark.parametrize("kwargs", [
    {"data": {"image": base64.b64encode(GIF).decode(), "type": "base64"}},  # urlencoded
    {"files": {"image": (None, base64.b64encode(GIF).decode())}},  # multipart text field
])
def test_a_base64_image_field_is_accepted(fake, kwargs):
    answer = post_raw(fake, **kwargs)
    assert answer.status_code == 200
    assert fake.image_bytes(answer.json()["data"]["link"]) == GIF


def test_multipart_parameters_are_read_as_a_browser_writes_them(fake):
    """Quoted values keep a ';' and lose their escapes; an unquoted name and a header in
    other capitals work too (the fake parses these itself, not with the e-mail parser)."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\ncontent-disposition: form-data; name=name\r\n\r\nx;y.gif\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="a\\"b;c.gif"\r\nContent-Type: image/gif\r\n\r\n').encode() + GIF + (
            f'\r\n--{boundary}--\r\n').encode()
    answer = requests.post(fake.url + "/3/image", data=body, timeout=5, headers={
        "Authorization": "Client-ID test-client",
        "Content-Type": f'Multipart/Form-Data; boundary="{boundary}"'})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["name"] == "x;y.gif"
    assert fake.image_bytes(answer.json()["data"]["link"]) == GIF


def test_the_client_id_works_and_links_can_point_at_the_fake_itself():
    with FakeImgur(public_base=None) as fake:
        uploaded = upload(ImgurHost(api_url=fake.url, client_id="test-client"))
        assert uploaded.link.startswith(fake.url + "/")
        assert requests.get(uploaded.link, timeout=5).content == GIF
        assert fake.uploads[0].auth == "client-id"


@pytest.mark.parametrize("data, setup, message", [
    (WEBP, {}, "Imgur: We don't support that file type! (HTTP 400)"),
    (b"hello world", {}, "Imgur: We don't support that file type! (HTTP 400)"),
    (b"hello world", {"file_type_error": "object"}, "Imgur: File type invalid (1) (HTTP 415)"),
    (GIF + bytes(100), {"max_bytes": 100}, "Imgur: File is over the size limit (HTTP 400)"),
])
def test_bad_files_are_permanent_failures(fake, host, data, setup, message):
    for name, value in setup.items():
        setattr(fake, name, value)
    with pytest.raises(PermanentHostError) as caught:
        upload(host, data)
    assert str(caught.value) == message
    assert fake.uploads == [] and fake.requests_seen[0].status in (400, 415)


def test_parallel_uploads_are_all_recorded(fake, host):
    with ThreadPoolExecutor(8) as pool:
        links = list(pool.map(lambda _: upload(host).link, range(40)))
    assert len(set(links)) == 40 and len(fake.uploads) == 40 and len(fake.stored) == 40
    assert upload(host).rate.user_remaining == 500 - 41 * 10


def test_a_fake_keeping_no_images_still_answers_links():
    with FakeImgur(keep_images=False) as fake:
        host = ImgurHost(api_url=fake.url, access_token="test-token", timeout_seconds=5)
        links = [upload(host, data, name, mime).link
                 for data, name, mime in ((GIF, "a.gif", "image/gif"), (PNG, "b.png", "image/png"))]
        assert re.fullmatch(r"https://i\.imgur\.example/[A-Za-z0-9]{7}\.gif", links[0])
        assert links[1].endswith(".png") and links[0] != links[1]
        assert fake.stored == {}
        with pytest.raises(KeyError):
            fake.image_bytes(links[0])
        image_id = links[0].rsplit("/", 1)[1]
        assert requests.get(f"{fake.url}/{image_id}", timeout=5).status_code == 404
        assert [(r.status, r.sha256, r.size) for r in fake.uploads] == [
            (200, hashlib.sha256(data).hexdigest(), len(data)) for data in (GIF, PNG)]
        with pytest.raises(PermanentHostError):  # the checks still apply
            upload(host, WEBP)


def test_the_fake_has_a_generous_listen_backlog(fake):
    assert fake._server.request_queue_size >= 128


# -- authentication and tokens ------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"access_token": "wrong-token"}, "Imgur: The access token provided is invalid. (HTTP 403)"),
    ({"client_id": "wrong-client"}, "Imgur: Invalid client_id (HTTP 403)"),
])
def test_bad_credentials_are_rejected(fake, kwargs, message):
    with pytest.raises(AuthRejectedError) as caught:
        upload(ImgurHost(api_url=fake.url, **kwargs))
    assert str(caught.value) == message


def test_no_authorization_header_is_a_401(fake):
    answer = post_raw(fake, auth=None, files={"image": ("f", GIF)})
    assert answer.status_code == 401
    assert answer.json() == {"data": {"error": "Authentication required", "request": "/3/image",
                                      "method": "POST"}, "success": False, "status": 401}


def test_an_expired_token_is_refreshed(fake, host):
    fake.expire_token("test-token")
    with pytest.raises(AuthRejectedError, match="access token provided is invalid"):
        upload(host)
    answer = host.refresh_access_token(**CLIENT)
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 2419200
    assert answer["refresh_token"] == "test-refresh" and "data" not in answer
    assert host.access_token == answer["access_token"] != "test-token"
    assert upload(host).link
    assert [r.status for r in fake.refresh_requests] == [200]


@pytest.mark.parametrize("change", [{"refresh_token": "stolen"}, {"client_secret": "guess"},
                                    {"client_id": "other"}])
def test_a_bad_refresh_is_refused(fake, host, change):
    with pytest.raises(AuthRejectedError, match=r"^Imgur refused the refresh token: .*\(HTTP 400\)$"):
        host.refresh_access_token(**dict(CLIENT, **change))
    assert host.access_token == "test-token"
    assert [r.status for r in fake.refresh_requests] == [400]


# -- forced failures -----------------------------------------------------------------------

def test_a_forced_429_with_retry_after_reaches_the_client(fake, host):
    fake.fail_next(1, 429, headers={"Retry-After": "2"})
    with pytest.raises(RetryableHostError) as caught:
        upload(host)
    assert caught.value.retry_after == 2 and caught.value.pool_wide
    assert str(caught.value) == "Imgur: Too Many Requests (HTTP 429)"
    upload(host)
    assert [r.status for r in fake.requests_seen] == [429, 200]
    assert fake.requests_seen[0].sha256 == hashlib.sha256(GIF).hexdigest()


@pytest.mark.parametrize("args, kwargs, message, pool_wide", [
    ((503,), {"envelope": "html"}, "Imgur: 503 Service Unavailable (HTTP 503)", False),
    ((500,), {}, "Imgur: Internal Server Error (HTTP 500)", False),
    ((403, "Imgur is temporarily over capacity. Please try again later."), {},
     "Imgur: Imgur is temporarily over capacity. Please try again later. (HTTP 403)", True),
    ((400, "Uploading file too fast!"), {}, "Imgur: Uploading file too fast! (HTTP 400)", True),
    ((429, "Daily client requests exceeded"), {"envelope": "new"},
     "Imgur: Daily client requests exceeded (HTTP 429)", True),
    ((413, "file is over the size limit"), {"envelope": "bare"}, None, None),
])
def test_forced_failures_in_every_envelope(fake, host, args, kwargs, message, pool_wide):
    fake.fail_next(2, *args, **kwargs)
    expected = PermanentHostError if message is None else RetryableHostError
    with pytest.raises(expected) as caught:
        upload(host)
    if message is not None:
        assert str(caught.value) == message and caught.value.pool_wide is pool_wide
    assert post_raw(fake, files={"image": ("f", GIF)}).status_code == args[0]
    assert upload(host).link


def test_the_new_envelope_has_its_own_content_type(fake):
    fake.fail_next(1, 429, "Daily client requests exceeded", envelope="new")
    answer = post_raw(fake, files={"image": ("f", GIF)})
    assert answer.headers["Content-Type"] == "application/vnd.imgur.v1+json"
    [error] = answer.json()["errors"]
    assert (error["code"], error["status"], error["detail"]) == (
        "429", "Too Many Requests", "Daily client requests exceeded")


def test_fail_always_until_cleared(fake, host):
    fake.fail_always(500, "Internal server error")
    for _ in range(3):
        with pytest.raises(RetryableHostError, match="Internal server error"):
            upload(host)
    fake.clear_failures()
    assert upload(host).link


def test_latency_delays_uploads(fake, host):
    fake.latency = 0.1
    started = time.monotonic()
    upload(host)
    assert time.monotonic() - started >= 0.1


# -- rate-limit budgets --------------------------------------------------------------------

def test_budgets_decrement_and_exhaust_to_a_429(fake, host):
    fake.set_budgets(user_limit=20, user_reset=600)
    assert upload(host).rate.user_remaining == 10
    rate = upload(host).rate
    assert (rate.user_limit, rate.user_remaining, rate.client_remaining, rate.post_remaining) == (
        20, 0, 12500 - 20, 1250 - 2)
    assert 599 <= rate.user_reset <= 600
    with pytest.raises(RetryableHostError) as caught:
        upload(host)
    assert str(caught.value) == "Imgur: Too Many Requests (HTTP 429)" and caught.value.pool_wide
    assert caught.value.retry_after == 600 and caught.value.rate.user_remaining == 0


def test_an_exhausted_client_budget_answers_in_the_new_envelope(fake, host):
    fake.set_budgets(client_remaining=5)
    with pytest.raises(RetryableHostError) as caught:
        upload(host)
    assert str(caught.value) == "Imgur: Daily client requests exceeded (HTTP 429)"
    assert caught.value.retry_after is None  # a daily reset is no retry hint


def test_an_exhausted_post_budget_is_a_429(fake, host):
    fake.set_budgets(post_remaining=0, post_reset=30)
    with pytest.raises(RetryableHostError) as caught:
        upload(host)
    assert caught.value.retry_after == 30


def test_a_budget_refills_when_its_reset_counts_down(fake, host):
    fake.set_budgets(user_remaining=0, user_reset=0.15)
    with pytest.raises(RetryableHostError):
        upload(host)
    time.sleep(0.2)
    assert upload(host).rate.user_remaining == 490


def test_credits_reports_the_budgets(fake, host):
    upload(host)
    answer = requests.get(fake.url + "/3/credits", headers={"Authorization": "Client-ID test-client"},
                          timeout=5)
    data = answer.json()["data"]
    assert (data["UserLimit"], data["UserRemaining"], data["ClientRemaining"]) == (500, 490, 12490)
    assert data["UserReset"] > time.time()
    assert answer.headers["X-RateLimit-ClientRemaining"] == "12490"


# -- lifecycle -----------------------------------------------------------------------------

def test_a_stopped_fake_is_unreachable_even_on_a_kept_alive_connection():
    fake = FakeImgur().start()
    host = ImgurHost(api_url=fake.url, access_token="test-token", timeout_seconds=2)
    upload(host)  # leaves a pooled keep-alive connection open
    fake.stop()
    with pytest.raises(RetryableHostError, match="^Imgur unreachable"):
        upload(host)


def test_bin_fake_imgur_serves_until_sigterm():
    proc = subprocess.Popen([str(REPO / "bin" / "fake-imgur"), "--port", "0", "--token", "cli-token"],
                            stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        line = proc.stdout.readline()
        match = re.match(r"Fake Imgur listening on (http://127\.0\.0\.1:\d+) \(token: cli-token", line)
        assert match, line
        uploaded = upload(ImgurHost(api_url=match.group(1), access_token="cli-token"))
        assert requests.get(uploaded.link, timeout=5).content == GIF
        # budgets no demo exhausts (Imgur's 500 user credits stopped one at 49 uploads)
        assert "credits: user 1000000, client 10000000, post 100000" in line
        assert uploaded.rate.user_remaining == 10**6 - 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_parallel_uploads_never_overspend_a_budget(fake, host):
    fake.set_budgets(user_remaining=50)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _outcome(host), range(16)))
    assert outcomes.count("ok") == 5 and len(fake.uploads) == 5


def _outcome(host):
    try:
        upload(host)
        return "ok"
    except RetryableHostError:
        return "429"
