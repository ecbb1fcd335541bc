"""The webhook sender: the wire contract, signatures, redirects, limits and address refusals.

Everything runs on loopback against ``testbed/fakes/webhook_receiver.py``. An autouse guard
records every socket connect in the process and fails the test at once if one goes
anywhere but 127.0.0.0/8 or ::1, so a refusal test can prove no connection was even tried;
refused private and public addresses come from an injected resolver, never from the wire.
"""

import hashlib
import hmac
import json
import logging
import random
import re
import socket
import ssl
import threading
import time

import pytest

import uploader
from testbed.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.support import loopback_only
from tests.rawhttp import CERT, KEY, raw_server, resolver_for
from uploader.submission import callback_url_problem
from uploader.webhook import (ANSWER_CAP, Outcome, WebhookSender, backoff_seconds,
                              sign, verify)

LOCAL = ["127.0.0.1/32"]
SECRET = "whsec-test-7f3a9c1e-not-for-production"
BODY = json.dumps({"id": "5f6c1c4a", "status": "complete",
                   "uploaded": {"complete": ["https://i.imgur.com/a.png"]},
                   "note": "caf\u00e9 \u2603"}, ensure_ascii=False).encode("utf-8")
DELIVERY = "d-0001-5f6c1c4a"


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    """Every (address, port) any socket in this process connects to; non-loopback fails the test."""
    with loopback_only(monkeypatch) as made:
        yield made


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def other_receiver():
    """A second receiver on 127.0.0.2: the "internal" target of refusal tests."""
    with WebhookReceiver(host="127.0.0.2") as running:
        yield running


def sender(**kwargs):
    kwargs.setdefault("timeout_seconds", 5)
    kwargs.setdefault("private_hosts_allowed", LOCAL)
    return WebhookSender(**kwargs)


def independent_check(header, secret, body):
    """Check a signature header with hmac directly, not with the module's code; return t."""
    match = re.fullmatch(r"t=([0-9]+),v1=([0-9a-f]{64})", header)
    assert match, header
    expected = hmac.new(secret.encode("utf-8"), match.group(1).encode("ascii") + b"." + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(match.group(2), expected)
    return int(match.group(1))


# --- the wire contract ------------------------------------------------------------------------

def test_posts_the_body_with_exactly_the_contract_headers(receiver, connections):
    hooks = sender(secret=SECRET, resolver=resolver_for({"hooks.test": ["127.0.0.1"]}))
    before = int(time.time())
    outcome = hooks.send(f"http://Hooks.Test:{receiver.port}/cb/job%201?a=1&b=two words", BODY,
                         delivery_id=DELIVERY, event="job.completed")
    after = int(time.time())
    assert outcome == Outcome(delivered=True, status=200, error=None, refused=False)
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/cb/job%201?a=1&b=two%20words", BODY)
    assert sorted(request.header_names) == sorted([
        "Host", "Content-Type", "Content-Length", "User-Agent", "X-Uploader-Event",
        "X-Uploader-Delivery", "X-Uploader-Signature", "Connection"])
    assert request.header("Host") == f"hooks.test:{receiver.port}"
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Length") == str(len(BODY))
    assert request.header("User-Agent") == f"image-service/{uploader.__version__}"
    assert request.header("X-Uploader-Event") == "job.completed"
    assert request.header("X-Uploader-Delivery") == DELIVERY
    assert before <= independent_check(request.header("X-Uploader-Signature"), SECRET, BODY) <= after
    assert connections == [("127.0.0.1", receiver.port)]


def test_no_signature_header_without_a_secret(receiver):
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY, event="job.failed")
    assert outcome.delivered
    [request] = receiver.requests
    assert request.header("X-Uploader-Signature") is None
    assert request.header("X-Uploader-Event") == "job.failed"
    assert request.body == BODY


def test_the_delivery_id_is_the_callers_on_every_attempt(receiver):
    receiver.answer(500, 200)
    hooks = sender(secret=SECRET)
    outcomes = [hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY) for _ in range(2)]
    assert [o.delivered for o in outcomes] == [False, True]
    assert [r.header("X-Uploader-Delivery") for r in receiver.requests] == [DELIVERY, DELIVERY]
    for request in receiver.requests:
        independent_check(request.header("X-Uploader-Signature"), SECRET, BODY)


