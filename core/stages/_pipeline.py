"""The pipeline: jobs through prepare (CPU) -> remote (IO threads + one poller) -> finish (CPU).

Each stage has its own limit, so the memory a job holds follows the CPU work, not the
number of tasks waiting at the service:

    pending     started, not yet prepared                       (no limit: a job is small)
    preparing   ``job.prepare()`` on the CPU pool
    prepared    its upload made, waiting to be sent             } at most ``prepare_ahead``
    sending     upload + submit on the IO pool                  \\
    waiting     in the poller's heap; each poll on the IO pool   |  at most ``in_flight``:
    ready       done at the service, waiting for the finish pool |  the account's tasks
    fetching    download on the IO pool                         /  } at most ``finish_room``
    finishing   ``job.finish()`` on the CPU pool                   }

A finishing job no longer holds one of the ``in_flight`` places (its task is over and its
result downloaded), so the next upload starts while it is written; ``finish_room`` bounds
the results held.

A job may also have ``warm(prepared)``: work its finish needs that does not need the result
(decoding its input), run on the CPU pool from the start of its upload, while it is sent and
its task waits (the CPU's idle time: a sync submit returns only when the task is done).
At most ``finish_room`` jobs hold what their warm made, from its start to their end, so
that memory stays bounded too; a job whose finish has begun is not warmed.

A job ends exactly once: ``finish`` returned, or ``failed(error)`` was called (from
whichever stage failed; a failure of ``finish`` itself too).

Waiting for the jobs is bounded: ``drain(timeout)``, and ``close()`` waits at most as long
as the open jobs may take (``longest``: each has its overall deadline at the service and
``CPU_SECONDS`` for its prepare and finish, ``in_flight`` at a time). Past that a step is
stuck: the jobs still open end with ``ServiceTimeoutError`` and ``close`` returns (a step
still running goes on on its own thread; its outcome is dropped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from bgremove.contract import CancelToken, JobHooks, Prepared
from bgremove.errors import CancelledError, ServiceTimeoutError
from bgremove.stages import _steps
from bgremove.stages._poller import Poller

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend, Result
    from bgremove.stages._remote import Call, Remote

log = logging.getLogger(__name__)

#: The most IO threads a pipeline starts by default (uploads, polls, downloads).
MAX_IO_THREADS = 16
#: The stages a job holds an ``in_flight`` place in: from its upload to its download
#: (``_steps.AT_SERVICE`` without "finishing").
HOLDS_PLACE = _steps.AT_SERVICE[:-1]
#: The stages in which no step of a job runs: its own cancel ends it there at once.
IDLE = ("pending", "prepared", "waiting", "ready")
#: Seconds a job's prepare and finish may take together before ``close`` calls it stuck
#: (a 100 MP photo takes some 10 s on one slow core).
CPU_SECONDS = 300.0


class Job(Protocol):
    """What the pipeline runs. ``prepare`` and ``finish`` run on the CPU pool."""

    hooks: JobHooks

    def prepare(self) -> Prepared:
        """Read and check the input, make the upload. Keep no decoded pixels."""
        ...

    def finish(self, prepared: Prepared, result: Result) -> None:
        """Write the output (``prepared`` has no upload bytes left)."""
        ...

    def failed(self, error: BaseException) -> None:
        """Called once instead of ``finish`` when any stage failed (or was cancelled)."""
        ...


@dataclasses.dataclass(eq=False)
class _Entry:
    """One job in the pipeline, with the stage it is in."""

    job: Job
    hooks: JobHooks  # the job's, with the pipeline's cancel token in it
    stage: str = "pending"
    prepared: Prepared | None = None
    call: Call | None = None
    task_id: str | None = None  # its task's, once the result is downloaded (for a give-up)
    ended: bool = False
    warmed: bool = False  # its ``warm`` was handed to the CPU pool (it holds a warm place)


class Pipeline:
    """Runs jobs through the three stages (see the module docstring). Thread-safe.

    ``backend`` is what ``make_backend`` built (its ``remote`` when it has one, else its
    ``cut_out`` in a ``CutoutRemote``), or ``remote`` is given. ``in_flight``
    jobs at most are between the start of their upload and the end of their download;
    ``cpu_workers`` (default: the cores) run prepare and finish; ``io_threads``
    (default: ``in_flight``, at most ``MAX_IO_THREADS``) upload, poll and download.
    Sync waiting (a thread blocked per task) is used only when the remote wants it and
    every task in flight can have an IO thread to itself. ``cancel`` (default: a new
    token) cancels every job; each job's own ``hooks.cancel`` cancels that job, at once
    unless a step of it runs (its task, if sent, is left to the service).
    """

    def __init__(self, backend: Backend | None, config: Config, *, in_flight: int,
                 cpu_workers: int | None = None, io_threads: int | None = None,
                 cancel: CancelToken | None = None, remote: Remote | None = None) -> None:
        if remote is None:
            if backend is None:
                raise ValueError("a Pipeline needs a backend or a remote")
            from bgremove.stages._remote import remote_for

            remote = remote_for(backend)
        self.remote = remote
        self.config = config
        self.in_flight = max(1, in_flight)
        self.cpu_workers = max(1, cpu_workers or os.cpu_count() or 1)
        self.io_threads = max(1, io_threads or min(self.in_flight, MAX_IO_THREADS,
                                                   remote.threads or MAX_IO_THREADS))
        self.sync = remote.wants_sync and self.in_flight <= self.io_threads
        #: Prepared-but-unsent jobs (each holds its upload's bytes): enough to keep every
        #: IO thread uploading and every CPU worker preparing the next.
        self.prepare_ahead = self.io_threads + self.cpu_workers
        #: Downloads start only while fewer results than this wait for or are in finish.
        self.finish_room = self.cpu_workers + 1
        self.cancel_token = cancel or CancelToken()
        self._cpu = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="bgremove-cpu")
        self._io = ThreadPoolExecutor(self.io_threads, thread_name_prefix="bgremove-io")
        self._poller = Poller(self._run_io)
        # A cancel of the token itself (the GIMP bridge's), not only ``cancel()``, hands
        # out the polls still waiting, so those jobs end now rather than at their next poll.
        self.cancel_token.on_cancel(self._poller.flush)
        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._pending: deque[_Entry] = deque()
        self._prepared: deque[_Entry] = deque()
        self._ready: deque[_Entry] = deque()
        self._cold: deque[_Entry] = deque()  # sent, with a ``warm`` not yet handed out
        self._warm = 0  # jobs warmed or warming, not yet ended (at most ``finish_room``)
        self._open: set[_Entry] = set()  # started and not yet ended
        self._closed = False

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc == (None, None, None))

    # -- the public calls ---------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Queue ``job``; returns at once. Raises RuntimeError after ``close``."""
        entry = _Entry(job, _steps.job_hooks(job, self.cancel_token))
        with self._lock:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self._open.add(entry)
            self._counts["pending"] += 1
            self._pending.append(entry)
            self._pump()
        token = entry.hooks.cancel
        if token is not None and token is not self.cancel_token:  # it has its own too:
            token.on_cancel(lambda: self._cancelled(entry))  # that one ends it at once

    def counts(self) -> dict[str, int]:
        """How many jobs are in each stage now (see the module docstring)."""
        with self._lock:
            return {stage: n for stage, n in self._counts.items() if n}

    def open_jobs(self) -> int:
        """Jobs started and not yet ended."""
        with self._lock:
            return len(self._open)

    def at_service(self) -> int:
        """Jobs between the start of their upload and the end of their finish (all may be
        billed)."""
        with self._lock:
            return sum(self._counts[s] for s in _steps.AT_SERVICE)

    def drain(self, timeout: float) -> bool:
        """Wait until every job started has ended, at most ``timeout`` seconds; False if
        some had not by then. A Ctrl-C of the calling thread is raised within
        ``WAKE_SECONDS``, even one that landed just before the wait began."""
        end = time.monotonic() + timeout
        with self._lock:
            while self._open:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, _steps.WAKE_SECONDS))
        return True

    def longest(self) -> float:
        """Seconds the jobs open now may still take: ``in_flight`` at a time, each with its
        overall deadline at the service (``wavespeed.timeouts.overall``) and ``CPU_SECONDS``."""
        with self._lock:
            rounds = -(-len(self._open) // self.in_flight)
        return rounds * (self.config.wavespeed.timeouts.overall + CPU_SECONDS)

    def cancel(self) -> None:
        """Cancel every job: those not yet sent end at once, the others at their next step
        (a sync submit already sent cannot be interrupted; its job ends when it answers)."""
        self.cancel_token.cancel()
        with self._lock:
            dropped = [*self._pending, *self._prepared, *self._ready]
            self._pending.clear()
            self._prepared.clear()
            self._ready.clear()
        for entry in dropped:
            self._end(entry, CancelledError("cancelled"))
        self._poller.flush()

    def close(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """No more jobs. ``wait``: let the started ones end first, for at most ``timeout``
        seconds (default ``longest()``); the jobs still open then end with
        ``ServiceTimeoutError`` (a step of theirs is stuck). Else, or then, cancel what is
        left and return without waiting for the threads (a submit in flight keeps its own)."""
        with self._lock:
            self._closed = True
        if wait:
            seconds = self.longest() if timeout is None else timeout
            try:
                drained = self.drain(seconds)
            except BaseException:  # a Ctrl-C while waiting: stop now, as ``wait=False``
                self.close(wait=False)
                raise
            if not drained:
                wait = False
                self._give_up(seconds)
        if not wait:
            self.cancel()
        self._poller.close()
        # Queued steps still run (a cancelled job's see the cancel at once), so each job
        # ends once, with ``failed`` called, however the pipeline was closed.
        self._io.shutdown(wait=wait)
        self._cpu.shutdown(wait=wait)

    def _give_up(self, seconds: float) -> None:
        """End every job still open: ``close``'s wait for them is over."""
        with self._lock:
            stuck = [(entry, _given_up(entry, seconds)) for entry in self._open]
        log.warning("%d image(s) did not end within %.0f s: given up", len(stuck), seconds)
        for entry, error in stuck:
            self._end(entry, error)

    # -- scheduling (under the lock) ------------------------------------------------------

    def _pump(self) -> None:
        """Move jobs on as far as the limits allow: finishes first, then sends, then prepares."""
        counts = self._counts
        while self._ready and counts["fetching"] + counts["finishing"] < self.finish_room:
            entry = self._ready.popleft()
            if entry.ended:  # by its own cancel
                continue
            self._move(entry, "fetching")
            self._submit(self._io, self._fetch, entry)
        while (self._prepared and counts["sending"] < self.io_threads
               and sum(counts[s] for s in HOLDS_PLACE) < self.in_flight):
            entry = self._prepared.popleft()
            if entry.ended:
                continue
            self._move(entry, "sending")
            self._submit(self._io, self._send, entry)
            if getattr(entry.job, "warm", None) is not None:
                self._cold.append(entry)  # warmed below while it is sent and waits
        while (self._pending and counts["preparing"] < self.cpu_workers
               and counts["preparing"] + counts["prepared"] < self.prepare_ahead):
            entry = self._pending.popleft()
            if entry.ended:
                continue
            self._move(entry, "preparing")
            self._submit(self._cpu, self._prepare, entry)
        while self._cold and (self._cold[0].ended or self._cold[0].stage == "finishing"):
            self._cold.popleft()  # too late to warm
        if len(self._cold) > 2 * self.in_flight:  # ended ones behind a front still waiting
            self._cold = deque(e for e in self._cold if not e.ended and e.stage != "finishing")
        while self._cold and self._warm < self.finish_room:
            entry = self._cold.popleft()
            if entry.ended or entry.stage == "finishing":
                continue
            entry.warmed = True
            self._warm += 1
            with contextlib.suppress(RuntimeError):  # shut down: the job ends anyway
                self._cpu.submit(self._warm_up, entry)

    def _move(self, entry: _Entry, stage: str) -> None:
        self._counts[entry.stage] -= 1
        self._counts[stage] += 1
        entry.stage = stage

    def _submit(self, pool: ThreadPoolExecutor, step: Callable[[_Entry], None],
                entry: _Entry) -> None:
        try:
            pool.submit(step, entry)
        except RuntimeError:  # shut down (closed without waiting): the job ends here
            threading.Thread(target=self._end, args=(entry, CancelledError("cancelled")),
                             daemon=True).start()

    def _run_io(self, action: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: ``cancel`` ended the job
            self._io.submit(action)

    def _advance(self, entry: _Entry, stage: str, queue: deque[_Entry] | None = None) -> None:
        with self._lock:
            if entry.ended:
                return
            self._move(entry, stage)
            if queue is not None:
                queue.append(entry)
            self._pump()

    # -- the steps (on the pools) -----------------------------------------------------------

    def _prepare(self, entry: _Entry) -> None:
        try:
            entry.prepared = _steps.prepare(entry.job, entry.hooks)
        except Exception as exc:
            self._end(entry, exc)
            return
        self._advance(entry, "prepared", self._prepared)

    def _send(self, entry: _Entry) -> None:
        prepared = entry.prepared
        assert prepared is not None
        try:
            entry.call = call = _steps.send(entry.job, self.remote, prepared, entry.hooks,
                                          sync=self.sync)
        except Exception as exc:
            self._end(entry, exc)
            return
        entry.prepared = call.prepared  # without the upload's bytes
        self._wait_or_fetch(entry, call)

    def _warm_up(self, entry: _Entry) -> None:
        prepared = entry.prepared
        if entry.ended or entry.stage == "finishing" or prepared is None:
            return
        _steps.warm(entry.job, prepared)

    def _poll(self, entry: _Entry) -> None:
        call = entry.call
        if call is None:  # ended meanwhile (its own cancel): nothing more is asked
            return
        try:
            _steps.poll(self.remote, call)
        except Exception as exc:
            self._end(entry, exc)
            return
        self._wait_or_fetch(entry, call)

    def _wait_or_fetch(self, entry: _Entry, call: Call) -> None:
        if call.due is None:
            self._advance(entry, "ready", self._ready)
            return
        self._advance(entry, "waiting")
        if entry.ended:
            return
        try:
            self._poller.add(call.due, lambda: self._poll(entry))
        except RuntimeError:  # closed without waiting
            self._end(entry, CancelledError("cancelled"))

    def _fetch(self, entry: _Entry) -> None:
        call = entry.call
        assert call is not None
        try:
            result = self.remote.fetch(call)
        except Exception as exc:
            self._end(entry, exc)
            return
        with self._lock:
            if entry.ended:
                return
            entry.task_id = result.task_id
            self._move(entry, "finishing")
            self._submit(self._cpu, lambda e: self._finish(e, result), entry)
            self._pump()  # its place is free: the next upload may start

    def _finish(self, entry: _Entry, result: Result) -> None:
        assert entry.prepared is not None
        if entry.ended:  # given up by ``close`` while it waited for a CPU worker
            return
        try:
            _steps.finish(entry.job, entry.prepared, result, entry.hooks)
        except Exception as exc:
            self._end(entry, exc)
            return
        self._end(entry, None)

    def _cancelled(self, entry: _Entry) -> None:
        """The job's own cancel: where no step of it runs (queued, or its task waiting in
        the poller) it ends now, its task left to the service, and nothing more is asked
        for it; a step running sees the cancel itself."""
        with self._lock:
            if entry.ended or entry.stage not in IDLE:
                return
            entry.ended = True  # a queue still holding it skips it
        self._ended(entry, CancelledError("cancelled"))

    def _end(self, entry: _Entry, error: BaseException | None) -> None:
        """The job's one end: ``failed(error)`` when there is one, then its slot freed."""
        with self._lock:
            if entry.ended:
                return
            entry.ended = True
        self._ended(entry, error)

    def _ended(self, entry: _Entry, error: BaseException | None) -> None:
        if error is not None:
            _steps.fail(entry.job, error)  # a bug in that callback must not stop the pipeline
        with self._lock:
            self._counts[entry.stage] -= 1
            entry.stage = "ended"
            entry.call = None
            self._open.discard(entry)
            if entry.warmed:
                self._warm -= 1
            self._pump()
            self._lock.notify_all()


def _given_up(entry: _Entry, seconds: float) -> ServiceTimeoutError:
    """The error a job still open when ``close`` gives up ends with (under the lock). One in
    its finish has its result paid for and downloaded: the error says so, with the task id,
    so that a caller fetches it (or finds the output written) instead of paying again."""
    late = f"did not end within {seconds:.0f} s (a step is stuck); given up"
    if entry.stage != "finishing":
        return ServiceTimeoutError(late)
    task = entry.task_id
    if task is None:  # a local model's: nothing paid
        return ServiceTimeoutError(f"{late}, but its output may still be written")
    return ServiceTimeoutError(
        f"{late}, but its result was downloaded (task {task}) and may still be written",
        hint=f"look for the output before running it again; `bgremove fetch {task}` "
             "gets the result without paying again",
        task_id=task)
