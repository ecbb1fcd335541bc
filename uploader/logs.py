"""Logging set-up shared by the front end and the worker processes.

Every line carries the process id, so the interleaved output of a pool can be told
apart. ``json`` emits one object per line for log shippers.
"""
import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d %(name)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, message and any ``extra`` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once per process (workers call it after spawning)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado logs every request at INFO; keep that for debugging only.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