@pytest.mark.parametrize("bad", ["", "two words", "line\r\nX-Injected: 1", "caf\u00e9", "x" * 201])
def test_bad_delivery_ids_and_events_are_the_callers_bug(receiver, bad):
    with pytest.raises(ValueError, match="^delivery_id must be"):
        sender().send(receiver.url_for("/cb"), BODY, delivery_id=bad)
    with pytest.raises(ValueError, match="^event must be"):
        sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY, event=bad)
    assert receiver.requests == []


def test_bad_settings_and_bodies_are_the_callers_bug(receiver):
    with pytest.raises(ValueError, match="^timeout_seconds must be above 0"):
        WebhookSender(timeout_seconds=0)
    with pytest.raises(ValueError, match="max_redirects at least 0$"):
        WebhookSender(max_redirects=-1)
    with pytest.raises(TypeError, match="^the webhook secret must be a string$"):
        WebhookSender(secret=SECRET.encode("ascii"))
    with pytest.raises(TypeError, match="^body must be bytes, not str$"):
        sender().send(receiver.url_for("/cb"), BODY.decode("utf-8"), delivery_id=DELIVERY)
    assert receiver.requests == []


def test_https_is_verified_against_the_original_name_with_sni(tmp_path, connections):
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "key.pem").write_text(KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_names = []
    context.sni_callback = lambda sslsock, name, ctx: server_names.append(name)
    resolve = resolver_for({"image.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with WebhookReceiver(ssl_context=context) as tls:
        hooks = sender(ca_certs=str(tmp_path / "cert.pem"), resolver=resolve)
        assert hooks.send(f"https://image.test:{tls.port}/cb", BODY, delivery_id=DELIVERY).delivered
        assert server_names == ["image.test"]
        assert tls.requests[0].header("Host") == f"image.test:{tls.port}"
        mismatch = hooks.send(f"https://other.test:{tls.port}/cb", BODY, delivery_id=DELIVERY)
        untrusted = sender(resolver=resolve).send(f"https://image.test:{tls.port}/cb", BODY,
                                                  delivery_id=DELIVERY)
        assert len(tls.requests) == 1
    assert not mismatch.delivered and not mismatch.refused
    assert re.match("^TLS certificate of other.test not valid: .*mismatch", mismatch.error)
    assert re.match("^TLS certificate of image.test not valid: self.signed", untrusted.error)
    assert {address for address, _ in connections} == {"127.0.0.1"}


# --- answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(receiver, status):
    receiver.answer(Answer(status, body=b"thanks" if status != 204 else b""))
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=True, status=status, error=None, refused=False)


@pytest.mark.parametrize("status", [400, 404, 410, 429, 500, 503, 304])
def test_other_statuses_are_not_delivered(receiver, status):
    receiver.answer(Answer(status, body=b"nope" if status != 304 else b""))
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=status, error=f"HTTP {status} from the callback",
                              refused=False)
    assert len(receiver.requests) == 1


def test_a_scripted_sequence_of_answers(receiver):
    receiver.answer(500, 503, 200)
    hooks = sender()
    outcomes = [hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY) for _ in range(3)]
    assert [(o.delivered, o.status, o.error) for o in outcomes] == [
        (False, 500, "HTTP 500 from the callback"), (False, 503, "HTTP 503 from the callback"),
        (True, 200, None)]


def test_a_slow_receiver_is_cut_off_at_the_deadline(receiver):
    receiver.answer(Answer(200, delay=30))
    outcome = sender(timeout_seconds=0.3).send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error="timed out after 0.3 s", refused=False)
    assert len(receiver.requests) == 1  # it got the request; its answer never counted


