"""The report left next to a failed input: ``failed/<name>.error.json``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import SubmitUncertainError
from bgremove.files import atomic_write
from bgremove.watcher.naming import fit_name, shown

if TYPE_CHECKING:
    from bgremove.errors import BgremoveError
    from bgremove.watcher.journal import Job

log = logging.getLogger(__name__)


def write_error_report(target: Path, rel: Path, exc: BgremoveError, latest: Job | None, *,
                       note: str | None, attempts: int | None) -> None:
    """Write the report for ``target`` (the input, now in failed/) atomically; an OSError
    is only logged."""
    hint = "move the file back into INBOX to try again"
    if isinstance(exc, SubmitUncertainError):
        hint += " (it may already have been billed once)"
    report = {
        "input": shown(rel),
        "error": shown(exc),
        "kind": exc.kind,
        "code": getattr(exc, "code", None) or getattr(exc, "status_code", None),
        "transient": bool(exc.transient),
        "attempts": attempts or max(latest.attempts if latest else 1, 1),
        "first_error": _iso((latest.first_error if latest else None) or time.time()),
        "failed_at": _iso(time.time()),
        "task_id": latest.task_id if latest else None,
        "note": note,
        "hint": hint,
    }
    error_file = target.with_name(fit_name(target.name, ".error.json"))
    try:
        # Readers never see half a report; the temp file is new (O_EXCL), so a link
        # planted in failed/ is never written through.
        atomic_write(error_file, json.dumps(report, indent=2) + "\n", durable=False)
    except OSError as exc2:
        log.warning("cannot write %s: %s", shown(error_file), exc2)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
