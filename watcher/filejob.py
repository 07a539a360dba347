"""One claimed file through its journaled states.

    claimed -> submitted (task id journaled) -> staged -> placing -> placed -> done
                                                                \\-> failed (``policy``)

The journal says what to do with a file's content (``Journal.begin``): new, resume,
duplicate of an earlier input, or busy in another daemon. Each step is safe to repeat
after a crash: a journaled task is resumed, never submitted again; a staged cut-out is
linked to a free output name once; the original moves to done/ last.

From claimed to staged the file is a job on the pipeline (``_Run``): the upload made by
the readiness check goes up (its bytes dropped once sent), the task waits in the
pipeline's poller holding no pixels, and the finish reads the claimed file again: a file
changed since it was prepared is refused (``imaging.finish_file``), never finished with
a mask made for other pixels.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
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
from bgremove.watcher.untrusted import input_limit, read_file

if TYPE_CHECKING:
    from bgremove.contract import Prepared, Result
    from bgremove.stages import Pipeline
    from bgremove.watcher.context import Context
    from bgremove.watcher.journal import Job
    from bgremove.watcher.policy import ErrorPolicy

log = logging.getLogger(__name__)


class FileJobs:
    """Walks claimed files through their states; shared by every worker thread.

    The remote part (upload, submit, wait, download) and the finish run as a job on the
    pipeline (``bgremove.stages``): a worker only reads, checks and claims a file, takes a
    place for it (at most as many not yet sent as the pipeline keeps ready; the pipeline
    keeps at most ``concurrency`` tasks at the service), the rate limit and the cost
    guard, and starts it.
    """

    def __init__(self, ctx: Context, policy: ErrorPolicy, pipeline: Pipeline) -> None:
        self.ctx = ctx
        self.policy = policy
        self.pipeline = pipeline
        self._active_keys: set[str] = set()
        #: a place per job started and not yet sending (each holds its upload's bytes); the
        #: account's tasks at once are the pipeline's own bound (``in_flight``: from upload
        #: to download, so a finishing job lets the next upload start)
        self._unsent = threading.Semaphore(pipeline.prepare_ahead)

    def process(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                content: Content | None = None) -> None:
        """Work on a claimed file; whatever goes wrong, the file is requeued or failed.

        ``content`` is the file as read by the readiness check, when there was one;
        otherwise it is read (once) here.
        """
        self._guarded(claimed, rel, input_error,
                      lambda: self._process(claimed, rel, input_error, content))

    def _guarded(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                 step: Callable[[], None]) -> None:
        ctx, policy = self.ctx, self.policy
        try:
            step()
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
                content, input_error, _st = read_content(claimed, ctx.config,
                                                         ctx.claims.dir_fd())
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
        handed_on = False
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
            run = _Run(self, begin.job, claimed, rel, started)
            if run.job.state in ("claimed", "submitted"):
                assert content.prepared is not None  # it decoded: no input error
                handed_on = self._start(run, content.prepared)
            else:  # cut out before a stop: place it, move the original to done/
                run.complete(run.settle)
        finally:
            if not handed_on:
                self._release_key(key)

    def _release_key(self, key: str) -> None:
        with self.ctx.counters.lock:
            self._active_keys.discard(key)

    # -- the remote part, on the pipeline ------------------------------------------------------

    def _start(self, run: _Run, prepared: Prepared) -> bool:
        """Start ``run`` on the pipeline; False when it was not started (a shutdown, or an
        error the policy has dealt with)."""
        try:
            admitted = _outcome(run, lambda: self._admit(run))
        except BaseException:  # a blocked folder, the journal: up to ``_guarded``
            run.release()
            raise
        if not admitted:
            run.release()
            return False
        run.prepared = prepared
        self.ctx.counters.add("in_flight", 1)  # until ``_end``
        try:
            self.pipeline.start(run)
        except RuntimeError:  # closed: the daemon is stopping
            run.failed(CancelledError("shutting down"))
        return True

    def _admit(self, run: _Run) -> None:
        """What must hold before a job goes to the pipeline; each wait ends at shutdown
        (nothing is sent yet)."""
        ctx, guard = self.ctx, self.ctx.guard
        check_output_dir(ctx.layout.outbox / run.rel.parent,
                         ctx.layout.trusted_base(ctx.layout.outbox))
        run.hooks = self._hooks(run)
        while not self._unsent.acquire(timeout=0.25):
            if ctx.stopping():
                raise CancelledError("shutting down")
        run.unsent = True
        if run.hooks.resume_task is not None:
            return
        if not ctx.rate.acquire(ctx.cancel, ctx.stopping):
            raise CancelledError("shutting down")
        run.rate_token = True  # counted when its submit leaves (``on_submit``)
        if not guard.acquire(ctx.cancel, lambda: ctx.stopping() or (
                ctx.watch.once and guard.paused is not None)):
            if ctx.watch.once and guard.paused is not None:
                ctx.cap_reached.set()
            raise CancelledError("shutting down")
        run.reserved = True

    def _hooks(self, run: _Run) -> JobHooks:
        ctx, policy = self.ctx, self.policy
        journal, job, key, rel = ctx.journal, run.job, run.job.key, run.rel
        resume = job.task_id if job.state == "submitted" else policy.unsaved_tasks.get(key)
        if resume is not None:
            log.info("%s: resuming task %s instead of submitting again", shown(rel), resume)

        def on_task(task_id: str) -> None:
            if run.take_reserved():  # counted once the service has the task, not per attempt
                try:
                    ctx.guard.commit(key)
                except sqlite3.Error as exc:
                    log.warning("cannot count the submission of %s: %s", shown(rel), exc)
            policy.unsaved_tasks[key] = task_id
            tasklog.record(task_id, input=ctx.layout.inbox / rel, sha256=key.partition(":")[0])
            try:
                journal.update(key, state="submitted", task_id=task_id)
            except sqlite3.Error as exc:  # keep waiting; the id is kept in memory
                log.warning("cannot journal task %s of %s: %s", task_id, shown(rel), exc)
                ctx.block_journal(exc)

        def on_submit(sent_at: float, upload_url: str) -> None:
            # before the submit leaves: a crash from here on is reconciled on restart
            ctx.rate.commit(held=run.take_rate_token())
            journal.update(key, submit_sent=sent_at, upload_url=upload_url)

        lost = None
        if resume is None and job.submit_sent is not None and job.upload_url:
            lost = (job.submit_sent, job.upload_url)
            log.info("%s: a submit was sent before the last stop and its answer never "
                     "came: looking for its task", shown(rel))
        return JobHooks(cancel=ctx.cancel, on_task=on_task, resume_task=resume,
                        on_submit=on_submit, lost_submit=lost,
                        known_tasks=journal.known_tasks())


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


def _outcome(run: _Run, step: Callable[[], None]) -> bool:
    """Run one of ``run``'s steps; an error is handed to the policy (False). A blocked
    folder, the journal's errors and bugs go up to ``FileJobs._guarded``."""
    policy = run.jobs.policy
    try:
        step()
    except CancelledError:
        log.info("%s: interrupted by shutdown; it resumes on the next start", shown(run.rel))
        return False
    except FolderBlocked as exc:
        run.ctx.journal.count_attempt(run.job.key, kind="output", message=exc.reason)
        raise
    except BgremoveError as exc:
        policy.handle(run.job, run.claimed, run.rel, exc)
        return False
    except OSError as exc:
        policy.handle(run.job, run.claimed, run.rel, OutputError(
            f"cannot write the result of {shown(run.rel)}: {exc.strerror or exc}"))
        return False
    return True


