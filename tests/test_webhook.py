"""The webhook helpers: signatures, backoff and the callback URL check."""

import hashlib
import hmac
import json
import random
import re
import time

import pytest

from uploader.webhook import backoff_seconds, callback_url_problem, sign, verify

SECRET = "whsec-test-7f3a9c1e-not-for-production"
BODY = json.dumps({"id": "5f6c1c4a", "status": "complete",
                   "uploaded": {"complete": ["https://i.imgur.com/a.png"]},
                   "note": "caf\u00e9 \u2603"}, ensure_ascii=False).encode("utf-8")


def independent_check(header, secret, body):
    """Check a signature header with hmac directly, not with the module's code; return t."""
    match = re.fullmatch(r"t=([0-9]+),v1=([0-9a-f]{64})", header)
    assert match, header
    expected = hmac.new(secret.encode("utf-8"), match.group(1).encode("ascii") + b"." + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(match.group(2), expected)
    return int(match.group(1))


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
     '"https://user:pw@example.com/cb" contains user info (user:password@); credentials are not accepted'),
    ("https://example.com/a b", '"https://example.com/a b" contains a space or control character'),
    ("https://example.com/a\nb", '"https://example.com/a\\nb" contains a space or control character'),
    ("https://example.com:99999/",
     '"https://example.com:99999/" is not a valid URL: Port out of range 0-65535'),
    ("https://256.1.1.1/cb",
     "\"https://256.1.1.1/cb\" has an invalid host: invalid IPv4 address '256.1.1.1'"),
    ("https://exa!mple.com/cb",
     "\"https://exa!mple.com/cb\" has an invalid host: invalid host name 'exa!mple.com'"),
])
def test_unacceptable_callback_urls(url, problem):
    assert callback_url_problem(url) == problem
