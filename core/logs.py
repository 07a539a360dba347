"""Logging setup for the entry points, with the API key scrubbed from every record.

Library modules only call ``logging.getLogger(__name__)``; ``setup_logging``
is called once by the command line. The redacting filter is a second line of
defence: no code formats the key into a message on purpose.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every log record from now on.

    Values under 8 characters are not real keys (WaveSpeed keys are long) and
    scrubbing them would garble ordinary words; no code logs the key anyway.
    """
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str, secret: str | None = None) -> str:
    """``text`` without any registered secret, nor ``secret`` (a key in hand, any length).

    The one key scrubber: log records, JSON log lines and the service client's
    error messages all go through it.
    """
    for value in (*_SECRETS, secret):
        if value and value in text:
            text = text.replace(value, REDACTED)
    return text


#: Characters that could start a new line, rewrite the terminal or reorder what is shown:
#: C0 and C1 controls, DEL, the Unicode line and paragraph separators, bidi overrides.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe for one line of a log or terminal: controls shown as ``\\n``, ``\\x1b``...

    A file name is chosen by whoever dropped the file: escaped, it cannot forge a log line.
    """
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class TextFormatter(logging.Formatter):
    """Plain lines: the message on one line, a traceback redacted and marked as continuation.

    Every traceback line starts with ``  | `` so nothing inside it (an exception's text
    may hold a file name) can pass for a log line of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))


def _continuation(text: str) -> str:
    return "\n".join(f"  | {printable(line)}" for line in redact(text).splitlines())


class RedactingFilter(logging.Filter):
    """Replaces registered secrets in the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = redact(record.getMessage())
            record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _skip = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._skip and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exception"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(out, default=str, ensure_ascii=False))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str = "info", *, json_lines: bool = False, stream: Any = None) -> None:
    """Configure the root logger once: plain lines (or JSON lines) on stderr."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO; keep it for --log-level debug only.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
