"""A batch of files: find the inputs, plan the outputs, run the jobs N at a time.

    expand_inputs(inputs, suffix, out_dir) -> [Path]          files, and folders' images
    plan_outputs(inputs, out_dir, output)  -> [(src, dst)]    no two inputs on one output
    run_batch(plan, backend, config, on_result=...) -> [JobResult]

``run_batch`` checks each output folder before the first upload into it
(``OutputCheck``) and stops starting new images once the service has shown that
every one would fail (``Breaker``); the images it skips fail with
``NotAttemptedError``. It reports each result through ``on_result`` as it ends,
on the calling thread; how results are shown is the caller's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import (
    AccountSuspendedError,
    AuthenticationError,
    BgremoveError,
    NotAttemptedError,
    OutputError,
    ServiceConnectionError,
    ServiceTimeoutError,
)

if TYPE_CHECKING:
    from bgremove.backends import Backend, JobHooks
    from bgremove.config import Config, OutputConfig
    from bgremove.jobs import JobResult

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}

#: Called with each result as it ends, on the thread that called ``run_batch``.
ResultFn = Callable[["JobResult"], None]
#: Called on Ctrl-C with the number of images still in flight (they may still be billed).
InterruptFn = Callable[[int], None]


def expand_inputs(inputs: list[str], suffix: str = "-nobg",
                  out_dir: Path | None = None) -> list[Path]:
    """Files as given (missing ones too: they fail with a clear line); folders -> their images.

    Each file is taken once, however it is named. From a folder, earlier results
    (``<stem><suffix>.<ext>``) and the output folder's own files are left out, so
    running the same command twice does not cut out (and pay for) the cut-outs.
    """
    paths: list[Path] = []
    seen: set[str] = set()
    skip_dir = path_key(out_dir) if out_dir is not None else None

    def add(path: Path) -> None:
        if path_key(path) not in seen:
            seen.add(path_key(path))
            paths.append(path)

    for raw in inputs:
        path = Path(raw)
        try:
            if not path.is_dir():
                add(path)
                continue
            if path_key(path) == skip_dir:
                continue
            children = sorted(path.iterdir())
        except OSError:
            add(path)  # unreadable or a bad name: it fails later with one clear line
            continue
        for child in children:
            with contextlib.suppress(OSError):
                if (child.suffix.lower() in IMAGE_SUFFIXES and not child.name.startswith(".")
                        and not (out_dir is None and child.stem.endswith(suffix))
                        and child.is_file()):
                    add(child)
    return paths


def plan_outputs(inputs: list[Path], out_dir: Path | None,
                 output: OutputConfig) -> list[tuple[Path, Path]]:
    """Pair each input with an output; never two inputs on one output, never onto an input."""
    from bgremove.jobs import output_path_for

    taken: set[str] = {path_key(p) for p in inputs}
    plan: list[tuple[Path, Path]] = []
    for src in inputs:
        dst = output_path_for(src, out_dir, output)
        n = 1
        while path_key(dst) in taken:
            n += 1
            base = output_path_for(src, out_dir, output)
            dst = base.with_name(f"{base.stem}-{n}{base.suffix}")
        taken.add(path_key(dst))
        plan.append((src, dst))
    return plan


def path_key(path: Path) -> str:
    """One key per file, however it is named.

    The real path (``..`` and symlinks resolved), so ``-o in/../in`` cannot overwrite an
    input; case-folded because on case-insensitive filesystems X.png and x.png are one file.
    """
    try:
        return os.path.realpath(path).casefold()
    except (OSError, ValueError):
        return str(path.absolute()).casefold()


def run_batch(plan: list[tuple[Path, Path]], backend: Backend, config: Config, *,
              on_result: ResultFn, on_interrupt: InterruptFn | None = None
              ) -> list[JobResult]:
    """Run every job on a pool of ``config.concurrency`` threads; report each as it ends.

    On Ctrl-C, images not started never start, images in flight are abandoned,
    ``on_interrupt`` is told how many, and ``KeyboardInterrupt`` propagates.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from bgremove.backends import CancelToken, JobHooks

    cancel = CancelToken()
    results: list[JobResult] = []
    check_output = OutputCheck()

    def one(src: Path, dst: Path) -> JobResult:
        return _run_one(src, dst, backend, config, JobHooks(cancel=cancel), check_output)

    pool = ThreadPoolExecutor(max_workers=max(1, min(config.concurrency, len(plan) or 1)),
                              thread_name_prefix="bgremove")
    futures = {pool.submit(one, src, dst): src for src, dst in plan}
    breaker = Breaker()
    try:
        for future in as_completed(futures):
            if future.cancelled():
                result = breaker.skipped(futures[future])
            else:
                result = future.result()
                if breaker.trips(result):
                    for pending in futures:
                        pending.cancel()  # only images not started yet
            results.append(result)
            on_result(result)
    except KeyboardInterrupt:
        # Stop at once: queued images never start; images in flight are abandoned (their
        # tasks may still run and be billed, so the caller is told how many).
        cancel.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        if on_interrupt is not None:
            on_interrupt(sum(1 for f in futures if f.running()))
        raise
    pool.shutdown(wait=True)
    return results


