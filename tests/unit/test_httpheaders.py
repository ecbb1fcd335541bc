"""The workers' header parser (``httpheaders``) gives what http.client's own gives, for
any block of header lines: well-formed, folded, malformed, with stray carriage returns."""
import email.parser
import http.client
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from uploader import httpheaders

STDLIB = http.client.parse_headers  # captured before anything could install ours

LATIN_1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\n")
NAMES = st.sampled_from(["Content-Type", "Content-Length", "X-RateLimit-UserRemaining",
                         "location", "From", "Set-Cookie"]) | st.text(LATIN_1, max_size=8)
VALUES = st.sampled_from(["", "200", "image/png", "a b  ", "\tx"]) | st.text(LATIN_1, max_size=12)
LINES = st.one_of(
    st.builds(lambda name, gap, value: f"{name}:{gap}{value}", NAMES,
              st.sampled_from(["", " ", "  ", "\t"]), VALUES),  # most are plain headers
    st.builds(lambda fold, value: fold + value, st.sampled_from([" ", "\t"]), VALUES),
    st.sampled_from(["From someone@example", ":no name", "no colon at all"]),
    st.text(LATIN_1, max_size=12))
ENDINGS = st.sampled_from(["\r\n", "\n", "\r\r\n"])


def parse(parser, raw: bytes):
    fp = io.BytesIO(raw)
    message = parser(fp)
    return (message.items(), message.get_payload(), [type(d) for d in message.defects],
            message.get_unixfrom(), fp.tell())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(LINES, ENDINGS), max_size=12), st.sampled_from(["\r\n", "\n", ""]))
def test_any_header_block_parses_as_the_stdlib_parses_it(lines, end):
    raw = ("".join(line + ending for line, ending in lines) + end).encode("iso-8859-1")
    raw += b"the body, never read" if end else b""
    assert parse(httpheaders.parse_headers, raw) == parse(STDLIB, raw)


def test_imgurs_headers_take_the_fast_way_and_keep_order_and_case(monkeypatch):
    def stdlib_parser(*args, **kwargs):
        raise AssertionError("well-formed headers went to the stdlib's parser")
    monkeypatch.setattr(email.parser, "Parser", stdlib_parser)
    raw = (b"Content-Type: application/json\r\nX-RateLimit-UserRemaining: 480\r\n"
           b"x-ratelimit-userreset:3600\r\nSet-Cookie: a=1\r\nSet-Cookie:  b=2 \r\n\r\nbody")
    fp = io.BytesIO(raw)
    message = httpheaders.parse_headers(fp)
    assert message.items() == [("Content-Type", "application/json"),
                               ("X-RateLimit-UserRemaining", "480"),
                               ("x-ratelimit-userreset", "3600"), ("Set-Cookie", "a=1"),
                               ("Set-Cookie", "b=2 ")]
    assert message["X-RATELIMIT-USERRESET"] == "3600"
    assert message.get_all("set-cookie") == ["a=1", "b=2 "]
    assert fp.read() == b"body"  # not a byte of the body taken


def test_install_puts_it_in_http_clients_place(monkeypatch):
    monkeypatch.setattr(http.client, "parse_headers", STDLIB)  # put back after the test
    httpheaders.install()
    assert http.client.parse_headers is httpheaders.parse_headers
