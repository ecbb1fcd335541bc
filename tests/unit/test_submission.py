"""Validation of POST bodies: each bad input names what is wrong."""
import json

import pytest
from hypothesis import assume, given, settings, strategies as st

from uploader import submission
from uploader.submission import SubmissionError, normalize_url, parse_submission, url_problem


def body(value) -> bytes:
    return json.dumps(value).encode()


def test_distinct_urls_in_first_seen_order():
    urls = ["https://a.example/1.png", "http://b.example/2.jpg", "https://a.example/1.png"]
    assert parse_submission(body({"urls": urls}), max_urls=10).urls == urls[:2]


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
    assert parse_submission(body({"urls": urls}), max_urls=1).urls == urls[:1]


def test_a_body_nested_too_deeply_is_a_400():
    for raw in (b"[" * 100_000, b'{"urls": ' + b"[" * 100_000, b'{"a":' * 50_000):
        with pytest.raises(SubmissionError) as caught:
            parse_submission(raw, max_urls=10)
        assert caught.value.status == 400
        assert "JSON nested too deeply" in str(caught.value)


def test_moderate_nesting_is_judged_as_usual():
    with pytest.raises(SubmissionError, match=r"urls\[0\] must be a string, got a list"):
        parse_submission(body({"urls": [[[[["x"]]]]]}), max_urls=10)


# --- duplicates: one resource, many spellings --------------------------------------------------

@pytest.mark.parametrize("spelling, normal", [
    ("HTTP://Host.Example/a.png", "http://host.example/a.png"),
    ("http://host.example/a.png#x", "http://host.example/a.png"),
    ("http://host.example/a.png#", "http://host.example/a.png"),
    ("http://host.example:80/a.png", "http://host.example/a.png"),
    ("https://host.example:443/a.png", "https://host.example/a.png"),
    ("http://host.example:0080/a.png", "http://host.example/a.png"),
    ("http://host.example:/a.png", "http://host.example/a.png"),
    ("http://host.example", "http://host.example/"),
    ("http://host.example/./a.png", "http://host.example/a.png"),
    ("http://host.example/b/../a.png", "http://host.example/a.png"),
    ("http://host.example/../../a.png", "http://host.example/a.png"),
    ("http://host.example/b/c/./../..", "http://host.example/"),
    ("http://host.example/b/.", "http://host.example/b/"),
    ("http://host.example/%2E%2e/b/%2e/a.png", "http://host.example/b/a.png"),
    ("http://host.example/%61.png", "http://host.example/a.png"),
    ("http://host.example/%7e%2D%2E%5F%30", "http://host.example/~-._0"),
    ("http://host.example/a%2fb%3f", "http://host.example/a%2Fb%3F"),
    ("http://host.example/a.png?x=%2a%41%62&y=%e2%82%ac", "http://host.example/a.png?x=%2AAb&y=%E2%82%AC"),
    ("http://host.example/a.png?", "http://host.example/a.png"),
    ("http://host.example/\u00e9t\u00e9.png", "http://host.example/%C3%A9t%C3%A9.png"),
    ("http://host.example/a.png?q=\u20ac", "http://host.example/a.png?q=%E2%82%AC"),
    ("http://host.example/a\"b<c>.png", "http://host.example/a%22b%3Cc%3E.png"),
    ("http://B\u00fccher.Example/a.png", "http://xn--bcher-kva.example/a.png"),
    ("http://[::1]:80/a.png", "http://[::1]/a.png"),
    ("http://[2001:DB8::A]:8080/a.png", "http://[2001:db8::a]:8080/a.png"),
    ("HTTP://127.0.0.1:8080/sized/20.jpg?n=1", "http://127.0.0.1:8080/sized/20.jpg?n=1"),
])
def test_normalize_url(spelling, normal):
    assert normalize_url(spelling) == normal
    assert normalize_url(normal) == normal


@pytest.mark.parametrize("one, other", [
    ("http://host.example/a.png?size=1", "http://host.example/a.png?size=2"),
    ("http://host.example/a.png?a=1&b=2", "http://host.example/a.png?b=2&a=1"),
    ("http://host.example/a.png?q=a+b", "http://host.example/a.png?q=a%20b"),
    ("http://host.example/a.png?q=a%26b", "http://host.example/a.png?q=a&b"),
    ("http://host.example/a.png?q=%2B", "http://host.example/a.png?q=+"),
    ("http://host.example/A.png", "http://host.example/a.png"),
    ("http://host.example/a%2Fb.png", "http://host.example/a/b.png"),
    ("http://host.example/a/", "http://host.example/a"),
    ("http://host.example/a//b.png", "http://host.example/a/b.png"),
    ("http://host.example/a.png", "https://host.example/a.png"),
    ("http://host.example/a.png", "http://host.example:8080/a.png"),
    ("https://host.example/a.png", "https://host.example:80/a.png"),
    ("http://host.example/a.png", "http://www.host.example/a.png"),
    ("http://host.example/..a.png", "http://host.example/a.png"),
])
def test_distinct_resources_stay_distinct(one, other):
    assert normalize_url(one) != normalize_url(other)