class Breaker:
    """Stops starting new images once the service has shown every one would fail.

    A refused key or a suspended account fails every image the same way: the
    first one stops the batch. An outage (no connection, timeouts) stops it
    after three failures in a row, each with its own retries used up. Images
    already running finish; the rest are reported as not attempted.
    """

    OUTAGE_IN_A_ROW = 3
    #: Errors every later image would meet too: the first one stops the batch.
    REFUSED = (AuthenticationError, AccountSuspendedError)
    #: Errors of an outage: this many in a row stop the batch.
    OUTAGE = (ServiceConnectionError, ServiceTimeoutError)

    def __init__(self) -> None:
        self.reason: BgremoveError | None = None
        self._outages = 0

    def trips(self, result: JobResult) -> bool:
        """Count ``result``; True the first time the batch should stop."""
        if self.reason is not None:
            return False
        error = result.error
        self._outages = self._outages + 1 if isinstance(error, self.OUTAGE) else 0
        if error is not None and (isinstance(error, self.REFUSED)
                                  or self._outages >= self.OUTAGE_IN_A_ROW):
            self.reason = error
            return True
        return False

    def skipped(self, src: Path) -> JobResult:
        """The result of an image the batch did not start."""
        from bgremove.jobs import JobResult

        error = NotAttemptedError(f"{src}: not attempted: {self.reason}")
        return JobResult(src, None, "failed", error, 0.0)


def _run_one(src: Path, dst: Path, backend: Backend, config: Config, hooks: JobHooks,
             check_output: OutputCheck) -> JobResult:
    from bgremove.jobs import JobResult, remove_file

    started = time.monotonic()
    try:
        check_output(dst)  # before the upload: a result we cannot save is not paid for
        return remove_file(src, dst, backend, config, hooks)
    except BgremoveError as exc:
        return JobResult(src, None, "failed", exc, time.monotonic() - started,
                         getattr(exc, "task_id", None))
    except Exception as exc:  # a bug must cost one file, not the batch
        log.debug("unexpected error on %s", src, exc_info=True)
        error = BgremoveError(f"{src}: internal error: {type(exc).__name__}: {exc}",
                              hint="please report it with --log-level debug output")
        return JobResult(src, None, "failed", error, time.monotonic() - started)


class OutputCheck:
    """Checks, before an image is uploaded, that its result could be saved.

    Each output folder is probed once per batch (created if needed, then a test
    file written and removed); each output name is checked against the
    filesystem's name length limit.
    """

    def __init__(self) -> None:
        self._folders: dict[str, OutputError | None] = {}
        self._lock = threading.Lock()

    def __call__(self, dst: Path) -> None:
        folder = dst.parent
        with self._lock:
            key = path_key(folder)
            if key not in self._folders:
                self._folders[key] = self._probe(folder)
            problem = self._folders[key]
        if problem is not None:
            raise problem
        try:
            name_max = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            name_max = 255
        if len(os.fsencode(dst.name)) > name_max:
            raise OutputError(f"cannot write {dst}: the name is longer than {name_max} bytes",
                              hint="rename the input to a shorter name", transient=False)

    @staticmethod
    def _probe(folder: Path) -> OutputError | None:
        import tempfile

        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".bgremove-", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return OutputError(f"cannot write to output folder {folder}: {exc.strerror or exc}",
                               hint="check the -o path, its permissions and free space")
        return None
