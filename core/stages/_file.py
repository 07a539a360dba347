"""One input file to one output file, as a pipeline job.

``FileJob.prepare`` reads and checks the file and makes its upload
(``imaging.prepare_file``); ``warm``, while its task waits, decodes it ahead
(``imaging.load_source``); ``finish`` re-reads it, applies the result and writes
``dst`` atomically (``imaging.finish_file``, which refuses a file changed meanwhile).
The job's one outcome, a ``JobResult``, goes to ``done``: the batch and the daemon
decide what to do with it. ``remove_file`` runs one such job for a library caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgremove.contract import JobHooks, Prepared, Result
from bgremove.errors import BgremoveError, CancelledError

if TYPE_CHECKING:
    from pathlib import Path

    from bgremove.config import Config
    from bgremove.contract import Backend
    from bgremove.imaging import SourceImage
    from bgremove.jobs import JobResult

log = logging.getLogger(__name__)


class FileJob:
    """``src`` cut out into ``dst`` (see the module docstring)."""

    def __init__(self, src: Path, dst: Path, config: Config, *,
                 done: Callable[[JobResult], None], hooks: JobHooks | None = None) -> None:
        self.src = src
        self.dst = dst
        self.config = config
        self.hooks = hooks or JobHooks()
        self._done = done
        self._started = time.monotonic()
        self._warm_lock = threading.Lock()
        # None, "warming", "finishing"; then the one report claimed: "done" (ok), "ended" (failed)
        self._warm_state: str | None = None
        self._warmed = threading.Event()
        self._source: SourceImage | None = None  # the input decoded by ``warm``

    def prepare(self) -> Prepared:
        from bgremove.imaging import prepare_file

        self._started = time.monotonic()
        return prepare_file(self.src, max_pixels=self.config.input.max_pixels,
                            max_upload_bytes=self.config.wavespeed.max_upload_bytes,
                            max_upload_side=self.config.wavespeed.max_upload_side)

    def warm(self, prepared: Prepared) -> None:
        """Decode the input ahead of the finish, while the task waits (see ``Pipeline``);
        skipped once the finish has begun, which then decodes it itself."""
        from bgremove.imaging import load_source

        with self._warm_lock:
            if self._warm_state is not None:
                return
            self._warm_state = "warming"
        try:
            source = load_source(prepared, self.src)
            with self._warm_lock:
                if self._warm_state != "ended":  # else the job failed meanwhile: not kept
                    self._source = source
        finally:
            self._warmed.set()

    def finish(self, prepared: Prepared, result: Result) -> None:
        from bgremove.imaging import finish_file
        from bgremove.jobs import JobResult

        with self._warm_lock:
            warming = self._warm_state == "warming"
            self._warm_state = "finishing"
        if warming:
            self._warmed.wait()  # it runs on another CPU worker: it ends on its own
        source, self._source = self._source, None
        warning = finish_file(prepared, result, self.src, self.dst, self.config.output,
                              source=source)
        with self._warm_lock:
            if self._warm_state == "ended":  # given up meanwhile: it has its one result
                return
            self._warm_state = "done"
        self._done(JobResult(self.src, self.dst, "ok", None, time.monotonic() - self._started,
                             result.task_id, result.requests, warning))

    def failed(self, error: BaseException) -> None:
        from bgremove.jobs import JobResult

        with self._warm_lock:
            if self._warm_state == "done":  # given up as its finish reported: reported once
                return
            self._warm_state, self._source = "ended", None
        problem = _without_frames(job_error(self.src, error))
        self._done(JobResult(self.src, None, "failed", problem, time.monotonic() - self._started,
                             getattr(problem, "task_id", None)))


def remove_file(src: Path, dst: Path, backend: Backend, config: Config,
                hooks: JobHooks | None = None) -> JobResult:
    """Cut out ``src`` into ``dst``: the stages every image takes, run on this thread
    (``run_one``); raises ``BgremoveError`` on failure, nothing written then."""
    from bgremove.stages._one import run_one

    ended: list[JobResult] = []
    run_one(FileJob(src, dst, config, done=ended.append, hooks=hooks), backend)
    result = ended[0]
    if result.error is not None:
        raise result.error
    return result


def _without_frames(error: BgremoveError) -> BgremoveError:
    """``error`` (and the errors it was raised from) without tracebacks: a job's result is
    kept to the batch's end, and a traceback keeps each frame's locals (a failed finish's
    decoded images, some 200 MB at 24 MP). ``job_error`` has logged what a bug's shows."""
    todo: list[BaseException | None] = [error]
    seen: set[int] = set()
    while todo:
        link = todo.pop()
        if link is not None and id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            todo += (link.__cause__, link.__context__)
    return error


def job_error(src: Path, error: BaseException) -> BgremoveError:
    """``error`` as the one ``BgremoveError`` a file's result reports; a bug is one line too
    (it must cost one file, not the batch), its traceback in the debug log."""
    if isinstance(error, BgremoveError):
        return error
    if isinstance(error, KeyboardInterrupt):
        return CancelledError("cancelled")
    from bgremove.logs import redact

    log.debug("unexpected error on %s", src, exc_info=error)
    # any library's text, printed and put in --json output: never with the key in it
    return BgremoveError(redact(f"{src}: internal error: {type(error).__name__}: {error}"),
                         hint="please report it with --log-level debug output")