class _Run:
    """One claimed file from its journaled state to done: a pipeline job (``Job`` in
    ``bgremove.stages``) while it is at the service, then settled here (``settle``)."""

    def __init__(self, jobs: FileJobs, job: Job, claimed: Path, rel: Path,
                 started: float) -> None:
        self.jobs, self.ctx = jobs, jobs.ctx
        self.job, self.claimed, self.rel, self.started = job, claimed, rel, started
        self.hooks = JobHooks()
        self.prepared: Prepared | None = None  # until the pipeline takes it (``prepare``)
        self.reserved = False  # a place under the cost cap, not yet counted
        self.rate_token = False  # a place under images per minute, its submit not sent yet
        self.unsent = False  # a place among the jobs not yet sent (``FileJobs._unsent``)
        self._lock = threading.Lock()
        self._ended = False

    # -- the pipeline's calls ---------------------------------------------------------------

    def prepare(self) -> Prepared:
        prepared, self.prepared = self.prepared, None  # the pipeline holds it from here
        assert prepared is not None
        return prepared

    def before_send(self) -> None:
        """Sending now: its place among the jobs not yet sent is free."""
        if self._take("unsent"):
            self.jobs._unsent.release()

    def finish(self, prepared: Prepared, result: Result) -> None:
        try:
            self.jobs._guarded(self.claimed, self.rel, None, lambda: self.complete(
                lambda: self._stage(prepared, result)))
        finally:
            self._end()

    def failed(self, error: BaseException) -> None:
        def fail() -> None:
            raise error if isinstance(error, Exception) else CancelledError("cancelled")

        try:
            self.jobs._guarded(self.claimed, self.rel, None, lambda: self.complete(fail))
        finally:
            self._end()

    # -- the steps --------------------------------------------------------------------------

    def _stage(self, prepared: Prepared, result: Result) -> None:
        """submitted -> staged: the result applied to the claimed file as read again now
        (``finish_file`` refuses a file that is not the one uploaded), into staging."""
        from bgremove.imaging import finish_file

        ctx, policy, key = self.ctx, self.jobs.policy, self.job.key
        staged = self.staged
        data, _st = read_file(self.claimed, limit=input_limit(ctx.config.input.max_pixels),
                              dir_fd=ctx.claims.dir_fd())
        warning = finish_file(prepared, result, self.claimed, staged, ctx.config.output,
                              data=data)
        del data
        if warning:  # e.g. no subject found: the result is placed all the same
            log.warning("%s: %s", shown(self.rel), warning,
                        extra={"event": "warning", "input": shown(self.rel)})
        ctx.journal.update(key, state="staged", staged=str(staged),
                           task_id=result.task_id or self.hooks.resume_task
                           or policy.unsaved_tasks.get(key))
        policy.unsaved_tasks.pop(key, None)
        self.job = self._reload()
        self.settle()

    def settle(self) -> None:
        """staged -> placed -> done: the cut-out gets a free output name, the original
        moves to done/; each step is safe to repeat."""
        ctx, journal, job = self.ctx, self.ctx.journal, self.job
        key, rel = job.key, self.rel
        if job.state in ("staged", "placing"):
            output = place_staged(journal, job, self.staged, ctx.layout.output_for(rel, ctx.ext),
                                  rel, below=ctx.layout.trusted_base(ctx.layout.outbox))
            journal.update(key, state="placed", output=str(output))
            if job.task_id:
                tasklog.record(job.task_id, output=output)
            job = self.job = self._reload()
        if job.state == "placed":
            ctx.move_original(self.claimed, ctx.layout.done, rel)
            journal.update(key, state="done", claim=None)
            journal.add_event("done", input=str(rel), output=job.output, task_id=job.task_id)
            self.job = self._reload()

    def complete(self, step: Callable[[], None]) -> None:
        """``step`` to the end (``done``, logged), or its error handed to the policy."""
        if not _outcome(self, step):
            return
        job, rel = self.job, self.rel
        seconds = time.monotonic() - self.started
        self.ctx.outage.end()
        self.ctx.counters.count("done")
        log.info("done %s -> %s in %.2f s (task %s)", shown(rel), shown(job.output), seconds,
                 job.task_id or "-",
                 extra={"event": "done", "input": shown(rel), "output": shown(job.output),
                        "seconds": round(seconds, 3), "task_id": job.task_id})

    # -- bookkeeping ----------------------------------------------------------------------

    @property
    def staged(self) -> Path:
        return self.ctx.staging / f"{self.job.key[:24]}{self.ctx.ext}"

    def take_reserved(self) -> bool:
        return self._take("reserved")

    def take_rate_token(self) -> bool:
        return self._take("rate_token")

    def _take(self, place: str) -> bool:
        """Whether the place named ``place`` was held; it is not any more (once only)."""
        with self._lock:
            held: bool = getattr(self, place)
            setattr(self, place, False)
        return held

    def release(self) -> None:
        """Give back the places it holds, and a cost-cap place and a rate token that were
        never counted (no task id came, no submit left: a local backend, or nothing sent)."""
        if self._take("unsent"):
            self.jobs._unsent.release()
        if self.take_reserved():
            self.ctx.guard.release()
        if self.take_rate_token():
            self.ctx.rate.release()

    def _end(self) -> None:
        """A job started on the pipeline has ended (once)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.release()
        self.prepared = None
        self.ctx.counters.add("in_flight", -1)
        self.jobs._release_key(self.job.key)

    def _reload(self) -> Job:
        job = self.ctx.journal.get(self.job.key)
        assert job is not None
        return job
