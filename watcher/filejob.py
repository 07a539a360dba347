"""One claimed file through its journaled states.

    claimed -> submitted (task id journaled) -> staged -> placing -> placed -> done
                                                                \\-> failed (``policy``)

The journal says what to do with a file's content (``Journal.begin``): new, resume,
duplicate of an earlier input, or busy in another daemon. Each step is safe to repeat
after a crash: a journaled task is resumed, never submitted again; a staged cut-out is
linked to a free output name once; the original moves to done/ last.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove import tasklog
from bgremove.contract import JobHooks
from bgremove.errors import (
    BgremoveError,
    CancelledError,
    OutputError,
    UnsafeInputError,
)
from bgremove.watcher.folder_health import FolderBlocked
from bgremove.watcher.intake import Content, read_content
from bgremove.watcher.naming import shown
from bgremove.watcher.placement import check_output_dir, place_duplicate, place_staged

if TYPE_CHECKING:
    from bgremove.watcher.context import Context
    from bgremove.watcher.journal import Job
    from bgremove.watcher.policy import ErrorPolicy

log = logging.getLogger(__name__)


class FileJobs:
    """Walks claimed files through their states; shared by every worker thread."""

    def __init__(self, ctx: Context, policy: ErrorPolicy) -> None:
        self.ctx = ctx
        self.policy = policy
        self._active_keys: set[str] = set()

    def process(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                content: Content | None = None) -> None:
        """Work on a claimed file; whatever goes wrong, the file is requeued or failed.

        ``content`` is the file as read by the readiness check, when there was one;
        otherwise it is read (once) here.
        """
        ctx, policy = self.ctx, self.policy
        try:
            self._process(claimed, rel, input_error, content)
        except FolderBlocked as exc:
            ctx.health.block(exc.folder, exc.reason, journal=exc.journal, below=exc.below)
            policy.requeue_blocked(claimed, rel, input_error)
        except sqlite3.Error as exc:
            ctx.block_journal(exc)
            policy.requeue_blocked(claimed, rel, input_error)
        except Exception as exc:
            policy.unexpected(claimed, rel, input_error, exc)
        else:
            policy.succeeded(claimed)

    def _process(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                 content: Content | None) -> None:
        ctx, policy = self.ctx, self.policy
        started = time.monotonic()
        if isinstance(input_error, UnsafeInputError):  # never opened: no journal key
            policy.fail(None, claimed, rel, input_error)
            return
        if content is None:
            try:
                content, input_error, _st = read_content(
                    claimed, ctx.config.input.max_pixels, ctx.claims.dir_fd())
            except UnsafeInputError as exc:
                policy.fail(None, claimed, rel, exc)
                return
            except FileNotFoundError:
                log.warning("claimed file %s is gone", shown(claimed))
                return
            except OSError as exc:
                log.warning("cannot read claimed file %s: %s; retrying", shown(claimed), exc)
                policy.requeue(claimed, rel, input_error, ctx.backoff_initial)
                return
        key = f"{content.digest}:{ctx.fingerprint}"
        with ctx.counters.lock:
            mine_busy = key in self._active_keys
            if not mine_busy:
                self._active_keys.add(key)
        if mine_busy:
            policy.requeue(claimed, rel, input_error, 1.0)
            return
        try:
            begin = ctx.journal.begin(key, owner=ctx.owner, input=str(rel), claim=str(claimed),
                                      reprocess=ctx.watch.reprocess,
                                      is_alive=ctx.claims.is_alive)
            if begin.action == "busy":
                policy.requeue(claimed, rel, input_error, 2.0)
                return
            if begin.action == "duplicate":
                self._duplicate(claimed, rel, begin.job)
                return
            assert begin.job is not None
            if input_error is not None:
                policy.fail(begin.job, claimed, rel, input_error)
                return
            ctx.counters.add("in_flight", 1)
            try:
                self._run(begin.job, claimed, rel, started, content)
            finally:
                ctx.counters.add("in_flight", -1)
        finally:
            with ctx.counters.lock:
                self._active_keys.discard(key)

    def _run(self, job: Job, claimed: Path, rel: Path, started: float,
             content: Content) -> None:
        try:
            job = self._advance(job, claimed, rel, content)
        except CancelledError:
            log.info("%s: interrupted by shutdown; it resumes on the next start", shown(rel))
            return
        except FolderBlocked as exc:
            self.ctx.journal.count_attempt(job.key, kind="output", message=exc.reason)
            raise
        except BgremoveError as exc:
            self.policy.handle(job, claimed, rel, exc)
            return
        except OSError as exc:
            self.policy.handle(job, claimed, rel, OutputError(
                f"cannot write the result of {shown(rel)}: {exc.strerror or exc}"))
            return
        seconds = time.monotonic() - started
        self.ctx.outage.end()
        self.ctx.counters.count("done")
        log.info("done %s -> %s in %.2f s (task %s)", shown(rel), shown(job.output), seconds,
                 job.task_id or "-",
                 extra={"event": "done", "input": shown(rel), "output": shown(job.output),
                        "seconds": round(seconds, 3), "task_id": job.task_id})

    def _advance(self, job: Job, claimed: Path, rel: Path, content: Content) -> Job:
        """Take a job from its journaled state to done; each step is safe to repeat."""
        ctx = self.ctx
        journal, key = ctx.journal, job.key
        staged = ctx.staging / f"{key[:24]}{ctx.ext}"
        if job.state in ("claimed", "submitted"):
            self._cut_out(job, claimed, rel, content, staged)
            job = self._reload(key)
        if job.state in ("staged", "placing"):
            output = place_staged(journal, job, staged, ctx.layout.output_for(rel, ctx.ext), rel,
                                  below=ctx.layout.trusted_base(ctx.layout.outbox))
            journal.update(key, state="placed", output=str(output))
            if job.task_id:
                tasklog.record(job.task_id, output=output)
            job = self._reload(key)
        if job.state == "placed":
            ctx.move_original(claimed, ctx.layout.done, rel)
            journal.update(key, state="done", claim=None)
            journal.add_event("done", input=str(rel), output=job.output, task_id=job.task_id)
            job = self._reload(key)
        return job

    def _cut_out(self, job: Job, claimed: Path, rel: Path, content: Content,
                 staged: Path) -> None:
        """claimed/submitted -> staged: the cut-out written under staging (task journaled)."""
        from bgremove.jobs import remove_file

        ctx, policy = self.ctx, self.policy
        journal, key, guard = ctx.journal, job.key, ctx.guard
        check_output_dir(ctx.layout.outbox / rel.parent,
                         ctx.layout.trusted_base(ctx.layout.outbox))
        resume = job.task_id if job.state == "submitted" else policy.unsaved_tasks.get(key)
        reserved = False
        if resume is None:
            # waiting for the rate limit or cost cap ends at shutdown: nothing sent yet
            if not ctx.rate.acquire(ctx.cancel, ctx.stopping):
                raise CancelledError("shutting down")
            if not guard.acquire(ctx.cancel, lambda: ctx.stopping() or (
                    ctx.watch.once and guard.paused is not None)):
                if ctx.watch.once and guard.paused is not None:
                    ctx.cap_reached.set()
                raise CancelledError("shutting down")
            reserved = True
        else:
            log.info("%s: resuming task %s instead of submitting again", shown(rel), resume)

        def on_task(task_id: str) -> None:
            nonlocal reserved
            if reserved:  # counted once the service has the task, not per attempt
                reserved = False
                try:
                    guard.commit(key)
                except sqlite3.Error as exc:
                    log.warning("cannot count the submission of %s: %s", shown(rel), exc)
            policy.unsaved_tasks[key] = task_id
            tasklog.record(task_id, input=ctx.layout.inbox / rel)
            try:
                journal.update(key, state="submitted", task_id=task_id)
            except sqlite3.Error as exc:  # keep waiting; the id is kept in memory
                log.warning("cannot journal task %s of %s: %s", task_id, shown(rel), exc)
                ctx.block_journal(exc)

        def on_submit(sent_at: float, upload_url: str) -> None:
            # before the submit leaves: a crash from here on is reconciled on restart
            journal.update(key, submit_sent=sent_at, upload_url=upload_url)

        lost = None
        if resume is None and job.submit_sent is not None and job.upload_url:
            lost = (job.submit_sent, job.upload_url)
            log.info("%s: a submit was sent before the last stop and its answer never "
                     "came: looking for its task", shown(rel))
        hooks = JobHooks(cancel=ctx.cancel, on_task=on_task, resume_task=resume,
                         on_submit=on_submit, lost_submit=lost,
                         known_tasks=journal.known_tasks())
        try:
            result = remove_file(claimed, staged, ctx.backend, ctx.config, hooks,
                                 source=content.source)
        finally:
            if reserved:  # no task id was reported: a local backend, or nothing was sent
                guard.release()
        if result.warning:  # e.g. no subject found: the result is placed all the same
            log.warning("%s: %s", shown(rel), result.warning,
                        extra={"event": "warning", "input": shown(rel)})
        journal.update(key, state="staged", staged=str(staged),
                       task_id=result.task_id or resume or policy.unsaved_tasks.get(key))
        policy.unsaved_tasks.pop(key, None)

    def _reload(self, key: str) -> Job:
        job = self.ctx.journal.get(key)
        assert job is not None
        return job

    # -- duplicates -----------------------------------------------------------------

    def _duplicate(self, claimed: Path, rel: Path, first: Job | None) -> None:
        """Same content as an earlier input: link its cut-out to this input's own output
        name (no second upload), then move the input to done/."""
        ctx = self.ctx
        output: Path | None = None
        if first is not None and first.output:
            try:
                output = place_duplicate(Path(first.output), ctx.layout.output_for(rel, ctx.ext),
                                         ctx.staging,
                                         below=ctx.layout.trusted_base(ctx.layout.outbox))
            except FileNotFoundError:  # the earlier result vanished this instant
                self.policy.requeue(claimed, rel, None, 1.0)
                return
            except (OSError, OutputError) as exc:
                raise FolderBlocked(ctx.layout.outbox, f"cannot write the output of "
                                    f"{shown(rel)}: {getattr(exc, 'strerror', None) or exc}"
                                    ) from None
        done = ctx.move_original(claimed, ctx.layout.done, rel)
        ctx.journal.add_event("duplicate", input=str(rel), output=str(output) if output else None,
                              task_id=first.task_id if first else None)
        ctx.counters.count("duplicates")
        log.info("duplicate %s: same content as %s: its cut-out is also %s (not sent again); "
                 "moved to %s", shown(rel), shown(first.input if first else "?"), shown(output),
                 shown(done),
                 extra={"event": "duplicate", "input": shown(rel), "output": shown(output),
                        "seconds": 0.0, "task_id": first.task_id if first else None})
