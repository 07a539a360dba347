"""A batch of files: find the inputs, plan the outputs, run the jobs N at a time.

    expand_inputs(inputs, suffix, out_dir, recursive=) -> Found   images, and what was left out
    plan_outputs(inputs, out_dir, output, subdirs=)    -> [(src, dst)]  no two on one output
    run_batch(plan, backend, config, on_result=..., overwrite=) -> [JobResult]

``run_batch`` keeps a result that is already there (status "skipped": its input is
not sent again) unless ``overwrite``, checks each output folder before the first
upload into it (``OutputCheck``) and stops starting new images once the service has
shown that every one would fail (``Breaker``); the images it skips fail with
``NotAttemptedError``. It reports each result through ``on_result`` as it ends, on
the calling thread; how results are shown is the caller's business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import (
    AccountSuspendedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BgremoveError,
    InputError,
    NotAttemptedError,
    OutputError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceConnectionError,
    ServiceTimeoutError,
    TaskFailedError,
)
from bgremove.files import probe_writable, sha256_file

if TYPE_CHECKING:
    from bgremove import tasklog
    from bgremove.account import RateLimiter
    from bgremove.config import Config, OutputConfig
    from bgremove.contract import Backend, JobHooks, Prepared, Result
    from bgremove.jobs import JobResult
    from bgremove.origins import Origins
    from bgremove.stages import Pipeline

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".mpo", ".png", ".webp", ".tif", ".tiff", ".bmp",
                  ".gif"}

#: Called with each result as it ends, on the thread that called ``run_batch``.
ResultFn = Callable[["JobResult"], None]
#: Called on Ctrl-C with the number of images still in flight (they may still be billed).
InterruptFn = Callable[[int], None]


@dataclass
class Found:
    """What ``expand_inputs`` found, and what it left out of the folders it looked in."""

    images: list[Path] = field(default_factory=list)
    #: image -> its folder below the folder named on the command line (with ``recursive``)
    subdirs: dict[Path, Path] = field(default_factory=dict)
    subfolders: int = 0  # subfolders not entered (no ``recursive``)
    subfolder_parents: list[str] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)  # files that are not images, by ending


def is_earlier_result(name: Path, suffix: str) -> bool:
    """``x-nobg.png`` and the collision names ``x-nobg-2.png``: a result, never an input.

    With an empty suffix a result cannot be told from a photo by its name: none is.
    """
    return bool(suffix) and re.search(f"{re.escape(suffix)}(-[0-9]+)?$", name.stem) is not None


def expand_inputs(inputs: list[str], suffix: str = "-nobg", out_dir: Path | None = None, *,
                  recursive: bool = False) -> Found:
    """Files as given (missing ones too: they fail with a clear line); folders -> their images.

    Each file is taken once, however it is named. From a folder, earlier results
    (``<stem><suffix>.<ext>``, ``<stem><suffix>-2.<ext>``, with or without ``-o``) and
    the output folder are left out, so running a command again does not cut out (and pay
    for) the cut-outs; a file named on the command line is always taken.
    Hidden files and folders are ignored; subfolders are entered with ``recursive`` only
    and counted otherwise, as are the files that are not images.
    """
    found = Found()
    seen: set[str] = set()
    skip_dir = path_key(out_dir) if out_dir is not None else None

    def add(path: Path, subdir: Path | None = None) -> None:
        if path_key(path) not in seen:
            seen.add(path_key(path))
            found.images.append(path)
            if subdir is not None and subdir.parts:
                found.subdirs[path] = subdir

    def scan(folder: Path, subdir: Path) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError:
            add(folder)  # unreadable: it fails later with one clear line
            return
        left_out = 0
        for child in children:
            if child.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                if child.is_dir():
                    if path_key(child) == skip_dir:
                        continue
                    if recursive:
                        scan(child, subdir / child.name)
                    else:
                        left_out += 1
                elif child.is_file():
                    if child.suffix.lower() not in IMAGE_SUFFIXES:
                        found.others[child.suffix.lower() or "(no ending)"] += 1
                    elif not is_earlier_result(child, suffix):
                        add(child, subdir)
        if left_out:
            found.subfolders += left_out
            found.subfolder_parents.append(str(folder))

    for raw in inputs:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            add(path)
        elif path_key(path) != skip_dir:
            scan(path, Path())
    return found


def plan_outputs(inputs: list[Path], out_dir: Path | None, output: OutputConfig, *,
                 subdirs: dict[Path, Path] | None = None,
                 origins: Origins | None = None) -> list[tuple[Path, Path]]:
    """Pair each input with an output; never two inputs on one output, never onto an input.

    With ``out_dir`` an image found in a subfolder goes to the same subfolder of it. The
    pairing depends on the inputs alone, so the same command names the same results again.
    With ``origins`` it holds across commands too: an image gets the name its whole folder
    would give it (the folder's images that sort before it take their names first, given
    or not), and a name whose file ``origins`` knows as another input's result is passed
    over for the next free one, so a result is only ever skipped or replaced by its own input.
    """
    from bgremove.jobs import output_path_for

    subdirs = dict(subdirs or {})
    taken: set[str] = {path_key(p) for p in inputs}
    named: dict[str, Path] = {}  # input (or folder sibling) -> its output
    # (folder, family) -> its images as a folder run takes them, and how many are named
    families: dict[tuple[str, str], tuple[list[Path], list[int]]] = {}

    def folder_of(src: Path) -> Path | None:
        return out_dir / subdirs[src] if out_dir is not None and src in subdirs else out_dir

    def name(src: Path) -> Path:
        key = path_key(src)
        if key not in named:
            base = output_path_for(src, folder_of(src), output)
            dst, n = base, 1
            while path_key(dst) in taken or (origins is not None
                                             and origins.is_anothers(dst, src)):
                n += 1
                dst = base.with_name(f"{base.stem}-{n}{base.suffix}")
            taken.add(path_key(dst))
            named[key] = dst
        return named[key]

    kin_of: dict[Path, tuple[str, str]] = {}  # input -> its (folder, family)

    if origins is not None:  # a folder run's images are all its inputs: none is an output
        grouped: dict[str, dict[str, list[str]]] = {}  # folder -> family -> image names
        folder_keys: dict[Path, str] = {}
        for src in inputs:
            if src.parent not in folder_keys:
                folder_keys[src.parent] = path_key(src.parent)
            folder_key = folder_keys[src.parent]
            stem = _stem_family(src.name, out_dir, output.suffix)
            kin_of[src] = (folder_key, stem)
            if folder_key not in grouped:
                grouped[folder_key] = _folder_families(src.parent, out_dir, output.suffix)
            if (folder_key, stem) not in families:
                kin = sorted(src.parent / n for n in grouped[folder_key].get(stem, []))
                kin = [p for p in kin if not is_earlier_result(p, output.suffix) and _is_file(p)]
                families[folder_key, stem] = (kin, [0])
                taken.update(path_key(p) for p in kin)
    plan: list[tuple[Path, Path]] = []
    for src in inputs:
        if origins is not None:  # its kin that sort before it take their names first
            kin, done = families[kin_of[src]]
            while done[0] < len(kin) and kin[done[0]] < src.parent / src.name:
                if src in subdirs:
                    subdirs.setdefault(kin[done[0]], subdirs[src])
                name(kin[done[0]])
                done[0] += 1
        plan.append((src, name(src)))
    return plan


_COLLISION_NUMBERS = re.compile(r"(-[0-9]+)+$")


def _stem_family(name: str, out_dir: Path | None, suffix: str) -> str:
    """The family of an image's output names: its output's stem (``output_path_for``),
    case-folded, without trailing ``-N`` groups (``x``, ``x-2``, ``x-2-1`` can meet)."""
    stem = os.path.splitext(name)[0]
    return _COLLISION_NUMBERS.sub("", (stem if out_dir is not None else stem + suffix).casefold())


def _folder_families(folder: Path, out_dir: Path | None, suffix: str) -> dict[str, list[str]]:
    """The names a run of ``folder`` could take as images (``expand_inputs``), by family;
    by name alone, cheap for a big folder: the caller checks the few it needs."""
    if out_dir is not None and path_key(folder) == path_key(out_dir):
        return {}  # the output folder is never read as inputs
    families: dict[str, list[str]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(".") and \
                        os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                    families.setdefault(_stem_family(name, out_dir, suffix), []).append(name)
    except OSError:
        pass
    return families


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
              on_result: ResultFn, on_interrupt: InterruptFn | None = None,
              overwrite: bool = False, origins: Origins | None = None) -> list[JobResult]:
    """Run every job through a ``bgremove.stages.Pipeline`` with ``config.concurrency``
    images at the service at once, within the account's limits (``bgremove.account``: its
    level and images per minute, counted when each submit leaves); report each as it ends.
    One image runs the same steps on this thread (``bgremove.stages.Alone``): handed
    between the pipeline's threads, it would wait for each to wake.

    A ``dst`` that already exists is kept and its image not sent (status "skipped"),
    unless ``overwrite``. Each result written is recorded in ``origins`` as its input's.
    The breaker is asked before an image is read and again before
    it is sent, and told each outcome before its slot goes to the next image, so a
    decision to stop never lags behind the work. On Ctrl-C, images not sent never are,
    images at the service are abandoned, ``on_interrupt`` is told how many, and
    ``KeyboardInterrupt`` propagates.
    """
    import queue

    from bgremove.account import RateLimiter, account_limits
    from bgremove.choices import ACCOUNT_LIMITS
    from bgremove.contract import CancelToken
    from bgremove.stages import WAKE_SECONDS, Alone

    cancel = CancelToken()
    ended: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
    check_output = OutputCheck()
    breaker = Breaker()
    results: list[JobResult] = []
    concurrency, per_minute = config.concurrency, 0
    if backend.name == "wavespeed":  # the account's limits are the service's
        limits = account_limits(config)
        concurrency, per_minute = limits.concurrency, limits.images_per_minute
    if per_minute and len(plan) > per_minute:  # say why the batch is slow
        level = config.wavespeed.account_level
        log.info("pacing to %d images a minute (%s)", per_minute,
                 f"account level {level}" if level and per_minute == ACCOUNT_LIMITS[level][1]
                 else "wavespeed.images_per_minute or --images-per-minute")
    rate = RateLimiter(per_minute)
    pending = Pending(config) if backend.name == "wavespeed" else None
    runner: Alone | Pipeline
    if len(plan) == 1:
        runner, most_open = Alone(backend, cancel=cancel), 1
    else:
        from bgremove.stages import Pipeline

        runner = pipeline = Pipeline(backend, config, in_flight=min(concurrency, len(plan)),
                                     cancel=cancel)
        # Jobs are started as others end, never many more than the pipeline can hold at
        # once: a folder of 100,000 images costs 100,000 paths, not 100,000 jobs.
        most_open = pipeline.in_flight + pipeline.prepare_ahead + pipeline.cpu_workers
    todo = iter(plan)
    waiting: list[tuple[Path, Path]] = []  # the next image, waiting for a rate token
    started = 0

    def feed() -> None:
        """Start images until the pipeline holds enough, or the next one must wait for
        images per minute (it holds a token from its start until its submit leaves)."""
        nonlocal started
        while started - len(results) < most_open:
            pair = waiting.pop() if waiting else next(todo, None)
            if pair is None:
                return
            src, dst = pair
            if not overwrite and _is_file(dst):
                ended.put(_kept(src, dst))
            elif rate.try_acquire():
                runner.start(_BatchJob(src, dst, config, breaker, check_output, ended.put,
                                       rate, pending=pending, origins=origins))
            else:
                waiting.append(pair)
                return
            started += 1

    try:
        feed()
        while len(results) < len(plan):
            # In slices: a Ctrl-C that lands just before a blocking wait begins does not
            # wake it (Python only flags it), and an unbounded wait would hold it until
            # some image ended, which may be hours at the service. Each slice also lets
            # an image waiting for images per minute start once a token is free.
            try:
                result = ended.get(timeout=WAKE_SECONDS)
            except queue.Empty:
                feed()  # back in Python: a flagged Ctrl-C is raised here
                continue
            results.append(result)
            on_result(result)
            feed()
    except KeyboardInterrupt:
        # Stop at once: images not sent never are; images at the service are abandoned
        # (their tasks may still run and be billed, so the caller is told how many).
        in_flight = runner.at_service()
        runner.close(wait=False)
        if on_interrupt is not None:
            on_interrupt(in_flight)
        raise
    runner.close()
    return results


class Pending:
    """What earlier runs left pending at this service (``tasklog.pending``: submits whose
    answer never came, tasks whose result was never saved), handed out one per image of
    the same bytes. Thread-safe."""

    def __init__(self, config: Config) -> None:
        self.service = config.wavespeed.base_url
        self._lock = threading.Lock()
        self._left: dict[str, list[tasklog.Pending]] | None = None

    def take(self, src: Path) -> tuple[str, tasklog.Pending] | None:
        """The file's sha256 and what is pending of its bytes; None, without reading the
        file, when nothing is pending at all (the usual case)."""
        from bgremove import tasklog

        with self._lock:
            if self._left is None:
                self._left = tasklog.pending(self.service)
            if not any(self._left.values()):
                return None
        try:
            digest = sha256_file(src)
        except OSError:
            return None  # prepare says what is wrong with it
        with self._lock:
            left = self._left.get(digest)
            return (digest, left.pop(0)) if left else None


class _BatchJob:
    """A ``FileJob`` that asks the breaker first, checks its output folder before anything
    is sent (a result that cannot be saved is not paid for) and keeps the task log: each
    submit is recorded before it leaves, so one whose answer never came (Ctrl-C, a crash)
    is looked up in the service's list by the next run of the same bytes, not sent again."""

    def __init__(self, src: Path, dst: Path, config: Config, breaker: Breaker,
                 check_output: OutputCheck, report: ResultFn, rate: RateLimiter,
                 pending: Pending | None = None, origins: Origins | None = None) -> None:
        from bgremove import tasklog
        from bgremove.contract import JobHooks
        from bgremove.stages import FileJob

        self._digest: str | None = None  # of the input's bytes, once prepared
        self._sent: str | None = None  # the upload URL of this run's submit
        self._lost: str | None = None  # an earlier run's open submit, being looked up
        service = pending.service if pending is not None else None

        def on_task(task_id: str) -> None:  # `bgremove tasks` names the input
            tasklog.record(task_id, input=src, sha256=self._digest,
                           upload_url=self._sent or self._lost, service=service)

        def on_submit(sent_at: float, upload_url: str) -> None:
            rate.commit(held=self._take_token())  # counted from now, as the service counts
            if service is not None and self._digest is not None:
                tasklog.record_submit(upload_url, input=src, sha256=self._digest,
                                      sent_at=sent_at, service=service)
            if self._lost is not None:  # the list surely holds no task of it: the one resend
                tasklog.close_submit(self._lost)
                self._lost = None
            self._sent = upload_url

        hooks = JobHooks(on_task=on_task, on_submit=on_submit)
        # Read before the job starts: the pipeline runs it with a copy of its hooks.
        self._earlier = pending.take(src) if pending is not None else None
        if self._earlier is not None:
            self._take_over(src, self._earlier[1], hooks)
        self._file = FileJob(src, dst, config, done=self._done, hooks=hooks)
        self.hooks = self._file.hooks
        self._breaker = breaker
        self._check_output = check_output
        self._report = report
        self._rate = rate
        self._origins = origins
        self._token = True  # its rate token, until its first submit leaves
        self._token_lock = threading.Lock()

    def prepare(self) -> Prepared:
        self._breaker.check(self._file.src)
        self._check_output(self._file.dst)
        prepared = self._file.prepare()
        self._digest = prepared.digest
        if self._earlier is not None and self._earlier[0] != prepared.digest:
            raise InputError(f"{self._file.src} changed while it was being read",
                             hint="run the command again once it is written")
        return prepared

    def _take_over(self, src: Path, earlier: tasklog.Pending, hooks: JobHooks) -> None:
        """Go on with what an earlier run left pending of these bytes instead of paying
        again: its task's result, or its lost submit looked up in the service's list."""
        from bgremove import tasklog

        hooks.known_tasks = set(tasklog.read()) - {earlier.task} if earlier.task else set(
            tasklog.read())
        if earlier.task is not None:
            log.info("%s: an earlier run left task %s unsaved: getting its result",
                     src, earlier.task)
            hooks.resume_task = earlier.task
        elif earlier.upload_url is not None and earlier.sent_at is not None:
            log.info("%s: an earlier run sent it and its answer never came: looking for "
                     "its task", src)
            hooks.lost_submit = (earlier.sent_at, earlier.upload_url)
            self._lost = earlier.upload_url

    def before_send(self) -> None:
        self._breaker.check(self._file.src)

    def warm(self, prepared: Prepared) -> None:
        self._file.warm(prepared)

    def finish(self, prepared: Prepared, result: Result) -> None:
        self._file.finish(prepared, result)

    def failed(self, error: BaseException) -> None:
        self._file.failed(error)

    def _take_token(self) -> bool:
        """Whether it still held its rate token; it does not any more."""
        with self._token_lock:
            held, self._token = self._token, False
        return held

    def _done(self, result: JobResult) -> None:
        from bgremove import tasklog

        if self._take_token():  # no submit left: nothing counts
            self._rate.release()
        self._breaker.trips(result)  # here, before this job's slot goes to the next
        if result.task_id and result.output:
            tasklog.record(result.task_id, output=result.output)
        elif result.task_id is not None and _task_gone(result.error):
            tasklog.record(result.task_id, closed=True)  # the service's final word on it
        elif (self._sent is not None and result.task_id is None
              and isinstance(result.error, _SUBMIT_REFUSED)):
            tasklog.close_submit(self._sent)
        # Anything else leaves what is open open: the next run asks the service again.
        if self._origins is not None and result.status == "ok" and result.output:
            self._origins.record(result.output, result.input, self._digest)
        self._report(result)


