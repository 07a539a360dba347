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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgremove.console import Console

_SECRETS: set[str] = set()
REDACTED = "[redacted]"
#: A secret this long is scrubbed wherever it appears; a shorter one only as a whole word,
#: so a short test key cannot garble ordinary text ("Too m[redacted] requests").
ANYWHERE_FROM = 24
_live_line: Console | None = None


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
            if len(value) >= ANYWHERE_FROM:
                text = text.replace(value, REDACTED)
            else:
                text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", REDACTED, text)
    return text


def set_live_line(console: Console | None) -> None:
    """Log lines on stderr clear ``console``'s live line first and redraw it after."""
    global _live_line
    _live_line = console


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


class _StdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` (or ``sys.stdout``) is at the time (it may be
    replaced after setup), stepping around the live line."""

    def __init__(self, name: str = "stderr") -> None:
        super().__init__(getattr(sys, name))
        self._name = name

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self._name)
        live = _live_line
        if live is None or live.stream is not self.stream:
            super().emit(record)
            return
        with live.cleared():
            super().emit(record)


class PlainFormatter(logging.Formatter):
    """The one stderr style: ``bgremove: [HH:MM:SS ]warning: message`` (no level for info).

    The message stays on one line (controls escaped: a file name cannot forge a log
    line). A traceback is for ``--log-level debug``: redacted, each of its lines marked
    ``  | `` as a continuation; otherwise the exception is one clause on the line.
    """

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = printable(record.getMessage())
        if record.levelno != logging.INFO:
            text = f"{record.levelname.lower()}: {text}"
        if self.timestamps:
            text = time.strftime("%H:%M:%S ", time.localtime(record.created)) + text
        if record.exc_info and record.exc_info[1] is not None:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                text += "\n" + _continuation(self.formatException(record.exc_info))
            else:
                exc = record.exc_info[1]
                text += printable(redact(f": {type(exc).__name__}: {exc}"))
        if record.stack_info:
            text += "\n" + _continuation(self.formatStack(record.stack_info))
        return "bgremove: " + text


def setup_logging(level: str = "info", *, json_lines: bool = False, stream: Any = None,
                  timestamps: bool = False) -> None:
    """Configure the root logger once: plain lines on stderr, or JSON lines on stdout (the
    machine-readable output, as ``remove --json``).

    ``timestamps`` adds the time of day to plain lines (the long-running ``watch``).
    """
    if stream is not None:
        handler: logging.Handler = logging.StreamHandler(stream)
    else:
        handler = _StdHandler("stdout" if json_lines else "stderr")
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter(timestamps))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO; keep it for --log-level debug only.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
