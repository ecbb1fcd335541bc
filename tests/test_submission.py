"""Validation of POST bodies: each bad input names what is wrong."""
import json

import pytest

from uploader.submission import SubmissionError, parse_submission


def body(value) -> bytes:
    return json.dumps(value).encode()


def test_distinct_urls_in_first_seen_order():
    urls = ["https://a.example/1.png", "http://b.example/2.jpg", "https://a.example/1.png"]
    assert parse_submission(body({"urls": urls}), max_urls=10) == urls[:2]


@pytest.mark.parametrize("raw, status, fragment", [
    (b"not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (body(["https://a.example/x.png"]), 400, "JSON object"),
    (body({}), 400, "missing key 'urls'"),
    (body({"urls": "https://a.example/x.png"}), 400, "must be a list, got a string"),
    (body({"urls": []}), 400, "is empty"),
    (body({"urls": ["https://a.example/x.png", 7]}), 400, "urls[1] must be a string, got a number"),
    (body({"urls": [None]}), 400, "urls[0] must be a string, got null"),
    (body({"urls": ["ftp://a.example/x.png"]}), 400, "urls[0] \"ftp://a.example/x.png\" is not an absolute http"),
    (body({"urls": ["/relative/x.png"]}), 400, "is not an absolute http"),
    (body({"urls": ["https:///x.png"]}), 400, "has no host"),
    (body({"urls": ["https://a.example:99999/x.png"]}), 400, "not a valid URL"),
    (body({"urls": ["https://a.example/x y.png"]}), 400, "space or control character"),
    (body({"urls": ["https://a.example/\x00.png"]}), 400, "control character"),
    (body({"urls": ["https://user:pw@a.example/x.png"]}), 400, "user info"),
    (body({"urls": ["https://a.example/" + "x" * 2100]}), 400, "longer than 2048"),
    (body({"urls": [f"https://a.example/{i}.png" for i in range(4)]}), 413, "at most 3 per job"),
])
def test_bad_submissions_are_refused_with_a_reason(raw, status, fragment):
    with pytest.raises(SubmissionError) as caught:
        parse_submission(raw, max_urls=3)
    assert caught.value.status == status
    assert fragment in str(caught.value)


def test_duplicates_do_not_count_against_the_limit():
    urls = ["https://a.example/x.png"] * 5
    assert parse_submission(body({"urls": urls}), max_urls=1) == urls[:1]


def test_a_body_nested_too_deeply_is_a_400():
    for raw in (b"[" * 100_000, b'{"urls": ' + b"[" * 100_000, b'{"a":' * 50_000):
        with pytest.raises(SubmissionError) as caught:
            parse_submission(raw, max_urls=10)
        assert caught.value.status == 400
        assert "JSON nested too deeply" in str(caught.value)


def test_moderate_nesting_is_judged_as_usual():
    with pytest.raises(SubmissionError, match=r"urls\[0\] must be a string, got a list"):
        parse_submission(body({"urls": [[[[["x"]]]]]}), max_urls=10)

