"""Validation of a job submission: the POST body in, a clean list of distinct URLs out.

Every rejection names the bad entry, so a client can fix its request; nothing here
touches the network (addresses are judged when a URL is fetched, not when submitted).
"""
import json
import re
from typing import List
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class SubmissionError(Exception):
    """A bad submission; ``status`` is the HTTP status to answer (400 or 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_submission(body: bytes, *, max_urls: int) -> List[str]:
    """The distinct URLs of a POST body, in first-seen order, or a SubmissionError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SubmissionError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser recurses per level: '[' * 100000 would be a 500
        raise SubmissionError(400, 'JSON nested too deeply: a job is {"urls": ["https://..."]}') \
            from None
    if not isinstance(data, dict):
        raise SubmissionError(400, 'body must be a JSON object like {"urls": ["https://..."]}')
    if "urls" not in data:
        raise SubmissionError(400, "missing key 'urls'")
    urls = data["urls"]
    if not isinstance(urls, list):
        raise SubmissionError(400, f"'urls' must be a list, got {_json_type(urls)}")
    if not urls:
        raise SubmissionError(400, "'urls' is empty: give at least one URL")
    distinct = list(dict.fromkeys(u for u in urls if isinstance(u, str)))
    for index, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            raise SubmissionError(400, f"urls[{index}] {problem}")
    if len(distinct) > max_urls:
        raise SubmissionError(
            413, f"too many URLs: {len(distinct)} distinct, at most {max_urls} per job")
    return distinct


def url_problem(url) -> str:
    """Why ``url`` is not acceptable, or '' when it is."""
    if not isinstance(url, str):
        return f"must be a string, got {_json_type(url)}"
    shown = json.dumps(url if len(url) <= 100 else url[:100] + "...")
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\\ud800"); no store takes it
        return f"{shown} is not valid Unicode (it holds a lone surrogate)"
    if _CONTROL.search(url):
        return f"{shown} contains a space or control character"
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


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