#: The service's answers to a submit that created no task.
_SUBMIT_REFUSED = (BadRequestError, AuthenticationError, AccountSuspendedError,
                   PayloadTooLargeError, RateLimitError)


def _task_gone(error: BgremoveError | None) -> bool:
    """Whether the service said the task will never give a result: it failed, or it is
    not known (any more)."""
    return isinstance(error, TaskFailedError) or (
        isinstance(error, APIStatusError) and error.status_code == 404)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _kept(src: Path, dst: Path) -> JobResult:
    """The result of an image whose output is already there: nothing sent, nothing written."""
    from bgremove.jobs import JobResult

    return JobResult(src, dst, "skipped", None, 0.0)


class Breaker:
    """Stops starting new images once the service has shown every one would fail.

    A refused key or a suspended account fails every image the same way: the
    first one stops the batch. An outage (no connection, timeouts) stops it
    after three failures in a row, each with its own retries used up. Images
    already running finish; the rest are reported as not attempted. Thread-safe:
    the workers count their own results.
    """

    OUTAGE_IN_A_ROW = 3
    #: Errors every later image would meet too: the first one stops the batch.
    REFUSED = (AuthenticationError, AccountSuspendedError)
    #: Errors of an outage: this many in a row stop the batch.
    OUTAGE = (ServiceConnectionError, ServiceTimeoutError)

    def __init__(self) -> None:
        self.reason: BgremoveError | None = None
        self._outages = 0
        self._lock = threading.Lock()

    def trips(self, result: JobResult) -> bool:
        """Count ``result``; True the first time the batch should stop."""
        error = result.error
        with self._lock:
            if self.reason is not None:
                return False
            self._outages = self._outages + 1 if isinstance(error, self.OUTAGE) else 0
            if error is not None and (isinstance(error, self.REFUSED)
                                      or self._outages >= self.OUTAGE_IN_A_ROW):
                self.reason = error
                return True
        return False

    def check(self, src: Path) -> None:
        """``NotAttemptedError`` once the batch has stopped."""
        with self._lock:
            reason = self.reason
        if reason is not None:
            raise NotAttemptedError(f"{src}: not attempted: {reason}")


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
                self._folders[key] = self.probe(folder)
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
    def probe(folder: Path) -> OutputError | None:
        """Why ``folder`` cannot take results (it is created if missing), or None."""
        try:
            probe_writable(folder)
        except OSError as exc:
            return OutputError(f"cannot write to output folder {folder}: {exc.strerror or exc}",
                               hint="check its permissions and free space, or give another folder "
                               "with -o")
        return None
