"""The error policy: what happens to a claimed file when something goes wrong.

- a permanent error: the file goes to failed/ with ``<name>.error.json`` at once;
- a transient one: retried with capped exponential backoff (``bgremove.retry``) for
  ``watch.retry_for_seconds`` while the other files go on, then failed;
- an unwritable folder (``OutputError``): intake pauses (``folder_health``), the file waits;
- an outage (service unreachable, key refused, model missing): intake pauses (``outage``),
  the file waits;
- an unexpected error (a bug, an odd file system): retried a few times, then failed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import (
    APIStatusError,
    BgremoveError,
    OutputError,
    RateLimitError,
    TaskFailedError,
)
from bgremove.retry import backoff_delay
from bgremove.watcher.failures import report_task_id, write_error_report
from bgremove.watcher.naming import shown
from bgremove.watcher.outage import outage_of

if TYPE_CHECKING:
    from bgremove.watcher.context import Context
    from bgremove.watcher.journal import Job

log = logging.getLogger(__name__)

BACKOFF_MAX = 60.0
#: How soon a file waiting for an unwritable folder is looked at again.
OUTPUT_PROBE_SECONDS = 2.0
#: Unexpected errors (bugs, odd file systems) on one file before it goes to failed/.
MAX_UNEXPECTED_ATTEMPTS = 5


class ErrorPolicy:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._unexpected: dict[Path, int] = {}
        #: key -> task id the journal could not take (kept so the task is not sent again)
        self.unsaved_tasks: dict[str, str] = {}

    def requeue(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                delay: float) -> None:
        if os.path.lexists(claimed):
            self.ctx.scheduler.put(time.monotonic() + delay, claimed=claimed, rel=rel,
                                   input_error=input_error)

    def requeue_blocked(self, claimed: Path, rel: Path,
                        input_error: BgremoveError | None) -> None:
        """Waits for an unwritable folder (or journal) to take a write again."""
        self.requeue(claimed, rel, input_error, OUTPUT_PROBE_SECONDS)

    def succeeded(self, claimed: Path) -> None:
        self._unexpected.pop(claimed, None)

    def handle(self, job: Job, claimed: Path, rel: Path, exc: BgremoveError) -> None:
        """A job's ``BgremoveError``: pause, retry later or fail, as the error says."""
        ctx, journal = self.ctx, self.ctx.journal
        code = getattr(exc, "code", None) if isinstance(exc, TaskFailedError) else \
            getattr(exc, "status_code", None)
        if isinstance(exc, OutputError):
            newly = ctx.health.block(ctx.layout.outbox, str(exc))
            if newly:
                journal.add_event("warning", input=str(rel), error_kind=exc.kind,
                                  error=str(exc))
            journal.count_attempt(job.key, kind=exc.kind, message=str(exc))
            self.requeue_blocked(claimed, rel, None)
            return
        outage = outage_of(exc)
        if outage is not None:  # not this file's fault: pause intake, keep the file
            if ctx.outage.begin(outage, exc):
                journal.add_event("warning", input=str(rel), error_kind=exc.kind,
                                  error=str(exc))
            self.requeue(claimed, rel, None, ctx.outage.retry_seconds)
            return
        resumed_gone = (job.task_id is not None and isinstance(exc, APIStatusError)
                        and exc.status_code == 404)
        if isinstance(exc, TaskFailedError) or resumed_gone:
            # the task is dead: the next attempt submits a new one
            journal.update(job.key, state="claimed", task_id=None, submit_sent=None,
                           upload_url=None)
            self.unsaved_tasks.pop(job.key, None)
        if not (exc.transient or resumed_gone):
            self.fail(job, claimed, rel, exc)
            return
        noted = journal.note_error(job.key, kind=exc.kind, code=code, message=str(exc))
        attempts = noted.attempts if noted else 1
        first = noted.first_error if noted and noted.first_error else time.time()
        if time.time() - first >= ctx.watch.retry_for_seconds:
            self.fail(journal.get(job.key) or job, claimed, rel, exc,
                      note=f"gave up after {attempts} attempts over "
                           f"{time.time() - first:.0f} s")
            return
        delay = backoff_delay(attempts, initial=ctx.backoff_initial, cap=BACKOFF_MAX, spread=0.2)
        if isinstance(exc, RateLimitError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        ctx.counters.count("retries")
        journal.add_event("retry", input=str(rel), error_kind=exc.kind, error=str(exc))
        log.warning("%s: %s (attempt %d); retrying in %.0f s", shown(rel), shown(exc),
                    attempts, delay,
                    extra={"event": "retry", "input": shown(rel), "error_kind": exc.kind})
        self.requeue(claimed, rel, None, delay)

    def fail(self, job: Job | None, claimed: Path, rel: Path, exc: BgremoveError,
             note: str | None = None, attempts: int | None = None) -> None:
        """Move the original to failed/ with its ``.error.json``, and journal it."""
        ctx, journal = self.ctx, self.ctx.journal
        target = ctx.move_original(claimed, ctx.layout.failed, rel)
        latest: Job | None = None
        if job is not None:
            try:
                latest = journal.get(job.key) or job
            except sqlite3.Error:
                latest = job
        write_error_report(target, rel, exc, latest, note=note, attempts=attempts,
                           below=ctx.layout.trusted_base(ctx.layout.failed))
        ctx.counters.count("failed")
        log.error("failed %s -> %s: %s%s", shown(rel), shown(target), shown(exc),
                  f" ({note})" if note else "",
                  extra={"event": "failed", "input": shown(rel), "output": None,
                         "error_kind": exc.kind, "task_id": report_task_id(exc, latest)})
        # the file is in failed/ already: a journal error from here on is only logged
        try:
            if job is not None:
                journal.update(job.key, state="failed", claim=None, error_kind=exc.kind,
                               error=str(exc))
            journal.add_event("failed", input=str(rel), error_kind=exc.kind, error=str(exc))
        except sqlite3.Error as exc3:
            log.warning("cannot journal the failure of %s: %s", shown(rel), exc3)
            ctx.block_journal(exc3)

    def unexpected(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                   exc: Exception) -> None:
        """Not a ``BgremoveError``: retry a few times (a passing hiccup), then fail."""
        attempts = self._unexpected.get(claimed, 0) + 1
        self._unexpected[claimed] = attempts
        if not os.path.lexists(claimed):
            log.exception("unexpected error on %s (the file has left the claim folder)",
                          shown(rel))
            self._unexpected.pop(claimed, None)
            return
        error = BgremoveError(f"unexpected error: {type(exc).__name__}: {exc}")
        if attempts >= MAX_UNEXPECTED_ATTEMPTS:
            log.exception("unexpected error on %s (attempt %d); giving up", shown(rel), attempts)
            self._unexpected.pop(claimed, None)
            try:
                self.fail(None, claimed, rel, error, attempts=attempts,
                          note=f"gave up after {attempts} unexpected errors")
            except Exception as exc2:  # the journal or failed/ is broken too: keep the file
                log.error("cannot move %s to failed/ either (%s); retrying later", shown(rel),
                          exc2)
                self.requeue(claimed, rel, input_error, BACKOFF_MAX)
            return
        delay = backoff_delay(attempts, initial=self.ctx.backoff_initial, cap=BACKOFF_MAX,
                              spread=0)
        log.exception("unexpected error on %s (attempt %d of %d); retrying in %.1f s",
                      shown(rel), attempts, MAX_UNEXPECTED_ATTEMPTS, delay)
        self.ctx.counters.count("retries")
        self.requeue(claimed, rel, input_error, delay)
