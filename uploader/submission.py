"""Validation of a job submission: the POST body in, a clean list of distinct URLs (and the
optional completion callback) out.

Every rejection names the bad entry, so a client can fix its request; nothing here
touches the network (addresses are judged when a URL is fetched, not when submitted).
"""
import difflib
import json
import re
from dataclasses import dataclass
from typing import List, Optional
from urllib.parse import quote, urlsplit

from .errors import FetchError
from .netpolicy import normalize_host
from .scrub import describe_char, redact_userinfo

MAX_URL_LENGTH = 2048
_SPACE_OR_CONTROL = re.compile("[ \x00-\x1f\x7f-\x9f\u2028\u2029]")  # scrub.CONTROL and " "


class SubmissionError(Exception):
    """A bad submission; ``status`` is the HTTP status to answer (400 or 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


KEYS = ("urls", "callback_url")


@dataclass(frozen=True)
class Submission:
    urls: List[str]  # distinct, in first-seen order, each in the client's first spelling
    callback_url: Optional[str] = None  # POSTed the job document when the job completes


def parse_submission(body: bytes, *, max_urls: int) -> Submission:
    """The job a POST body asks for, or a SubmissionError naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SubmissionError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser recurses per level: '[' * 100000 would be a 500
        raise SubmissionError(400, 'JSON nested too deeply: a job is {"urls": ["https://..."]}') \
            from None
    if not isinstance(data, dict):
        raise SubmissionError(400, 'body must be a JSON object like {"urls": ["https://..."]}')
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SubmissionError(400, f"unknown key {json.dumps(key)}{hint}; a job takes "
                                       "'urls' and optionally 'callback_url'")
    if "urls" not in data:
        raise SubmissionError(400, "missing key 'urls'")
    callback_url = data.get("callback_url")
    if "callback_url" in data:  # null too: leave the key out for no callback
        problem = callback_url_problem(callback_url)
        if problem:
            raise SubmissionError(400, f"callback_url {problem}")
    urls = data["urls"]
    if not isinstance(urls, list):
        raise SubmissionError(400, f"'urls' must be a list, got {_json_type(urls)}")
    if not urls:
        raise SubmissionError(400, "'urls' is empty: give at least one URL")
    for index, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            raise SubmissionError(400, f"urls[{index}] {problem}")
    first_spelling = {}
    for url in urls:
        first_spelling.setdefault(normalize_url(url), url)
    distinct = list(first_spelling.values())
    if len(distinct) > max_urls:
        raise SubmissionError(
            413, f"too many URLs: {len(distinct)} distinct, at most {max_urls} per job")
    return Submission(distinct, callback_url)


def url_problem(url) -> str:
    """Why ``url`` is not acceptable, or '' when it is."""
    if isinstance(url, str) and len(url) <= MAX_URL_LENGTH:
        plain = _ALREADY_NORMAL.fullmatch(url)
        if plain and int(plain.group("port") or 0) <= 65535:  # most URLs: a tenth of the work
            return ""
    return _url_problem(url)


def _url_problem(url) -> str:
    if not isinstance(url, str):
        return f"must be a string, got {_json_type(url)}"
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    shown = _shown(url)
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\\ud800"); no store takes it
        return f"{shown} is not valid Unicode (it holds a lone surrogate)"
    found = _SPACE_OR_CONTROL.search(url)  # C0, C1, U+2028/9: each would split a log line
    if found:
        return (f"{shown} contains a space or control character: "
                f"{describe_char(found.group(0))} at position {found.start()}")
    try:
        parts = urlsplit(url)
        parts.port  # raises on a bad port
    except ValueError as exc:
        return f"{shown} is not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{shown} is not an absolute http or https URL"
    if not parts.hostname:
        return f"{shown} has no host"
    if parts.username is not None or parts.password is not None:
        return f"{shown} contains user info (user:password@); credentials are not accepted"
    return ""


# A URL every step of normalize_url leaves alone, and url_problem accepts when its port is
# at most 65535: lower-case http(s) scheme and host, no port 80 or 443, a path of plain
# characters without dot segments, no escapes, no fragment.
_ALREADY_NORMAL = re.compile(r"https?://[a-z0-9-]+(?:\.[a-z0-9-]+)*"
                             r"(?::(?!(?:80|443)(?![0-9]))(?P<port>[1-9][0-9]{0,4}))?"
                             r"(?:/(?!\.\.?(?:[/?]|$))[A-Za-z0-9_~!$&'()*+,;=:@.-]*)+"
                             r"(?:\?[A-Za-z0-9_~!$&'()*+,;=:@./?-]+)?")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEPT_AS_IS = "!$%&'()*+,/:;=?@[]~"  # reserved characters and escapes; the fetcher sends them so


def normalize_url(url: str) -> str:
    """The one spelling of the resource ``url`` names, to tell duplicates apart (RFC 3986 6.2).

    Scheme and host are lower-cased (a non-ASCII host becomes its IDNA form), the
    scheme's default port is dropped, as is the fragment (never sent to the server) and
    an empty query; an empty path becomes "/"; "." and ".." segments are resolved;
    characters a URI cannot hold are %-encoded as UTF-8, as the fetcher sends them;
    escapes of unreserved characters (``%61``, ``%7E``) are decoded and every other
    escape's hex is upper-cased (``%2f`` -> ``%2F``). Path case, the query's order and
    its reserved characters (``&``, ``=``, ``+``, ``%26``) are kept: they may change
    what the server answers. ``url`` must have passed ``url_problem``.
    """
    if _ALREADY_NORMAL.fullmatch(url):  # most URLs: a tenth of the work
        return url
    return _normalize(url)


def _normalize(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.netloc.endswith("]"):  # an IPv6 literal without a port
        host, port = parts.netloc, ""
    else:
        host, _, port = parts.netloc.rpartition(":") if ":" in parts.netloc else (parts.netloc, "", "")
    host = host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # the fetcher refuses it; the spelling still names one URL
    if port and int(port) != _DEFAULT_PORTS[scheme]:
        host += f":{int(port)}"
    path = _remove_dot_segments(_normalize_escapes(parts.path or "/"))
    query = _normalize_escapes(parts.query)
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def _normalize_escapes(text: str) -> str:
    """%-encode what a URI cannot hold; decode unreserved escapes, upper-case the others."""
    def fix(match):
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _ESCAPE.sub(fix, quote(text, safe=_KEPT_AS_IS))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: "/a/./b/../c/." -> "/a/c/"."""
    segments = path.split("/")[1:]
    kept = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
            continue
        if last:
            kept.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(kept)


def callback_url_problem(url: object) -> str:
    """Why ``url`` is not acceptable as a callback URL, or '' when it is.

    The rules of a job's image URLs (``submission.url_problem``: a string, an absolute
    http or https URL with a host, at most 2,048 characters, no spaces or control
    characters, no user:password@), and a host that can be a host at all. Addresses are
    judged when the callback is sent, not here.
    """
    problem = url_problem(url)
    if problem:
        return problem
    try:
        normalize_host(urlsplit(url).hostname)
    except FetchError as exc:
        return f"{_shown(url)} has an invalid host: {exc}"
    return ""


def _shown(url: str) -> str:
    """``url`` quoted for a reason: cut at 100 characters, its userinfo as ``***``, JSON
    escapes for anything that is not printable ASCII."""
    url = redact_userinfo(url)
    return json.dumps(url if len(url) <= 100 else url[:100] + "...")


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