def test_trickling_headers_are_cut_at_the_deadline():
    """No single read waits long here; only the attempt's one deadline can stop it."""
    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.02):
            conn.sendall(b"a")

    with raw_server(handle) as port:
        outcome = sender(timeout_seconds=0.5).send(f"http://127.0.0.1:{port}/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error="timed out after 0.5 s", refused=False)


def test_a_2xx_counts_even_if_its_body_is_still_trickling_at_the_deadline():
    """The status line is the receiver's word; the body is only drained, within the deadline."""
    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not stop.wait(0.02):
            conn.sendall(b"a")

    with raw_server(handle) as port:
        outcome = sender(timeout_seconds=0.3).send(f"http://127.0.0.1:{port}/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=True, status=200, error=None, refused=False)


def test_the_answer_body_is_read_only_up_to_the_cap():
    """The receiver announces 10 MB and sends a little over the cap, then waits: a sender
    that read past the cap would still be waiting for bytes instead of hanging up."""
    hung_up = threading.Event()

    def handle(conn, stop):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * (ANSWER_CAP + 4096))
        conn.settimeout(10)
        try:
            while conn.recv(65536):
                pass
            hung_up.set()
        except ConnectionResetError:
            hung_up.set()  # the sender closed with our bytes unread
        except TimeoutError:
            pass

    with raw_server(handle) as port:
        outcome = sender(timeout_seconds=30).send(f"http://127.0.0.1:{port}/cb", BODY, delivery_id=DELIVERY)
        assert hung_up.wait(15)
    assert outcome.delivered and outcome.status == 200


def test_connection_refused():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    outcome = sender().send(f"http://127.0.0.1:{port}/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=f"connection refused by 127.0.0.1:{port}",
                              refused=False)


@pytest.mark.parametrize("hang_up, error", [
    ("reset", "connection reset by the callback"),
    ("close", "connection closed by the callback before it answered"),
])
def test_a_connection_dropped_without_an_answer(receiver, hang_up, error):
    receiver.answer(Answer(hang_up=hang_up))
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=error, refused=False)
    assert [r.body for r in receiver.requests] == [BODY]


def test_an_unresolvable_callback_is_not_a_refusal(connections):
    outcome = sender(resolver=resolver_for({})).send("https://nowhere.test/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error="could not resolve host 'nowhere.test'",
                              refused=False)
    assert connections == []


# --- redirects --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_are_followed_with_the_same_body_and_headers(receiver, other_receiver, status):
    receiver.answer(Answer(status, location=f"http://internal.test:{other_receiver.port}/moved?x=1"))
    hooks = sender(secret=SECRET, private_hosts_allowed=LOCAL + ["internal.test"],
                   resolver=resolver_for({"internal.test": ["127.0.0.2"]}))
    outcome = hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=True, status=200, error=None, refused=False)
    [first], [second] = receiver.requests, other_receiver.requests
    assert (second.method, second.path, second.body) == ("POST", "/moved?x=1", BODY)
    assert second.header("Host") == f"internal.test:{other_receiver.port}"
    assert [h for h in second.headers if h[0] != "Host"] == [h for h in first.headers if h[0] != "Host"]
    independent_check(second.header("X-Uploader-Signature"), SECRET, BODY)


def test_a_relative_location_is_followed(receiver):
    receiver.answer(Answer(308, location="/second"), Answer(307, location="third"))
    outcome = sender().send(receiver.url_for("/hooks/first"), BODY, delivery_id=DELIVERY)
    assert outcome.delivered
    assert [(r.method, r.path, r.body) for r in receiver.requests] == [
        ("POST", "/hooks/first", BODY), ("POST", "/second", BODY), ("POST", "/third", BODY)]


@pytest.mark.parametrize("status", [301, 302, 303])
def test_redirects_that_would_turn_the_post_into_a_get_are_not_followed(receiver, status):
    receiver.answer(Answer(status, location="/elsewhere"))
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=status, refused=False,
                              error=f"redirected with {status}; a webhook follows only 307 and 308")
    assert [r.path for r in receiver.requests] == ["/cb"]


def test_a_307_without_location(receiver):
    receiver.answer(307)
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=307, refused=False,
                              error="HTTP 307 from the callback without a Location header")