def test_duplicates_keep_the_first_spelling_in_first_seen_order():
    urls = ["HTTP://Host.example/a.png", "https://b.example/1.jpg", "http://host.example:80/./a.png#top",
            "http://host.example/%61.png", "https://b.example/1.jpg?", "http://host.example/A.png"]
    assert parse_submission(body({"urls": urls}), max_urls=10).urls == [
        "HTTP://Host.example/a.png", "https://b.example/1.jpg", "http://host.example/A.png"]


def test_spellings_of_one_url_count_once_against_the_limit():
    urls = ["http://host.example/a.png", "HTTP://host.example/a.png", "http://host.example:80/a.png"]
    assert parse_submission(body({"urls": urls}), max_urls=1).urls == urls[:1]


URL_TEXT = st.text(alphabet="aAzZ09-._~!$&'()*+,;=:@/?%#.\u00e9", max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["http", "HTTPS"]), st.sampled_from(["host.example", "Host.example", "10.0.0.1"]),
       st.sampled_from(["", ":80", ":443", ":8080"]), URL_TEXT)
def test_normalizing_is_idempotent_and_the_shortcut_agrees(scheme, host, port, rest):
    url = f"{scheme}://{host}{port}/{rest}"
    assume(not url_problem(url))
    once = normalize_url(url)
    assert normalize_url(once) == once
    assert submission._normalize(url) == once
    assert not url_problem(once)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["http", "https", "HTTP", "ftp"]), st.sampled_from(["host.example", "h", "u@h", ""]),
       st.sampled_from(["", ":80", ":0", ":8080", ":65535", ":65536", ":99999"]),
       st.text(alphabet="az09-._~!$&'()*+,;=:@/?%# \x00\u00e9", max_size=20))
def test_the_shortcut_accepts_only_what_the_full_check_accepts(scheme, host, port, rest):
    url = f"{scheme}://{host}{port}/{rest}"
    assert url_problem(url) == submission._url_problem(url)


def test_a_callback_url_is_taken_and_checked_like_a_source():
    taken = parse_submission(body({"urls": ["https://a.example/x.png"],
                                   "callback_url": "https://hooks.example/done"}), max_urls=10)
    assert taken.callback_url == "https://hooks.example/done"
    assert parse_submission(body({"urls": ["https://a.example/x.png"]}), max_urls=10).callback_url is None
    for bad, fragment in [("ftp://hooks.example/x", "absolute http or https"),
                          ("https://user:pw@hooks.example/", "user info"),
                          ("https://hooks.example/" + "x" * 2048, "longer than 2048"),
                          (42, "must be a string")]:
        with pytest.raises(SubmissionError, match=fragment) as refused:
            parse_submission(body({"urls": ["https://a.example/x.png"], "callback_url": bad}),
                             max_urls=10)
        assert refused.value.status == 400 and str(refused.value).startswith("callback_url ")


def test_an_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(SubmissionError, match="unknown key \"callback\" \\(did you mean 'callback_url'\\?\\)"):
        parse_submission(body({"urls": ["https://a.example/x.png"], "callback": "https://h/"}),
                         max_urls=10)


@pytest.mark.parametrize("url, what, where", [
    ("https://a.example/x\u0085y.png", "a control character (U+0085)", 19),  # NEL, C1
    ("https://a.example/\u009bx.png", "a control character (U+009B)", 18),  # CSI, C1
    ("https://a.example/x\u2028y.png", "a line separator (U+2028)", 19),
    ("https://a.example/x.png?\u2029", "a paragraph separator (U+2029)", 24),
    ("https://a.example/\x7f", "a control character (U+007F)", 18),
])
def test_line_breaking_and_control_characters_are_refused_with_their_name(url, what, where):
    problem = url_problem(url)
    assert problem.endswith(f"contains a space or control character: {what} at position {where}")
    assert len(problem.splitlines()) == 1  # the URL is shown JSON-escaped


def test_a_refused_url_with_user_info_is_shown_without_it():
    with pytest.raises(SubmissionError) as caught:
        parse_submission(body({"urls": ["https://ann:s3cret@a.example/x.png"]}), max_urls=3)
    assert "s3cret" not in str(caught.value) and "ann" not in str(caught.value)
    assert str(caught.value).startswith('urls[0] "https://***@a.example/x.png" contains user info')
