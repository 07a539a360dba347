"""This machine's memory of its tasks: the input each task was for, and where its result went.

The service lists an account's tasks for 7 days but knows nothing of file
names. ``bgremove remove`` and ``bgremove watch`` append one JSON line per
event to ``tasks.jsonl`` in the user state folder (Linux
``~/.local/state/bgremove``): ``{"task", "input", "sha256", "at"}`` when a task
is known (``sha256``: of the input file's bytes, so ``bgremove fetch --input``
can tell the task's own input from another image), ``{"task", "output", "at"}``
when its result is saved. ``bgremove remove`` also writes, just before each
submit leaves, ``{"submit": <upload URL>, "input", "sha256", "sent_at", "service"}``;
the line that names its task (``{"task", "submit", ...}``) or ``"closed"`` ends it.
A submit left open (Ctrl-C, a crash, a lost connection cut the answer off) or a
task whose result was never saved is ``pending``: the next ``remove`` of the same
bytes looks it up in the service's list instead of paying again. Each line is
one ``write`` in append mode, so processes can share the file. Lines older
than 8 days are dropped once the file passes ``_COMPACT_BYTES``. The log is
a convenience for ``bgremove tasks``: failing to write it never fails an
image.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Older lines are of no use: the service keeps tasks 7 days.
KEEP_SECONDS = 8 * 24 * 3600.0
_COMPACT_BYTES = 4 * 1024 * 1024
#: Compaction waits until the oldest line is this much past ``KEEP_SECONDS``: a log of only
#: recent lines is never rewritten, and a busy one at most about twice a day.
_COMPACT_SLACK = 12 * 3600.0
_lock = threading.Lock()


@dataclass(frozen=True)
class TaskRecord:
    """What this machine knows of one task."""

    input: str | None
    output: str | None
    at: float
    sha256: str | None = None  # of the input file's bytes, when recorded


def log_path() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("bgremove")) / "tasks.jsonl"


@dataclass(frozen=True)
class Pending:
    """A submit whose answer never came (``task`` None), or a task whose result was never
    saved, of one input's bytes at one service."""

    task: str | None
    upload_url: str | None
    sent_at: float | None


def record(task_id: str, *, input: str | os.PathLike[str] | None = None,
           output: str | os.PathLike[str] | None = None, sha256: str | None = None,
           upload_url: str | None = None, service: str | None = None,
           closed: bool = False) -> None:
    """Append what is now known of ``task_id``; a failure is only logged. ``upload_url``:
    the submit it answers (closed by it); ``service``: makes it pending until its output
    is recorded or it is ``closed`` (its result cannot be had: failed, expired)."""
    entry: dict[str, object] = {"task": task_id, "at": round(time.time(), 3)}
    if input is not None:
        entry["input"] = os.path.abspath(input)
    if sha256 is not None:
        entry["sha256"] = sha256
    if output is not None:
        entry["output"] = os.path.abspath(output)
    if upload_url is not None:
        entry["submit"] = upload_url
    if service is not None:
        entry["service"] = service
    if closed:
        entry["closed"] = True
    _append(entry, task_id)


def record_submit(upload_url: str, *, input: str | os.PathLike[str], sha256: str,
                  sent_at: float, service: str) -> None:
    """Just before a submit leaves: what it sends, so a lost answer can be looked up."""
    _append({"submit": upload_url, "input": os.path.abspath(input), "sha256": sha256,
             "sent_at": sent_at, "service": service, "at": round(time.time(), 3)}, upload_url)


def close_submit(upload_url: str) -> None:
    """The submit surely created no task (the service refused it, or its list shows none)."""
    _append({"submit": upload_url, "closed": True, "at": round(time.time(), 3)}, upload_url)


def pending(service: str) -> dict[str, list[Pending]]:
    """sha256 -> the open submits and unsaved tasks at ``service``, oldest first."""
    submits: dict[str, tuple[str, Pending]] = {}
    tasks: dict[str, tuple[str, Pending]] = {}
    for entry in _entries():
        task, url = entry.get("task"), _text(entry.get("submit"))
        digest = _text(entry.get("sha256"))
        if isinstance(task, str):
            if url is not None:
                submits.pop(url, None)
            if entry.get("output") or entry.get("closed"):
                tasks.pop(task, None)
            elif digest and entry.get("service") == service:
                tasks[task] = (digest, Pending(task, url, None))
        elif url is not None:
            sent_at = entry.get("sent_at")
            if entry.get("closed"):
                submits.pop(url, None)
            elif (digest and entry.get("service") == service
                  and isinstance(sent_at, (int, float))):
                submits.pop(url, None)  # sent again: the latest time counts
                submits[url] = (digest, Pending(None, url, float(sent_at)))
    found: dict[str, list[Pending]] = {}
    for digest, item in [*tasks.values(), *submits.values()]:
        found.setdefault(digest, []).append(item)
    return found


def _append(entry: dict[str, object], what: str) -> None:
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > _COMPACT_BYTES and _has_stale_lines(path):
            _compact(path)
    except OSError as exc:
        log.debug("cannot record %s in %s: %s", what, path, exc)


def _entries() -> list[dict[str, object]]:
    """The log's lines of the last 8 days, in order."""
    try:
        text = log_path().read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return []
    oldest = time.time() - KEEP_SECONDS
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        at = entry.get("at") if isinstance(entry, dict) else None
        if isinstance(at, (int, float)) and at >= oldest:
            entries.append(entry)
    return entries


def read() -> dict[str, TaskRecord]:
    """Every task this machine recorded in the last 8 days (later lines win)."""
    records: dict[str, TaskRecord] = {}
    for entry in _entries():
        task, at = entry.get("task"), entry.get("at")
        if not isinstance(task, str) or not isinstance(at, (int, float)):
            continue
        known = records.get(task)
        records[task] = TaskRecord(
            _text(entry.get("input")) or (known.input if known else None),
            _text(entry.get("output")) or (known.output if known else None), float(at),
            _text(entry.get("sha256")) or (known.sha256 if known else None))
    return records


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _has_stale_lines(path: Path) -> bool:
    """Whether the log's first (about its oldest) line is past keeping, with the slack.

    Without this, a log over the size with nothing old enough to drop was read and parsed
    whole at every record (several MB per image for a busy account)."""
    try:
        with path.open("rb") as fh:
            at = json.loads(fh.readline(4096)).get("at")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable first line: compaction drops it
    return not isinstance(at, (int, float)) or at < time.time() - KEEP_SECONDS - _COMPACT_SLACK


def _compact(path: Path) -> None:
    """Rewrite the log without lines older than ``KEEP_SECONDS`` (a line another process
    appends meanwhile may be lost: the log is a convenience)."""
    from bgremove.files import atomic_write

    with _lock:
        oldest = time.time() - KEEP_SECONDS
        kept = []
        for line in path.read_bytes().splitlines(keepends=True):
            try:
                at = json.loads(line).get("at")
            except (ValueError, AttributeError):
                continue
            if isinstance(at, (int, float)) and at >= oldest:
                kept.append(line)
        atomic_write(path, b"".join(kept), mode=0o600, durable=False)