@pytest.mark.parametrize("max_redirects", [0, 2])
def test_too_many_redirects(receiver, max_redirects):
    receiver.default = Answer(307, location="/again")
    outcome = sender(max_redirects=max_redirects).send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=307, refused=False,
                              error=f"too many redirects (more than {max_redirects})")
    assert len(receiver.requests) == max_redirects + 1


def test_exactly_max_redirects_is_fine(receiver):
    receiver.answer(*[Answer(308, location="/next")] * 2)
    assert sender(max_redirects=2).send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY).delivered
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("target_host, reason", [
    ("internal.test", "refused: host internal.test resolves to 127.0.0.2, a loopback address"),
    ("127.0.0.2", "refused: 127.0.0.2 is a loopback address"),
    ("0x7f000002", "refused: 0x7f000002 is 127.0.0.2, a loopback address"),
    ("[::ffff:127.0.0.2]",
     "refused: ::ffff:127.0.0.2 is ::ffff:7f00:2, a loopback address (IPv4-mapped 127.0.0.2)"),
])
def test_a_redirect_to_a_refused_address_is_refused_without_a_request(
        receiver, other_receiver, connections, target_host, reason):
    receiver.answer(Answer(307, location=f"http://{target_host}:{other_receiver.port}/internal"))
    hooks = sender(resolver=resolver_for({"internal.test": ["127.0.0.2"]}))
    outcome = hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=reason, refused=True)
    assert other_receiver.requests == []
    assert len(receiver.requests) == 1
    assert connections == [("127.0.0.1", receiver.port)]


def test_a_redirect_to_another_scheme_is_refused(receiver, connections):
    receiver.answer(Answer(308, location="ftp://127.0.0.1/x"))
    outcome = sender().send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error="unsupported URL scheme 'ftp'",
                              refused=True)
    assert connections == [("127.0.0.1", receiver.port)]


# --- refused before anything is sent ----------------------------------------------------------

@pytest.mark.parametrize("answers, reason", [
    (["127.0.0.1"], "refused: host hooks.test resolves to 127.0.0.1, a loopback address"),
    (["::1"], "refused: host hooks.test resolves to ::1, a loopback address"),
    (["10.1.2.3"], "refused: host hooks.test resolves to 10.1.2.3, a private address"),
    (["192.168.1.20"], "refused: host hooks.test resolves to 192.168.1.20, a private address"),
    (["169.254.169.254"], "refused: host hooks.test resolves to 169.254.169.254, a link-local address"),
    (["100.64.0.9"], "refused: host hooks.test resolves to 100.64.0.9, a carrier-grade NAT address"),
    (["fd12::1"], "refused: host hooks.test resolves to fd12::1, a unique-local address"),
    (["::ffff:a00:1"],
     "refused: host hooks.test resolves to ::ffff:a00:1, a private address (IPv4-mapped 10.0.0.1)"),
    (["0.0.0.0"], "refused: host hooks.test resolves to 0.0.0.0, an unspecified address"),
    (["93.184.216.34", "10.0.0.7"], "refused: host hooks.test resolves to 10.0.0.7, a private address"),
])
def test_names_resolving_to_special_addresses_are_refused(receiver, connections, answers, reason):
    hooks = WebhookSender(timeout_seconds=5, secret=SECRET, resolver=resolver_for({"hooks.test": answers}))
    outcome = hooks.send(f"http://hooks.test:{receiver.port}/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=reason, refused=True)
    assert connections == [] and receiver.requests == []


@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
    ("2130706433", "refused: 2130706433 is 127.0.0.1, a loopback address"),
    ("[::1]", "refused: ::1 is a loopback address"),
    ("10.0.0.1", "refused: 10.0.0.1 is a private address"),
    ("169.254.169.254", "refused: 169.254.169.254 is a link-local address"),
    ("[fe80::1%25lo]", "refused: IPv6 zone ids are not allowed ('fe80::1%25lo')"),
])
def test_special_address_literals_are_refused(receiver, connections, host, reason):
    outcome = WebhookSender(timeout_seconds=5).send(f"http://{host}:{receiver.port}/cb", BODY,
                                                    delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=reason, refused=True)
    assert connections == [] and receiver.requests == []


