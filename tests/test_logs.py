"""Logging: the key is scrubbed from every line, plain or JSON; short values are left alone."""

from __future__ import annotations

import io
import json
import logging

from bgremove.logs import REDACTED, register_secret, setup_logging


def _emit(json_lines: bool, *args: object) -> str:
    stream = io.StringIO()
    setup_logging("debug", json_lines=json_lines, stream=stream)
    try:
        logging.getLogger("bgremove.test").warning(*args)  # type: ignore[arg-type]
    finally:
        logging.getLogger().handlers.clear()
    return stream.getvalue()


def test_a_registered_key_is_scrubbed_from_plain_and_json_lines() -> None:
    key = "wsk-live-abcdef0123456789"
    register_secret(key)
    plain = _emit(False, "sending Bearer %s to %s", key, "host")
    assert key not in plain and f"Bearer {REDACTED}" in plain
    record = json.loads(_emit(True, "header was %s", key))
    assert record["message"] == f"header was {REDACTED}" and record["level"] == "warning"


def test_short_values_are_not_treated_as_secrets() -> None:
    register_secret("x")
    assert "exceeded" in _emit(False, "the limit was exceeded")


def test_json_fields_are_scrubbed_too() -> None:
    key = "wsk-live-fields-0123456789abcdef"
    register_secret(key)
    stream = io.StringIO()
    setup_logging("info", json_lines=True, stream=stream)
    try:
        logging.getLogger("core.test").warning(
            "retrying", extra={"error": f"answer echoed Bearer {key}", "input": "a.png"})
    finally:
        logging.getLogger().handlers.clear()
    record = json.loads(stream.getvalue())
    assert key not in stream.getvalue()
    assert record["error"] == f"answer echoed Bearer {REDACTED}" and record["input"] == "a.png"


def test_plain_lines_have_one_style() -> None:
    assert _emit(False, "disk %s", "full").strip() == "bgremove: warning: disk full"


def test_a_file_name_cannot_forge_a_plain_log_line() -> None:
    name = "x.png\n12:00:00 INFO done y.png\r\x1b[2K\u202egnp.exe"
    plain = _emit(False, "failed %s", name)
    assert plain.count("\n") == 1  # one record, one line
    assert "x.png\\n12:00:00 INFO done y.png\\r\\x1b[2K\\u202egnp.exe" in plain
    record = json.loads(_emit(True, "failed %s", name))  # JSON escapes by itself
    assert record["message"] == f"failed {name}"


def test_a_plain_traceback_is_redacted_and_cannot_forge_lines() -> None:
    key = "wsk-live-traceback-0123456789"
    register_secret(key)
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    try:
        try:
            raise ValueError(f"Bearer {key}\n12:00:00 INFO forged")
        except ValueError:
            logging.getLogger("core.test").exception("unexpected error on %s", "a.png")
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert key not in text and REDACTED in text
    lines = text.splitlines()
    assert lines[0].endswith("error: unexpected error on a.png")
    assert len(lines) > 2 and all(line.startswith("  | ") for line in lines[1:])
