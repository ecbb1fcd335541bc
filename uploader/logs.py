"""Logging set-up shared by the front end and the worker processes.

Every line carries the process id, so the interleaved output of a pool can be told
apart, and its time in ISO 8601 UTC with milliseconds (``2026-11-29T21:41:15.753Z``),
the format of the API's timestamps. ``json`` emits one object per line for log shippers.

Both formats scrub every record (``scrub``): the userinfo of a URL is shown as ``***``,
and in text a control character or line separator in a message (request paths and URLs
included) or a traceback's line is escaped, so one record stays one line (JSON escapes
them itself).
"""
import json
import logging
import sys

from .jobs import format_timestamp
from .scrub import for_log, redact_userinfo

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"


class UtcFormatter(logging.Formatter):
    """A formatter whose ``asctime`` is UTC ``YYYY-MM-DDTHH:mm:ss.sssZ``, whatever the locale."""

    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        return format_timestamp(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return for_log(super().formatMessage(record))

    def formatException(self, exc_info) -> str:
        return _each_line(super().formatException(exc_info))

    def formatStack(self, stack_info: str) -> str:
        return _each_line(super().formatStack(stack_info))


def _each_line(text: str) -> str:
    """A traceback scrubbed line by line: its own line breaks are kept."""
    return "\n".join(for_log(line) for line in text.split("\n"))


class JsonFormatter(UtcFormatter):
    """One JSON object per line: time, level, pid, logger, message and any ``extra`` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": redact_userinfo(record.getMessage()),
        }
        entry.update({k: redact_userinfo(v) if isinstance(v, str) else v
                      for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["traceback"] = redact_userinfo(  # not escaped: JSON does that itself
                logging.Formatter.formatException(self, record.exc_info))
        return json.dumps(entry, default=str)  # escapes every control character itself


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once per process (workers call it after spawning)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else UtcFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The front end writes its own access line (logger uploader.access, see access.py);
    # Tornado's would say it again, so it stays quiet unless something goes to it directly.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # The pool would log every failed reconnection of every process while the database is
    # down; the store and the shared state say it once each, in a line of their own.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