def test_localhost_through_the_system_resolver_is_refused(receiver, connections):
    outcome = WebhookSender(timeout_seconds=5).send(f"http://localhost:{receiver.port}/cb", BODY,
                                                    delivery_id=DELIVERY)
    assert outcome.refused and not outcome.delivered
    assert re.fullmatch(r"refused: host localhost resolves to (127\.0\.0\.1|::1), a loopback address",
                        outcome.error)
    assert connections == [] and receiver.requests == []


@pytest.mark.parametrize("settings, host, reason", [
    ({"denied_hosts": ["hooks.test"]}, "hooks.test", "refused: host hooks.test is denied by configuration"),
    ({"denied_hosts": ["*.test"]}, "hooks.test", "refused: host hooks.test is denied by configuration"),
    ({"denied_hosts": ["127.0.0.0/8"]}, "hooks.test",
     "refused: host hooks.test resolves to 127.0.0.1, which is denied by configuration"),
    ({"denied_hosts": ["127.0.0.1"]}, "127.0.0.1", "refused: 127.0.0.1 is denied by configuration"),
    ({"only_hosts": ["partner.test"]}, "hooks.test",
     "refused: host hooks.test is not in the allow-list (fetch.only_hosts)"),
    ({"only_hosts": ["10.0.0.0/8"]}, "hooks.test",
     "refused: host hooks.test resolves to 127.0.0.1, which is not in the allow-list (fetch.only_hosts)"),
    ({"only_hosts": ["hooks.test"], "private_hosts_allowed": []}, "hooks.test",
     "refused: host hooks.test resolves to 127.0.0.1, a loopback address"),
])
def test_operator_lists_refuse(receiver, connections, settings, host, reason):
    """Denied hosts win even over allowed private networks; only_hosts opens no private address."""
    settings = {"allow_private_networks": "denied_hosts" in settings, **settings}
    hooks = sender(resolver=resolver_for({"hooks.test": ["127.0.0.1"]}), **settings)
    outcome = hooks.send(f"http://{host}:{receiver.port}/cb", BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=reason, refused=True)
    assert connections == [] and receiver.requests == []


@pytest.mark.parametrize("settings", [
    {"private_hosts_allowed": ["hooks.test"]}, {"private_hosts_allowed": ["*.test"]},
    {"private_hosts_allowed": ["127.0.0.0/8"]}, {"allow_private_networks": True},
    {"only_hosts": ["hooks.test"], "private_hosts_allowed": ["127.0.0.1"]},
])
def test_exemptions_let_a_private_callback_through(receiver, settings):
    hooks = WebhookSender(timeout_seconds=5, resolver=resolver_for({"hooks.test": ["127.0.0.1"]}), **settings)
    assert hooks.send(f"http://hooks.test:{receiver.port}/cb", BODY, delivery_id=DELIVERY).delivered
    assert len(receiver.requests) == 1


def test_dns_is_asked_once_and_the_checked_address_is_the_one_connected(receiver, connections, monkeypatch):
    """The system resolver would now say 127.0.0.2; the connection still goes to the checked answer."""
    calls = []
    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real_getaddrinfo(
        "127.0.0.2" if host == "rebind.test" else host, *a, **k))
    hooks = sender(resolver=resolver_for({"rebind.test": ["127.0.0.1"]}, calls))
    assert hooks.send(f"http://rebind.test:{receiver.port}/cb", BODY, delivery_id=DELIVERY).delivered
    assert calls == ["rebind.test"]
    assert connections == [("127.0.0.1", receiver.port)]


@pytest.mark.parametrize("url, reason", [
    ("ftp://hooks.test/cb", "unsupported URL scheme 'ftp'"),
    ("hooks.test/cb", "invalid URL: no scheme"),
    ("http:///cb", "invalid URL: no host name"),
    ("http://256.1.1.1/cb", "invalid IPv4 address '256.1.1.1'"),
])
def test_unusable_urls_are_refused_without_a_connection(connections, url, reason):
    outcome = sender().send(url, BODY, delivery_id=DELIVERY)
    assert outcome == Outcome(delivered=False, status=None, error=reason, refused=True)
    assert connections == []


# --- the secret stays secret ------------------------------------------------------------------

