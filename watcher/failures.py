"""The report left next to a failed input: ``failed/<name>.error.json``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import (
    APIStatusError,
    ImageTooLargeError,
    InputError,
    SubmitUncertainError,
    TaskFailedError,
    UnreadableImageError,
)
from bgremove.files import atomic_write
from bgremove.watcher.naming import fit_name, folder_fd, shown

if TYPE_CHECKING:
    from bgremove.errors import BgremoveError
    from bgremove.watcher.journal import Job

log = logging.getLogger(__name__)


def write_error_report(target: Path, rel: Path, exc: BgremoveError, latest: Job | None, *,
                       note: str | None, attempts: int | None, below: Path | None = None
                       ) -> None:
    """Write the report for ``target`` (the input, now in failed/) atomically; an OSError
    is only logged. ``below``: the trusted folder above failed/ (no link on the way from
    it is followed)."""
    report = {
        "input": shown(rel),
        "error": shown(exc),
        "kind": exc.kind,
        "code": getattr(exc, "code", None) or getattr(exc, "status_code", None),
        "transient": bool(exc.transient),
        "attempts": attempts or max(latest.attempts if latest else 1, 1),
        "first_error": _iso((latest.first_error if latest else None) or time.time()),
        "failed_at": _iso(time.time()),
        "task_id": report_task_id(exc, latest),
        "note": note,
        "hint": retry_hint(exc),
    }
    error_file = target.with_name(fit_name(target.name, ".error.json"))
    text = json.dumps(report, indent=2) + "\n"
    try:
        # Readers never see half a report; the temp file is new (O_EXCL), so a link
        # planted in failed/ is never written through, nor one on the way there.
        if below is None:
            atomic_write(error_file, text, durable=False)
        else:
            fd = folder_fd(target.parent, below, create=False)
            try:
                atomic_write(error_file, text, durable=False, dir_fd=fd)
            finally:
                os.close(fd)
    except OSError as exc2:
        log.warning("cannot write %s: %s", shown(error_file), exc2)


def report_task_id(exc: BgremoveError, latest: Job | None) -> str | None:
    """The task the error is about (a failed task is no longer the job's current one)."""
    return getattr(exc, "task_id", None) or (latest.task_id if latest else None)


def retry_hint(exc: BgremoveError) -> str:
    """What to do next; "move it back" only where trying the same file again can succeed."""
    again = "move the file back into INBOX to try again"
    if isinstance(exc, SubmitUncertainError):
        return again + " (it may already have been billed once)"
    if isinstance(exc, ImageTooLargeError):
        return "resize the image or raise input.max_pixels, then " + again
    if isinstance(exc, UnreadableImageError) and exc.truncated:
        # a copy that stalled past watch.settle_seconds looks the same, and may end complete
        return "the image data ends early or is damaged: if it was still being copied, " + again \
            + " once the copy has finished; otherwise replace it with a good copy"
    if isinstance(exc, InputError):
        return "the file is not a usable image: trying it again will not help; replace it " \
               "with a good copy"
    refused = (isinstance(exc, TaskFailedError) or (
        isinstance(exc, APIStatusError) and exc.status_code in (400, 413, 422)))
    if refused and not exc.transient:
        return "the service refused this image: trying the same file again will not help"
    return again


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
