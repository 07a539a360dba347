"""``bgremove status`` and the live status line of ``bgremove watch`` on a terminal.

A running daemon writes a small status record (queued, in flight, paused...)
into the journal's ``daemons`` table every two seconds; ``bgremove status``
reads it with the journal's counts and last errors, so it works whether the
daemon is running, stopped or killed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

from bgremove.watcher.claims import pid_alive

#: A daemon whose last heartbeat is older than this is reported as not running.
RUNNING_WITHIN = 15.0


def read_status(journal_path: Path) -> dict[str, Any]:
    """Everything ``bgremove status`` shows, as a JSON-ready dict."""
    import socket

    from bgremove.watcher.journal import Journal

    journal = Journal(journal_path)
    try:
        counts = journal.counts()
        errors = journal.last_errors(5)
        daemons = journal.daemons()
        jobs = journal.unfinished()
    finally:
        journal.close()
    now = time.time()
    shown = []
    host = socket.gethostname()
    for row in daemons[:10]:
        status = json.loads(row["status"] or "{}")
        running = row["stopped"] is None and now - (row["heartbeat"] or 0) < RUNNING_WITHIN
        if running and row["host"] == host and not pid_alive(int(row["pid"] or 0)):
            running = False  # killed on this machine moments ago
        shown.append({
            "owner": row["owner"], "pid": row["pid"], "host": row["host"],
            "running": running,
            "state": "running" if running else ("stopped" if row["stopped"] else "killed"),
            "started": _iso(row["started"]), "last_seen": _iso(row["heartbeat"]),
            "queued": status.get("queued", 0) if running else 0,
            "in_flight": status.get("in_flight", 0) if running else 0,
            "paused": status.get("paused") if running else None,
            "inbox": status.get("inbox"), "outbox": status.get("outbox"),
            "mode": status.get("mode"),
        })
    live = [d for d in shown if d["running"]]
    # Two daemons on one INBOX see the same waiting files: count each INBOX once.
    per_inbox: dict[str, int] = {}
    for d in live:
        per_inbox[d["inbox"]] = max(per_inbox.get(d["inbox"], 0), d["queued"])
    queued = sum(per_inbox.values())
    if not live and daemons:
        # nobody runs: count what waits on disk for the next start
        queued = _waiting_on_disk(json.loads(daemons[0]["status"] or "{}"))
    claimed = _claimed_files(json.loads(daemons[0]["status"] or "{}"), jobs) if daemons else []
    return {
        "journal": str(journal_path),
        "queued": queued,
        "in_flight": sum(d["in_flight"] for d in shown),
        "unfinished": max(counts["active"], len(claimed)),
        "unfinished_jobs": claimed,
        "done": counts["done"],
        "duplicates": counts["duplicates"],
        "failed": counts["failed"],
        "daemons": shown,
        "last_errors": [{"time": _iso(e["ts"]), "input": e["input"], "kind": e["error_kind"],
                         "error": e["error"]} for e in errors],
    }


def _layout(status: dict[str, Any]) -> Any:
    from bgremove.watcher.naming import Layout

    inbox = Path(status["inbox"])
    return Layout(inbox, Path(status["outbox"]),
                  Path(status.get("done_dir") or inbox / "done"),
                  Path(status.get("failed_dir") or inbox / "failed"),
                  bool(status.get("recursive")))


def _claimed_files(status: dict[str, Any], jobs: dict[str, dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Each file taken out of INBOX and not finished: its name, where it is now, its state."""
    import os

    from bgremove.watcher.claims import Claims, _claimed_in

    if not status.get("inbox") or not status.get("outbox"):
        return []
    root = _layout(status).claims
    found = []
    try:
        owners = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        return []
    for owner in owners:
        for path in sorted(_claimed_in(Path(owner))):
            job = jobs.get(str(path), {})
            found.append({"input": str(Claims.rel_of(path)), "file": str(path),
                          "owner": Path(owner).name, "state": job.get("state") or "claimed",
                          "task_id": job.get("task_id")})
    return found


def _waiting_on_disk(status: dict[str, Any]) -> int:
    """Files in INBOX that a daemon would take, plus files left in claim folders."""
    import os

    from bgremove.watcher.claims import _claimed_in

    if not status.get("inbox") or not status.get("outbox"):
        return 0
    inbox = Path(status["inbox"])
    layout = _layout(status)
    count = 0
    try:
        for root, dirs, names in os.walk(inbox):
            here = Path(root)
            dirs[:] = [d for d in dirs if layout.relative(here / d) is not None]
            count += sum(1 for n in names if layout.relative(here / n) is not None
                         and os.path.isfile(here / n))
        for entry in os.scandir(layout.claims):
            if entry.is_dir(follow_symlinks=False):
                count += len(_claimed_in(Path(entry.path)))
    except OSError:
        pass
    return count


def format_status(status: dict[str, Any]) -> str:
    lines = []
    running = [d for d in status["daemons"] if d["running"]]
    if running:
        for d in running:
            paused = f", paused: {d['paused']}" if d["paused"] else ""
            lines.append(f"running: pid {d['pid']} on {d['host']} since {d['started']} "
                         f"({d['mode']}), {d['inbox']} -> {d['outbox']}{paused}")
    elif status["daemons"]:
        last = status["daemons"][0]
        lines.append(f"not running (last daemon pid {last['pid']} {last['state']}, "
                     f"last seen {last['last_seen']})")
    else:
        lines.append("no daemon has used this journal yet")
    lines.append(f"queued: {status['queued']}  in flight: {status['in_flight']}  "
                 f"unfinished jobs: {status['unfinished']}")
    if status["unfinished_jobs"]:
        lines.append("unfinished (taken out of INBOX; `bgremove watch` resumes them when it "
                     "starts again, without paying twice):")
        for job in status["unfinished_jobs"]:
            task = f", task {job['task_id']}" if job["task_id"] else ""
            lines.append(f"  {job['input']}: {job['state']}{task}; the file is at "
                         f"{job['file']}")
    lines.append(f"done: {status['done']}  duplicates: {status['duplicates']}  "
                 f"failed: {status['failed']}")
    if status["last_errors"]:
        lines.append("last errors:")
        for e in status["last_errors"]:
            lines.append(f"  {e['time']} {e['input']}: [{e['kind']}] {e['error']}")
    return "\n".join(lines)


def render_line(snapshot: dict[str, Any]) -> str:
    """The one-line live status: ``queued 3 | in flight 2 | done 10 | failed 1``."""
    text = (f"queued {snapshot['queued']} | in flight {snapshot['in_flight']} | "
            f"done {snapshot['done']} | failed {snapshot['failed']}")
    if snapshot.get("duplicates"):
        text += f" | duplicates {snapshot['duplicates']}"
    if snapshot.get("paused"):
        text += f" | paused: {snapshot['paused']}"
    return text


class StatusLine:
    """The daemon's live status on a terminal (``bgremove.console``); log lines print above it."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from bgremove.console import Console

        # a daemon's log is not a progress report: no periodic lines off a terminal
        self.console = Console(stream, plain_every=None)
        self.console.attach()

    def update(self, snapshot: dict[str, Any]) -> None:
        self.console.show(render_line(snapshot))

    def close(self) -> None:
        self.console.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