def test_the_secret_appears_in_no_outcome_log_or_repr(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    hooks = sender(secret=SECRET, resolver=resolver_for({"hooks.test": ["10.0.0.1"]}))
    receiver.answer(500, Answer(307, location="/x"), 200, Answer(hang_up="reset"))
    outcomes = [hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY) for _ in range(3)]
    outcomes.append(hooks.send(f"http://hooks.test:{receiver.port}/cb", BODY, delivery_id=DELIVERY))
    outcomes.append(hooks.send(receiver.url_for("/cb"), BODY, delivery_id=DELIVERY))
    assert [(o.delivered, o.refused) for o in outcomes] == [
        (False, False), (True, False), (False, False), (False, True), (True, False)]
    texts = [repr(o) for o in outcomes] + [repr(hooks)] + [r.getMessage() for r in caplog.records]
    assert caplog.records and all(SECRET not in text for text in texts)


def test_not_delivered_is_logged_at_info_without_the_path_or_query(receiver, caplog):
    caplog.set_level(logging.INFO, logger="uploader.webhook")
    receiver.answer(500)
    sender().send(receiver.url_for("/cb/token-abc?key=k-123"), BODY, delivery_id=DELIVERY)
    [record] = [r for r in caplog.records if r.name == "uploader.webhook"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (f"webhook {DELIVERY} (job.completed) to {receiver.url} not delivered: "
                                   "HTTP 500 from the callback")


# --- signatures -------------------------------------------------------------------------------

def test_sign_matches_an_independent_hmac():
    header = sign(SECRET, 1_700_000_000, BODY)
    assert header.startswith("t=1700000000,v1=")
    assert independent_check(header, SECRET, BODY) == 1_700_000_000


def test_verify_accepts_a_good_header():
    header = sign(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, now=1_700_000_000)
    assert verify(SECRET, header, BODY, now=1_700_000_300)  # the edge of the default tolerance
    assert verify(SECRET, header, BODY, now=1_699_999_700)
    now = int(time.time())
    assert verify(SECRET, sign(SECRET, now, BODY), BODY)  # against the real clock


def test_verify_accepts_any_of_several_v1_and_ignores_other_schemes():
    good = sign(SECRET, 1_700_000_000, BODY).split(",")[1]
    assert verify(SECRET, f"t=1700000000,v1={'0' * 64},{good},v0=abc", BODY, now=1_700_000_000)
    assert verify(SECRET, f" {good} , t=1700000000", BODY, now=1_700_000_000)
    assert verify(SECRET, f"t=1700000000,{good.upper().replace('V1', 'v1')}", BODY, now=1_700_000_000)


def test_verify_rejects_a_bad_mac():
    header = sign(SECRET, 1_700_000_000, BODY)
    at = 1_700_000_000
    assert not verify("another-secret", header, BODY, now=at)
    assert not verify(SECRET, header, BODY + b" ", now=at)
    assert not verify(SECRET, header[:-1] + ("0" if header[-1] != "0" else "1"), BODY, now=at)
    other_time = sign(SECRET, at + 1, BODY).split(",")[1]
    assert not verify(SECRET, f"t={at},{other_time}", BODY, now=at)  # the MAC covers the time


@pytest.mark.parametrize("now", [1_700_000_301, 1_699_999_699, 0, 4_000_000_000])
def test_verify_rejects_a_stale_or_future_timestamp(now):
    assert not verify(SECRET, sign(SECRET, 1_700_000_000, BODY), BODY, now=now)


def test_verify_tolerance_is_configurable():
    header = sign(SECRET, 1_700_000_000, BODY)
    assert not verify(SECRET, header, BODY, now=1_700_000_061, tolerance_seconds=60)
    assert verify(SECRET, header, BODY, now=1_700_003_000, tolerance_seconds=3600)


@pytest.mark.parametrize("header", [
    "", "garbage", "t=1700000000", "v1=" + "a" * 64, "t=,v1=" + "a" * 64, "t=-5,v1=" + "a" * 64,
    "t=1e9,v1=" + "a" * 64, "t=1700000000,v1=" + "a" * 63, "t=1700000000,v1=" + "g" * 64,
    "t=1700000000,t=1700000000,v1=" + "a" * 64, "t=1700000000;v1=" + "a" * 64,
    "t=\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660,v1=" + "a" * 64,
    "t=1700000000,v1=" + "\u00e9" * 64, None, b"t=1700000000",
])
def test_verify_rejects_malformed_headers(header):
    assert verify(SECRET, header, BODY, now=1_700_000_000) is False


def test_sign_and_verify_need_a_secret():
    with pytest.raises(ValueError):
        sign("", 1_700_000_000, BODY)
    with pytest.raises(ValueError):
        verify("", "t=1,v1=" + "a" * 64, BODY)


@pytest.mark.parametrize("timestamp", [-1, 1.5, True, "1700000000"])
def test_sign_needs_whole_unix_seconds(timestamp):
    with pytest.raises(ValueError, match="^the timestamp must be whole non-negative Unix seconds$"):
        sign(SECRET, timestamp, BODY)


# --- backoff ----------------------------------------------------------------------------------

class RecordingRandom:
    def __init__(self):
        self.calls = []

    def uniform(self, a, b):
        self.calls.append((a, b))
        return b


@pytest.mark.parametrize("attempt, ceiling", [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (7, 60.0),
                                              (10_000, 60.0)])
def test_backoff_is_full_jitter_under_an_exponential_ceiling(attempt, ceiling):
    rng = RecordingRandom()
    assert backoff_seconds(attempt, base=2.0, maximum=60.0, rng=rng) == ceiling
    assert rng.calls == [(0.0, ceiling)]


def test_backoff_stays_within_its_bounds_with_a_real_random():
    rng = random.Random(11)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        waits = [backoff_seconds(attempt, base=0.5, maximum=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # jitter spreads over the whole range


def test_backoff_with_the_module_random_and_odd_inputs():
    assert 0.0 <= backoff_seconds(3, base=1.0, maximum=60.0) <= 4.0
    assert backoff_seconds(50, base=0.0, maximum=60.0, rng=RecordingRandom()) == 0.0
    with pytest.raises(ValueError):
        backoff_seconds(0, base=1.0, maximum=60.0)
    with pytest.raises(ValueError):
        backoff_seconds(1, base=-1.0, maximum=60.0)


# --- callback URL validation ------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://hooks.example.com/cb", "http://hooks.example.com:8080/cb?job=1&sig=a%2Fb",
    "https://[2001:db8::1]/cb", "https://10.0.0.1/cb", "https://b\u00fccher.example/cb",
    "https://example.com/" + "a" * (2048 - 20),
])
def test_acceptable_callback_urls(url):
    assert callback_url_problem(url) == ""


@pytest.mark.parametrize("url, problem", [
    (None, "must be a string, got null"),
    (42, "must be a string, got a number"),
    (["https://x.example/"], "must be a string, got a list"),
    ("https://example.com/" + "a" * 2029, "is longer than 2048 characters"),
    ("ftp://example.com/cb", '"ftp://example.com/cb" is not an absolute http or https URL'),
    ("/relative/cb", '"/relative/cb" is not an absolute http or https URL'),
    ("https:///cb", '"https:///cb" has no host'),
    ("https://user:pw@example.com/cb",
     '"https://***@example.com/cb" contains user info (user:password@); credentials are not accepted'),
    ("https://example.com/a b",
     '"https://example.com/a b" contains a space or control character: a space at position 21'),
    ("https://example.com/a\nb", '"https://example.com/a\\nb" contains a space or control '
                                 'character: a control character (U+000A) at position 21'),
    ("https://example.com:99999/",
     '"https://example.com:99999/" is not a valid URL: Port out of range 0-65535'),
    ("https://256.1.1.1/cb",
     "\"https://256.1.1.1/cb\" has an invalid host: invalid IPv4 address '256.1.1.1'"),
    ("https://exa!mple.com/cb",
     "\"https://exa!mple.com/cb\" has an invalid host: invalid host name 'exa!mple.com'"),
])
def test_unacceptable_callback_urls(url, problem):
    assert callback_url_problem(url) == problem
