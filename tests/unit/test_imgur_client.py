"""ImgurHost against canned answers (requests-mock): request shape, parsing, error mapping."""
import itertools
import email.parser
import email.policy
import email.utils
import socket
import time

import pytest
import requests

from uploader.errors import AuthRejectedError, PermanentHostError, RetryableHostError
from uploader.hosts import Uploaded
from uploader.hosts.imgur import ImgurHost, parse_rate_limits

API = "https://api.imgur.test"
UPLOAD_URL = API + "/3/image"
TOKEN_URL = API + "/oauth2/token"
TOKEN = "tok-5ecret-access-9f8e7d"
CLIENT_ID = "cid-5ecret-0a1b2c"
CLIENT_SECRET = "csec-5ecret-3d4e5f"
REFRESH = "rt-5ecret-6a7b8c"
SECRETS = (TOKEN, CLIENT_SECRET, REFRESH)

GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
       b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"

VARNISH_503 = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html><head><title>503 first byte timeout</title></head>
<body><h1>Error 503 first byte timeout</h1><p>first byte timeout</p>
<h3>Guru Mediation:</h3><p>Details: cache-iad-123 1495556889 123456</p><hr><p>Varnish cache server</p>
</body></html>"""


def success_body(link="https://i.imgur.com/orunSTu.gif", deletehash="x70po4w7BVvSUzZ"):
    return {"data": {"id": "orunSTu", "title": None, "description": None, "datetime": 1495556889,
                     "type": "image/gif", "animated": False, "width": 1, "height": 1, "size": 42,
                     "views": 0, "bandwidth": 0, "account_url": None, "account_id": 0,
                     "deletehash": deletehash, "name": "", "link": link},
            "success": True, "status": 200}


def classic(status, error):
    return {"data": {"error": error, "request": "/3/image", "method": "POST"},
            "success": False, "status": status}


def new_envelope(status, detail, phrase):
    return {"errors": [{"id": "legacy-api-5f6d7c8b9a", "code": str(status), "status": phrase,
                        "detail": detail}]}


@pytest.fixture
def host():
    """The client on a requests session, which requests-mock answers (the service itself
    uses a urllib3 pool: tests/unit/test_fake_imgur.py speaks to it over real sockets)."""
    return ImgurHost(api_url=API, access_token=TOKEN, client_id=CLIENT_ID, timeout_seconds=30.0,
                     session=requests.Session())


def upload_gif(host):
    return host.upload(GIF, filename="cat.gif", mime="image/gif")


def multipart_parts(request):
    """name -> (filename, content type, bytes) of a recorded multipart request."""
    raw = b"Content-Type: " + request.headers["Content-Type"].encode() + b"\r\n\r\n" + request.body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    return {part.get_param("name", header="content-disposition"):
            (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            for part in message.iter_parts()}


# -- request shape -------------------------------------------------------------------------

def test_upload_sends_the_bytes_as_a_multipart_file_part_named_image(host, requests_mock):
    requests_mock.post(UPLOAD_URL, json=success_body())
    upload_gif(host)
    request = requests_mock.last_request
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(request)
    assert parts["image"] == ("cat.gif", "image/gif", GIF)
    assert parts["type"][2] == b"file"
    assert parts["name"][2] == b"cat.gif"
    assert request.headers["User-Agent"] == "image-service/0.1"


@pytest.mark.parametrize("token, client_id, expected", [
    (TOKEN, CLIENT_ID, f"Bearer {TOKEN}"),
    (TOKEN, "", f"Bearer {TOKEN}"),
    ("", CLIENT_ID, f"Client-ID {CLIENT_ID}"),
])
def test_authorization_header_prefers_the_bearer_token(requests_mock, token, client_id, expected):
    requests_mock.post(UPLOAD_URL, json=success_body())
    upload_gif(ImgurHost(api_url=API + "/", access_token=token, client_id=client_id,
                         session=requests.Session()))
    assert requests_mock.last_request.headers["Authorization"] == expected


def test_without_credentials_nothing_is_sent(requests_mock):
    with pytest.raises(AuthRejectedError, match="no access token or client id"):
        upload_gif(ImgurHost(api_url=API, session=requests.Session()))
    assert requests_mock.call_count == 0


def test_redirects_are_not_followed(host, requests_mock):
    requests_mock.post(UPLOAD_URL, status_code=302, headers={"Location": API + "/elsewhere"})
    requests_mock.post(API + "/elsewhere", json=success_body())
    with pytest.raises(RetryableHostError, match="unexpected redirect") as caught:
        upload_gif(host)
    assert requests_mock.call_count == 1
    assert caught.value.pool_wide is False


def test_without_a_session_connections_are_pooled_for_several_threads():
    host = ImgurHost(api_url=API, client_id=CLIENT_ID)
    assert host.session is None
    assert host.pool.connection_from_url(UPLOAD_URL).pool.maxsize >= 16
    assert ImgurHost.name == "imgur"


def test_a_given_session_is_used(requests_mock):
    session = requests.Session()
    requests_mock.post(UPLOAD_URL, json=success_body())
    host = ImgurHost(api_url=API, client_id=CLIENT_ID, session=session)
    assert host.session is session
    upload_gif(host)
    assert requests_mock.called


# -- success -------------------------------------------------------------------------------

def test_success_returns_the_link_imgur_chose(host, requests_mock):
    # A converted image changes extension: the link is taken, never built.
    requests_mock.post(UPLOAD_URL, json=success_body(link="https://i.imgur.com/orunSTu.jpg"))
    uploaded = host.upload(PNG, filename="big.png", mime="image/png")
    assert uploaded == Uploaded(link="https://i.imgur.com/orunSTu.jpg", deletehash="x70po4w7BVvSUzZ")


@pytest.mark.parametrize("kwargs", [
    {"json": {"data": {"id": "orunSTu"}, "success": True, "status": 200}},
    {"json": {"success": True}},
    {"json": []},
    {"text": "<html>ok</html>"},
    {"text": ""},
])
def test_an_answer_without_a_link_is_retryable(host, requests_mock, kwargs):
    requests_mock.post(UPLOAD_URL, status_code=200, **kwargs)
    with pytest.raises(RetryableHostError, match="^Imgur answered without a link$"):
        upload_gif(host)


def test_a_200_carrying_a_failure_body_is_classified_by_the_body_status(host, requests_mock):
    requests_mock.post(UPLOAD_URL, status_code=200,
                       json=classic(400, "We don't support that file type!"))
    with pytest.raises(PermanentHostError, match=r"We don't support that file type! \(HTTP 400\)"):
        upload_gif(host)


# -- rate-limit headers --------------------------------------------------------------------

RATE_HEADERS = {
    "X-RateLimit-UserLimit": "500", "X-RateLimit-UserRemaining": "490",
    "X-RateLimit-UserReset": "3600", "X-RateLimit-ClientLimit": "12500",
    "X-RateLimit-ClientRemaining": "12490", "X-RateLimit-ClientReset": "86400",
    "X-Post-Rate-Limit-Limit": "1250", "X-Post-Rate-Limit-Remaining": "1249",
    "X-Post-Rate-Limit-Reset": "1800",
}


def test_success_carries_the_rate_limit_snapshot(host, requests_mock):
    requests_mock.post(UPLOAD_URL, json=success_body(), headers=RATE_HEADERS)
    rate = upload_gif(host).rate
    assert (rate.user_limit, rate.user_remaining, rate.user_reset) == (500, 490, 3600.0)
    assert (rate.client_limit, rate.client_remaining, rate.client_reset) == (12500, 12490, 86400.0)
    assert (rate.post_limit, rate.post_remaining, rate.post_reset) == (1250, 1249, 1800.0)


def test_a_reset_given_as_unix_time_becomes_seconds_from_now():
    rate = parse_rate_limits({"X-RateLimit-UserReset": str(int(time.time()) + 120),
                              "X-RateLimit-ClientReset": str(int(time.time()) - 5)})
    assert 115 <= rate.user_reset <= 121
    assert rate.client_reset == 0.0


@pytest.mark.parametrize("value", [None, "", "lots", "nan", "12,5", "inf"])
def test_missing_or_garbled_rate_headers_become_none(value):
    headers = {} if value is None else {name: value for name in RATE_HEADERS}
    rate = parse_rate_limits(headers)
    assert all(getattr(rate, field) is None for field in (
        "user_limit", "user_remaining", "user_reset", "client_limit", "client_remaining",
        "client_reset", "post_limit", "post_remaining", "post_reset"))


def test_failures_carry_the_rate_limit_snapshot_too(host, requests_mock):
    headers = dict(RATE_HEADERS, **{"X-RateLimit-ClientRemaining": "0"})
    requests_mock.post(UPLOAD_URL, status_code=429, headers=headers,
                       json=new_envelope(429, "Daily client requests exceeded", "Too Many Requests"))
    with pytest.raises(RetryableHostError) as caught:
        upload_gif(host)
    assert caught.value.rate.client_remaining == 0
    assert caught.value.rate.user_remaining == 490


# -- error envelopes and classification ----------------------------------------------------

OVER_CAPACITY = "Imgur is temporarily over capacity. Please try again later."
ERROR_CASES = {
    # id: (HTTP status, mock kwargs, exception class, exact message, pool_wide)
    "type-string": (400, {"json": classic(400, "We don't support that file type!")},
                    PermanentHostError, "Imgur: We don't support that file type! (HTTP 400)", None),
    "type-object-1003": (415, {"json": classic(415, {"code": 1003, "message": "File type invalid (1)",
                                                     "type": "ImgurException"})},
                         PermanentHostError, "Imgur: File type invalid (1) (HTTP 415)", None),
    "size-400": (400, {"json": classic(400, "File is over the size limit")},
                 PermanentHostError, "Imgur: File is over the size limit (HTTP 400)", None),
    "size-413-bare": (413, {"json": {"id": "a1b2c3", "code": 413, "detail": "file is over the size limit",
                                     "status": "Request Entity Too Large"}},
                      PermanentHostError, "Imgur: file is over the size limit (HTTP 413)", None),
    "not-found": (404, {"json": classic(404, "Unable to find an image with the id, 404")},
                  PermanentHostError, "Imgur: Unable to find an image with the id, 404 (HTTP 404)", None),
    "other-403": (403, {"text": "<html><head><title>Forbidden</title></head></html>"},
                  PermanentHostError, "Imgur: Forbidden (HTTP 403)", None),
    "too-fast": (400, {"json": classic(400, "Uploading file too fast!")},
                 RetryableHostError, "Imgur: Uploading file too fast! (HTTP 400)", True),
    "429-new-daily": (429, {"json": new_envelope(429, "Daily client requests exceeded", "Too Many Requests"),
                            "headers": {"Content-Type": "application/vnd.imgur.v1+json"}},
                      RetryableHostError, "Imgur: Daily client requests exceeded (HTTP 429)", True),
    "429-new-plain": (429, {"json": new_envelope(429, "Too Many Requests", "Too Many Requests")},
                      RetryableHostError, "Imgur: Too Many Requests (HTTP 429)", True),
    "429-classic": (429, {"json": classic(429, "Too Many Requests")},
                    RetryableHostError, "Imgur: Too Many Requests (HTTP 429)", True),
    "429-empty": (429, {"text": ""}, RetryableHostError, "Imgur: Too Many Requests (HTTP 429)", True),
    "capacity-403": (403, {"json": classic(403, OVER_CAPACITY)},
                     RetryableHostError, f"Imgur: {OVER_CAPACITY} (HTTP 403)", True),
    "capacity-500": (500, {"json": classic(500, OVER_CAPACITY)},
                     RetryableHostError, f"Imgur: {OVER_CAPACITY} (HTTP 500)", True),
    "500-classic": (500, {"json": classic(500, "Internal server error")},
                    RetryableHostError, "Imgur: Internal server error (HTTP 500)", False),
    "503-varnish": (503, {"text": VARNISH_503, "headers": {"Content-Type": "text/html"}},
                    RetryableHostError, "Imgur: 503 first byte timeout (HTTP 503)", False),
    "502-empty": (502, {"text": ""}, RetryableHostError, "Imgur: Bad Gateway (HTTP 502)", False),
    "500-text": (500, {"text": "upstream connect error\n"},
                 RetryableHostError, "Imgur: upstream connect error (HTTP 500)", False),
    "bad-token": (403, {"json": {"data": {"error": "The access token provided is invalid.",
                                          "request": "/3/image", "method": "POST"},
                                 "success": False, "status": 403}},
                  AuthRejectedError, "Imgur: The access token provided is invalid. (HTTP 403)", None),
    "no-auth": (401, {"json": classic(401, "Authentication required")},
                AuthRejectedError, "Imgur: Authentication required (HTTP 401)", None),
    "bad-client-id": (403, {"json": classic(403, "Invalid client_id")},
                      AuthRejectedError, "Imgur: Invalid client_id (HTTP 403)", None),
    "any-401": (401, {"text": "nope"}, AuthRejectedError, "Imgur: nope (HTTP 401)", None),
    "body-status-differs": (400, {"json": classic(500, "Uploading file too fast!")},
                            RetryableHostError, "Imgur: Uploading file too fast! (HTTP 400)", True),
}


@pytest.mark.parametrize("status, kwargs, exc_class, message, pool_wide",
                         list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_error_answers_map_to_the_right_error(host, requests_mock, status, kwargs, exc_class,
                                              message, pool_wide):
    requests_mock.post(UPLOAD_URL, status_code=status, **kwargs)
    with pytest.raises(exc_class) as caught:
        upload_gif(host)
    assert type(caught.value) is exc_class
    assert str(caught.value) == message
    if pool_wide is not None:
        assert caught.value.pool_wide is pool_wide
    assert hasattr(caught.value, "rate")


def test_a_huge_error_body_gives_a_short_reason(host, requests_mock):
    requests_mock.post(UPLOAD_URL, status_code=500, text="x" * 10_000)
    with pytest.raises(RetryableHostError) as caught:
        upload_gif(host)
    assert len(str(caught.value)) < 300


# -- Retry-After ---------------------------------------------------------------------------

def http_date(seconds_from_now):
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("status, headers, expected", [
    (429, {"Retry-After": "2"}, 2.0),
    (429, {"Retry-After": " 1.5 "}, 1.5),
    (503, {"Retry-After": "7"}, 7.0),
    (429, {"Retry-After": "soon"}, None),
    (429, {}, None),
    (500, {}, None),
    # No Retry-After: a 429 waits out the exhausted budget's reset when it is short...
    (429, {"X-RateLimit-UserRemaining": "0", "X-RateLimit-UserReset": "120"}, 120.0),
    (429, {"X-Post-Rate-Limit-Remaining": "0", "X-Post-Rate-Limit-Reset": "300",
           "X-RateLimit-UserRemaining": "5", "X-RateLimit-UserReset": "600"}, 600.0),
    # ...but not a daily one, and not a budget that is not exhausted.
    (429, {"X-RateLimit-ClientRemaining": "0", "X-RateLimit-ClientReset": "86400"}, None),
    (429, {"X-RateLimit-UserRemaining": "400", "X-RateLimit-UserReset": "120"}, None),
    (500, {"X-RateLimit-UserRemaining": "0", "X-RateLimit-UserReset": "120"}, None),
])
def test_retry_after(host, requests_mock, status, headers, expected):
    requests_mock.post(UPLOAD_URL, status_code=status, headers=headers,
                       json=classic(status, "Too Many Requests"))
    with pytest.raises(RetryableHostError) as caught:
        upload_gif(host)
    assert caught.value.retry_after == expected


def test_retry_after_as_an_http_date(host, requests_mock):
    requests_mock.post(UPLOAD_URL, status_code=429, headers={"Retry-After": http_date(30)},
                       json=classic(429, "Too Many Requests"))
    with pytest.raises(RetryableHostError) as caught:
        upload_gif(host)
    assert 25 <= caught.value.retry_after <= 31


# -- transport failures --------------------------------------------------------------------

@pytest.mark.parametrize("exc, message", [
    (requests.ConnectTimeout, "Imgur timed out after 30 s"),
    (requests.ReadTimeout, "Imgur timed out after 30 s"),
    (requests.ConnectionError("connection reset by peer"),
     "Imgur unreachable: ConnectionError: connection reset by peer"),
    (requests.exceptions.ChunkedEncodingError("broken"),
     "Imgur unreachable: ChunkedEncodingError: broken"),
])
def test_transport_failures_are_retryable(host, requests_mock, exc, message):
    requests_mock.post(UPLOAD_URL, exc=exc)
    with pytest.raises(RetryableHostError) as caught:
        upload_gif(host)
    assert str(caught.value) == message
    assert caught.value.pool_wide is False and caught.value.rate is None


def test_a_closed_port_is_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = ImgurHost(api_url=f"http://127.0.0.1:{port}", client_id=CLIENT_ID, timeout_seconds=2)
    with pytest.raises(RetryableHostError, match="^Imgur unreachable: "):
        upload_gif(host)


# -- token refresh -------------------------------------------------------------------------

def test_refresh_posts_the_form_and_uses_the_new_token(host, requests_mock):
    answer = {"access_token": "new-access-token", "expires_in": 2419200, "token_type": "bearer",
              "scope": None, "refresh_token": REFRESH, "account_id": 1, "account_username": "tester"}
    requests_mock.post(TOKEN_URL, json=answer)
    assert host.refresh_access_token(refresh_token=REFRESH, client_id=CLIENT_ID,
                                     client_secret=CLIENT_SECRET) == answer
    form = requests_mock.last_request.text
    assert sorted(form.split("&")) == sorted([
        f"refresh_token={REFRESH}", f"client_id={CLIENT_ID}", f"client_secret={CLIENT_SECRET}",
        "grant_type=refresh_token"])
    assert "Authorization" not in requests_mock.last_request.headers
    assert host.access_token == "new-access-token"
    requests_mock.post(UPLOAD_URL, json=success_body())
    upload_gif(host)
    assert requests_mock.last_request.headers["Authorization"] == "Bearer new-access-token"


@pytest.mark.parametrize("status, kwargs", [
    (400, {"json": {"data": {"error": "Invalid refresh token", "request": "/oauth2/token",
                             "method": "POST"}, "success": False, "status": 400}}),
    (400, {"json": {"error": "invalid_grant", "error_description": "Invalid refresh token"}}),
    (401, {"json": classic(401, "Invalid refresh token")}),
    (403, {"text": "Invalid refresh token"}),
])
def test_a_refused_refresh_is_an_auth_error(host, requests_mock, status, kwargs):
    requests_mock.post(TOKEN_URL, status_code=status, **kwargs)
    with pytest.raises(AuthRejectedError) as caught:
        host.refresh_access_token(refresh_token=REFRESH, client_id=CLIENT_ID,
                                  client_secret=CLIENT_SECRET)
    assert str(caught.value) == f"Imgur refused the refresh token: Invalid refresh token (HTTP {status})"
    assert host.access_token == TOKEN


@pytest.mark.parametrize("kwargs, message", [
    ({"status_code": 503, "text": VARNISH_503}, "Imgur: 503 first byte timeout (HTTP 503)"),
    ({"json": {"expires_in": 3600}}, "Imgur answered the token refresh without an access token"),
    ({"exc": requests.ConnectionError("refused")}, "Imgur unreachable: ConnectionError: refused"),
])
def test_a_failed_refresh_for_other_reasons_is_retryable(host, requests_mock, kwargs, message):
    requests_mock.post(TOKEN_URL, **kwargs)
    with pytest.raises(RetryableHostError) as caught:
        host.refresh_access_token(refresh_token=REFRESH, client_id=CLIENT_ID,
                                  client_secret=CLIENT_SECRET)
    assert str(caught.value) == message
    assert host.access_token == TOKEN


# -- secrets -------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_no_secret_appears_in_any_error_message(host, requests_mock, status):
    # A hostile server that echoes back in its error every secret the request carried.
    requests_mock.post(UPLOAD_URL, status_code=status, json=classic(status, f"bad {TOKEN} {CLIENT_ID}"))
    requests_mock.post(TOKEN_URL, status_code=status,
                       json=classic(status, "bad " + " ".join(SECRETS + (CLIENT_ID,))))
    messages = []
    for call in (lambda: upload_gif(host),
                 lambda: host.refresh_access_token(refresh_token=REFRESH, client_id=CLIENT_ID,
                                                   client_secret=CLIENT_SECRET)):
        with pytest.raises(Exception) as caught:
            call()
        messages.append(str(caught.value))
    for exc in (requests.ConnectionError(f"failed for {TOKEN}"), requests.ReadTimeout(TOKEN)):
        requests_mock.post(UPLOAD_URL, exc=exc)
        with pytest.raises(RetryableHostError) as caught:
            upload_gif(host)
        messages.append(str(caught.value))
    for message in messages:
        assert message.startswith("Imgur")
        assert "***" in message or "timed out" in message
        for secret in SECRETS:
            assert secret not in message, message


def test_no_secret_appears_in_the_logs(host, requests_mock, caplog):
    caplog.set_level("DEBUG")
    requests_mock.post(UPLOAD_URL, json=success_body())
    requests_mock.post(TOKEN_URL, json={"access_token": "fresh-5ecret-token", "expires_in": 60})
    upload_gif(host)
    host.refresh_access_token(refresh_token=REFRESH, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    upload_gif(host)
    assert "refreshed" in caplog.text
    for secret in SECRETS + ("fresh-5ecret-token",):
        assert secret not in caplog.text


def test_a_boundary_never_occurs_in_the_image(monkeypatch):
    from uploader.hosts import imgur
    monkeypatch.setattr(imgur, "_boundaries", itertools.count(5))
    taken = f"{imgur._BOUNDARY_PREFIX}-5".encode()
    content_type, body = imgur.multipart(b"GIF89a" + taken + b";", filename='a"b.gif',
                                         mime="image/gif", fields={"type": "file"})
    boundary = content_type.split("boundary=")[1].encode()
    assert boundary == f"{imgur._BOUNDARY_PREFIX}-6".encode()
    assert body.count(b"--" + boundary) == 3 and body.endswith(b"--" + boundary + b"--\r\n")
    assert b'filename="a%22b.gif"' in body


def test_credits_are_read_without_spending_any(host, requests_mock):
    reset = int(time.time()) + 1800
    requests_mock.get(API + "/3/credits", json={"data": {
        "UserLimit": 500, "UserRemaining": 440, "UserReset": reset,
        "ClientLimit": 12500, "ClientRemaining": 12000, "ClientReset": 86400}, "success": True,
        "status": 200}, headers={"X-Post-Rate-Limit-Remaining": "1200", "X-Post-Rate-Limit-Reset": "600"})
    budgets = host.credits()
    assert budgets["user_remaining"] == 440 and 1790 <= budgets["user_reset"] <= 1800
    assert budgets["client_remaining"] == 12000 and budgets["client_reset"] == 86400
    assert budgets["post_remaining"] == 1200 and budgets["post_reset"] == 600
    assert requests_mock.last_request.headers["Authorization"] == f"Bearer {TOKEN}"
