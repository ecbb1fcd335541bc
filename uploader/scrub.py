"""Text made fit for an answer or a log line: no credentials, and one line stays one line.

A client chooses URLs and request paths, and they reach answers and logs. Two things in
them must not arrive as given:

- the userinfo of a URL (``http://user:password@host/``): a password, or a token used
  as a user name, shown as ``***`` (``http://***@host/``); a database URL keeps its user,
  a name an operator needs to see (``postgresql://uploader:***@db/``);
- control characters (C0, DEL, C1) and the Unicode line and paragraph separators
  (U+2028, U+2029): written raw, one log line becomes several, and a reader of the log
  can be shown lines nobody logged. They are escaped as ``\\x85``, ``\\u2028``, ``\\n``.
"""
import re

# Characters that may split a line or steer a terminal; refused in URLs, escaped in logs.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# ``scheme://userinfo@``: the userinfo runs to the last "@" before the path.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
_DATABASE_SCHEMES = ("postgresql://", "postgres://")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def redact_userinfo(text: str) -> str:
    """``text`` with the userinfo of every URL in it shown as ``***``."""
    if "@" not in text:  # nearly every line: no work
        return text
    return _USERINFO.sub(_redacted, text)


def _redacted(match) -> str:
    scheme = match.group("scheme")
    if scheme.lower() in _DATABASE_SCHEMES:
        user, colon, _password = match.group("userinfo").partition(":")
        return f"{scheme}{user}{':***' if colon else ''}@"
    return f"{scheme}***@"


def escape_controls(text: str) -> str:
    """``text`` with every control character and line separator escaped."""
    return CONTROL.sub(_escape, text)


def _escape(match) -> str:
    char = match.group(0)
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def control_problem(text: str) -> str:
    """What control character or line separator ``text`` holds, as a reason, or ''."""
    found = CONTROL.search(text)
    if found is None:
        return ""
    return f"contains {describe_char(found.group(0))} at position {found.start()}"


def describe_char(char: str) -> str:
    """``char`` named for a reason: "a line separator (U+2028)"."""
    kind = {" ": "a space", "\u2028": "a line separator",
            "\u2029": "a paragraph separator"}.get(char, "a control character")
    return kind if char == " " else f"{kind} (U+{ord(char):04X})"


def for_log(text: str) -> str:
    """One line, without credentials: what a log line may hold of ``text``."""
    return escape_controls(redact_userinfo(text))
