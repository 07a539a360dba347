"""The hot-folder daemon: INBOX -> cut-outs in OUTBOX, originals to done/ or failed/.

Threads::

    watchdog observer --announce--> ReadinessTracker <--check_due-- readiness thread
                                                                    |
                                                      Scheduler (ready files, retries)
                                                                    |
                                                      N worker threads (the slow work)
    main thread: housekeeping (heartbeats, rescans, supervision, status), shutdown

A worker takes a stable file, checks that it decodes, claims it (``claims``),
hashes it, asks the journal what to do (new, resume, duplicate, busy), and
walks the job through its states (``journal``): submit and wait (task id
journaled first), stage the cut-out under ``OUTBOX/.bgremove/staging``, link
it to a free output name, then move the original to done/. Every step can
be repeated after a crash without paying twice or writing twice.

Failures: permanent errors send the file to failed/ with ``<name>.error.json``
at once; transient ones retry with capped exponential backoff for
``watch.retry_for_seconds`` while the other files go on. An unwritable
OUTBOX (or a full disk) pauses intake, keeps every input, and resumes when a
probe write succeeds.

Duplicates: a file whose content (with the same settings) was already
processed is not sent again; its output is a hard link to (or copy of) the
earlier cut-out, then it moves to done/. ``watch.reprocess`` forces a new cut-out.

The pieces live next door: ``scheduler`` (the work queue), ``fingerprint`` (journal
keys), ``placement`` (free output names), ``folder_health`` (pause and probe) and
``failures`` (the error.json report).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgremove import tasklog
from bgremove.contract import CancelToken, JobHooks
from bgremove.errors import (
    APIStatusError,
    BgremoveError,
    CancelledError,
    ConfigError,
    ImageTooLargeError,
    InputError,
    OutputError,
    RateLimitError,
    TaskFailedError,
    UnreadableImageError,
    UnsafeInputError,
)
from bgremove.files import probe_writable
from bgremove.retry import backoff_delay
from bgremove.watcher.claims import Claims, make_owner_id
from bgremove.watcher.events import Watcher
from bgremove.watcher.failures import report_task_id, write_error_report
from bgremove.watcher.fingerprint import settings_fingerprint
from bgremove.watcher.folder_health import FolderBlocked, FolderHealth
from bgremove.watcher.journal import Job, Journal
from bgremove.watcher.limits import CostGuard, Limits, RateLimiter, effective_limits
from bgremove.watcher.naming import Layout, ensure_folder, folder_fd, move_no_replace, shown
from bgremove.watcher.outage import Outage, outage_of
from bgremove.watcher.placement import check_output_dir, place_duplicate, place_staged
from bgremove.watcher.readiness import ReadinessTracker, Ready
from bgremove.watcher.scheduler import Scheduler
from bgremove.watcher.untrusted import input_limit, read_file

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend
    from bgremove.imaging import SourceImage

#: A claimed file as read once: the sha256 of its bytes, and those bytes decoded (None
#: when they do not decode; the reason travels as the input error).
Content = tuple[str, "SourceImage | None"]

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 2.0
BACKOFF_MAX = 60.0
HEARTBEAT_SECONDS = 2.0
SUPERVISE_SECONDS = 2.0
OUTPUT_PROBE_SECONDS = 2.0
#: Unexpected errors (bugs, odd file systems) on one file before it goes to failed/.
MAX_UNEXPECTED_ATTEMPTS = 5


class Daemon:
    """One ``bgremove watch`` run. ``run()`` blocks; other threads may call the stop methods."""

    def __init__(self, config: Config, layout: Layout, *,
                 backend_factory: Callable[[], Backend] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None,
                 backoff_initial: float = BACKOFF_INITIAL) -> None:
        self.config = config
        self.backoff_initial = backoff_initial
        self.watch = config.watch
        self.layout = layout
        self.limits: Limits = effective_limits(config.watch)
        self.started = time.time()
        self.owner = make_owner_id(started=self.started)
        self.cancel = CancelToken()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._on_status = on_status
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self.tracker = ReadinessTracker(self.watch.stable_seconds, self.watch.settle_seconds)
        self.scheduler = Scheduler()
        self.journal: Journal | None = None
        self.claims = Claims(layout.claims, self.owner,
                             stale_seconds=self.watch.stale_claim_seconds)
        self.watcher = Watcher(layout, self._announce, polling=self.watch.polling,
                               poll_seconds=self.watch.poll_seconds)
        self.rate = RateLimiter(self.limits.images_per_minute)
        self.guard: CostGuard | None = None
        self._lock = threading.Lock()
        self._active_keys: set[str] = set()
        self._in_flight = 0
        self._busy_workers = 0
        self._threads: list[threading.Thread] = []
        self.health = FolderHealth(layout.outbox, self.staging)
        self.outage = Outage(self.watch.outage_retry_seconds)
        self._heartbeat_failing = False
        self._unexpected: dict[Path, int] = {}
        self._unsaved_tasks: dict[str, str] = {}  # key -> task id the journal could not take
        self._unclaimable: set[Path] = set()
        self._foreign_claims = 0
        self._cap_reached = False
        self._blocked_exit = False  # --once stopped for an unwritable folder
        self._fingerprint = ""
        self._ext = ".png"
        self.session = {"done": 0, "failed": 0, "duplicates": 0, "retries": 0}

    # -- control ----------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new files; in-flight jobs finish (up to ``watch.shutdown_grace``),
        unless an outage means they cannot: then they stop now (the journal resumes them)."""
        if self.outage.reason is not None:
            if not self._stopping.is_set():
                log.info("stopping now (%s): the jobs in flight resume on the next start",
                         self.outage.reason)
            self.abort()
            return
        if not self._stopping.is_set():
            log.info("stopping: no new files; waiting up to %.0f s for %d in flight",
                     self.watch.shutdown_grace, self._in_flight)
        self._stopping.set()

    def abort(self) -> None:
        """Stop now: cancel in-flight work (the journal resumes it next time)."""
        self._stopping.set()
        self.cancel.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        return self._stopped.wait(timeout)

    # -- status -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        paused = self.health.blocked or self.outage.reason or (
            self.guard.paused if self.guard else None)
        if self.watcher.offline:
            paused = "INBOX unreachable"
        with self._lock:
            in_flight = self._in_flight
        return {
            "owner": self.owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "inbox": shown(self.layout.inbox),
            "outbox": shown(self.layout.outbox),
            "done_dir": shown(self.layout.done),
            "failed_dir": shown(self.layout.failed),
            "recursive": self.layout.recursive,
            "mode": self.watcher.mode,
            "queued": len(self.tracker) + len(self.scheduler),
            "in_flight": in_flight,
            "done": self.session["done"],
            "failed": self.session["failed"],
            "duplicates": self.session["duplicates"],
            "retries": self.session["retries"],
            "paused": paused,
            "stopping": self.stopping,
            "concurrency": self.limits.concurrency,
            "images_per_minute": self.limits.images_per_minute,
        }

    # -- main -------------------------------------------------------------------

    def run(self) -> int:
        """Watch until stopped (or, with ``watch.once``, until INBOX is drained)."""
        from bgremove.backends import make_backend, resolve_backend_name
        from bgremove.imaging import extension_for

        layout = self.layout
        try:  # before anything is taken from INBOX: an unusable OUTBOX is a setup error
            layout.outbox.mkdir(parents=True, exist_ok=True)
            ensure_folder(self.staging, layout.trusted_base(layout.outbox))
            # no data written here (start-up stays quick): a full disk later pauses intake
            probe_writable(layout.outbox)
            probe_writable(self.staging)
        except OSError as exc:
            where = f"{shown(exc.filename)}: " if exc.filename else ""
            raise ConfigError(f"OUTBOX {layout.outbox} cannot be written: "
                              f"{where}{exc.strerror or exc}",
                              hint="check its permissions and free space, or remove what is in "
                              "the way; nothing was taken from INBOX") from None
        journal_path = Path(self.watch.journal).expanduser() if self.watch.journal \
            else layout.state_dir / "journal.sqlite3"
        self.journal = Journal(journal_path, check=True)
        self.guard = CostGuard(self.journal, per_hour=self.limits.max_per_hour,
                               per_day=self.limits.max_per_day)
        self._fingerprint = settings_fingerprint(self.config,
                                                 resolve_backend_name(self.config))
        self._ext = extension_for(self.config.output.format)
        self._backend = (self._backend_factory() if self._backend_factory
                         else make_backend(self.config, wait_mode="poll"))
        try:
            self.claims.start()
            self._heartbeat()
            log.info("watching %s -> %s (done: %s, failed: %s; %s%s; %d at once%s)",
                     layout.inbox, layout.outbox, layout.done, layout.failed,
                     "recursive, " if layout.recursive else "",
                     "polling" if self.watch.polling else "events",
                     self.limits.concurrency,
                     f", {self.limits.images_per_minute}/min" if self.limits.images_per_minute
                     else "")
            self._recover()
            if self.watch.once:
                self._report_foreign_claims()
                self.watcher.rescan()
            else:
                self.watcher.start()
            self._start_threads()
            self._housekeeping()
            return self._shutdown()
        finally:
            self.watcher.stop()
            self.tracker.close()
            self.scheduler.close()
            for thread in self._threads:
                thread.join(timeout=5.0)
            self._heartbeat(stopped=True)
            if self._backend is not None:
                self._backend.close()
            self.claims.stop()
            self.journal.close()
            self._stopped.set()

    @property
    def staging(self) -> Path:
        return self.layout.state_dir / "staging"

    def _start_threads(self) -> None:
        readiness = threading.Thread(target=self._readiness_loop, name="bgremove-readiness",
                                     daemon=True)
        self._threads.append(readiness)
        for i in range(self.limits.concurrency):
            self._threads.append(threading.Thread(target=self._worker_loop,
                                                  name=f"bgremove-worker-{i}", daemon=True))
        for thread in self._threads:
            thread.start()

    def _announce(self, path: Path) -> None:
        if not self.stopping:
            self.tracker.seen(path)

    def _recover(self) -> None:
        """Re-take files left in claim folders by a previous (killed) run."""
        recovered = self.claims.mine() + self.claims.recover()
        for claimed, rel, unsafe in recovered:
            self.scheduler.put(claimed=claimed, rel=rel, input_error=unsafe)
        if recovered:
            log.info("resuming %d file(s) left by a stopped daemon", len(recovered))

    def _report_foreign_claims(self) -> None:
        """--once: files claimed by daemons that still look alive are not waited for."""
        others = self.claims.claimed_by_others()
        for owner, count in sorted(others.items()):
            log.warning("%d file(s) are claimed by daemon %s, which still seems to run: not "
                        "waiting for them (they are recovered once it is gone for %.0f s)",
                        count, owner, self.watch.stale_claim_seconds)
        self._foreign_claims = sum(others.values())

    def _housekeeping(self) -> None:
        now = time.monotonic()
        next_beat = next_supervise = next_probe = now
        next_rescan = now + self.watch.rescan_seconds
        next_recover = now + max(self.watch.stale_claim_seconds / 4, 1.0)
        while not self.stopping:
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat()
                self.claims.heartbeat()
                next_beat = now + HEARTBEAT_SECONDS
            if self.health.blocked and now >= next_probe:
                self.health.probe(self._heartbeat)
                next_probe = now + OUTPUT_PROBE_SECONDS
            if not self.watch.once:
                if now >= next_supervise:
                    self.watcher.supervise()
                    next_supervise = now + SUPERVISE_SECONDS
                if now >= next_rescan:
                    self._safe_rescan()
                    next_rescan = now + self.watch.rescan_seconds
                if now >= next_recover:
                    for claimed, rel, unsafe in self.claims.recover():
                        self.scheduler.put(claimed=claimed, rel=rel, input_error=unsafe)
                    next_recover = now + max(self.watch.stale_claim_seconds / 4, 1.0)
            elif self.health.blocked or self.outage.reason:
                log.error("%s: stopping (--once); the files not finished stay for the next "
                          "run", self.health.blocked or self.outage.reason)
                self._blocked_exit = True
                break
            elif self._cap_reached:
                log.warning("cost cap reached (%s): stopping; the files not started stay for "
                            "the next run", self.guard.paused if self.guard else "?")
                break
            elif self._idle():
                log.info("INBOX drained")
                break
            if self._on_status is not None:
                self._on_status(self.snapshot())
            self._stopping.wait(0.1 if self.watch.once else 0.25)

    def _safe_rescan(self) -> None:
        if self.watcher.offline:
            return
        try:
            self.watcher.rescan()
        except OSError as exc:
            log.warning("rescan of %s failed: %s", self.layout.inbox, exc)

    def _idle(self) -> bool:
        with self._lock:
            busy = self._busy_workers
        return busy == 0 and len(self.tracker) == 0 and len(self.scheduler) == 0

    def _shutdown(self) -> int:
        self._stopping.set()
        self.watcher.stop()
        deadline = time.monotonic() + self.watch.shutdown_grace
        while time.monotonic() < deadline and not self.cancel.cancelled:
            with self._lock:
                if self._busy_workers == 0:
                    break
            time.sleep(0.02)
        if self._busy_workers:
            log.warning("shutdown grace over: %d job(s) still running are left for the next "
                        "start (the journal resumes them)", self._busy_workers)
        self.cancel.cancel()
        self.scheduler.close()
        self.tracker.close()
        if self.watch.once and self._unclaimable:
            log.error("%d file(s) could not be taken from INBOX (see above)",
                      len(self._unclaimable))
        problems = (self.session["failed"] or self._cap_reached or self._blocked_exit
                    or self._foreign_claims
                    or (self.watch.once and self._unclaimable))
        return 1 if problems else 0

    def _heartbeat(self, stopped: bool = False) -> bool:
        if self.journal is None:
            return False
        try:
            self.journal.daemon_heartbeat(self.owner, host=socket.gethostname(), pid=os.getpid(),
                                          started=self.started,
                                          status=json.dumps(self.snapshot()), stopped=stopped)
        except Exception as exc:  # the status is a convenience: never stop the daemon for it
            if not self._heartbeat_failing:
                log.warning("cannot write the daemon status to the journal %s: %s",
                            self.journal.path, exc)
            self._heartbeat_failing = True
            return False
        if self._heartbeat_failing:
            log.info("daemon status written to the journal again")
            self._heartbeat_failing = False
        return True

    # -- readiness ----------------------------------------------------------------

    def _readiness_loop(self) -> None:
        while not self.stopping:
            for ready in self.tracker.check_due():
                self.scheduler.put(ready=ready)
            self.tracker.wait_for_work(0.5)

    # -- workers -----------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self.stopping:
            if not self._intake_open():
                continue
            item = self.scheduler.get(0.25)
            if item is None:
                continue
            with self._lock:
                self._busy_workers += 1
            try:
                if item.ready is not None:
                    self._take_ready(item.ready)
                elif item.claimed is not None and item.rel is not None:
                    self._process(item.claimed, item.rel, item.input_error)
            except Exception:  # _process handles its own; this is the last line of defence
                log.exception("unexpected error on %s", shown(item.rel or item.ready))
            finally:
                with self._lock:
                    self._busy_workers -= 1

    def _intake_open(self) -> bool:
        """Wait while a folder is unwritable or the cost cap is reached; False to re-check."""
        if self.health.blocked is not None or not self.outage.may_try():
            self.cancel.wait(0.25)
            return False
        guard = self.guard
        if guard is not None and guard.paused is not None and not guard.open_now():
            if self.watch.once:
                self._cap_reached = True
            self.cancel.wait(0.5)
            return False
        return True

    def _take_ready(self, ready: Ready) -> None:
        handed_back = False
        try:
            handed_back = self._take_ready_inner(ready)
        finally:
            if not handed_back:  # claimed, vanished, failed to claim: never left handed out
                self.tracker.forget(ready.path)

    def _read(self, path: Path, dir_fd: int | None = None
              ) -> tuple[Content, InputError | None, os.stat_result]:
        """Read ``path`` once (no link followed), hash and decode those same bytes.

        Raises ``UnsafeInputError`` (a link, a FIFO...: not read) and ``OSError``."""
        from bgremove.imaging import load_image

        max_pixels = self.config.input.max_pixels
        data, st = read_file(path, limit=input_limit(max_pixels), dir_fd=dir_fd)
        digest = hashlib.sha256(data).hexdigest()
        try:
            return (digest, load_image(path, max_pixels=max_pixels, data=data)), None, st
        except InputError as exc:
            return (digest, None), exc, st

    def _take_ready_inner(self, ready: Ready) -> bool:
        """Returns True when the file was handed back to the tracker (``not_yet``)."""
        rel = self.layout.relative(ready.path)
        if rel is None or self.stopping:
            return False
        try:  # its folder, reached without following a link (a sub-folder swapped for one)
            folder = folder_fd(self.layout.inbox / rel.parent, self.layout.inbox, create=False)
        except OSError as exc:
            log.debug("not taking %s: %s", shown(rel), exc)
            return False
        try:
            return self._take_from(ready, rel, folder)
        finally:
            os.close(folder)

    def _take_from(self, ready: Ready, rel: Path, folder_fd: int) -> bool:
        path = ready.path
        input_error: BgremoveError | None = None
        content: Content | None = None
        st: os.stat_result | None = None
        try:
            content, input_error, st = self._read(path, folder_fd)
        except UnsafeInputError as exc:
            input_error = exc
        except FileNotFoundError:
            return False
        except OSError as exc:
            input_error = UnreadableImageError(f"{shown(path)}: cannot read: "
                                               f"{exc.strerror or exc}",
                                               hint="check the file's permissions")
        if input_error is not None and not ready.settled \
                and not isinstance(input_error, (ImageTooLargeError, UnsafeInputError)):
            self.tracker.not_yet(ready)
            return True
        try:
            st = st or os.lstat(path.name, dir_fd=folder_fd)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (ready.size, ready.mtime_ns):
            self.tracker.not_yet(ready, decode_failed=False)
            return True
        try:
            claimed = self.claims.claim(Path(path.name), rel, src_dir_fd=folder_fd)
        except OSError as exc:
            if path not in self._unclaimable:  # a rescan finds it again: say so once
                log.error("cannot take %s (moving it into the claim folder failed: %s); it "
                          "stays in INBOX", shown(rel), exc.strerror or exc,
                          extra={"event": "warning", "input": shown(rel)})
            self._unclaimable.add(path)
            return False
        self._unclaimable.discard(path)
        self.tracker.forget(path)
        if claimed is None:
            log.debug("%s was taken by another daemon", shown(rel))
            return False
        if content is not None and not _same_file(claimed, st):
            content = None  # swapped since it was read: read what was claimed
        self._process(claimed, rel, input_error, content)
        return False

    def _process(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                 content: Content | None = None) -> None:
        """Work on a claimed file; whatever goes wrong, the file is requeued or failed.

        ``content`` is the file as read by the readiness check, when there was one;
        otherwise it is read (once) here.
        """
        try:
            self._process_inner(claimed, rel, input_error, content)
        except FolderBlocked as exc:
            self.health.block(exc.folder, exc.reason, journal=exc.journal, below=exc.below)
            self._requeue(claimed, rel, input_error, OUTPUT_PROBE_SECONDS)
        except sqlite3.Error as exc:
            self._block_journal(exc)
            self._requeue(claimed, rel, input_error, OUTPUT_PROBE_SECONDS)
        except Exception as exc:
            self._unexpected_error(claimed, rel, input_error, exc)
        else:
            self._unexpected.pop(claimed, None)

    def _requeue(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                 delay: float) -> None:
        if os.path.lexists(claimed):
            self.scheduler.put(time.monotonic() + delay, claimed=claimed, rel=rel,
                               input_error=input_error)

    def _unexpected_error(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                          exc: Exception) -> None:
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
                self._fail(None, claimed, rel, error, attempts=attempts,
                           note=f"gave up after {attempts} unexpected errors")
            except Exception as exc2:  # the journal or failed/ is broken too: keep the file
                log.error("cannot move %s to failed/ either (%s); retrying later", shown(rel),
                          exc2)
                self._requeue(claimed, rel, input_error, BACKOFF_MAX)
            return
        delay = backoff_delay(attempts, initial=self.backoff_initial, cap=BACKOFF_MAX, spread=0)
        log.exception("unexpected error on %s (attempt %d of %d); retrying in %.1f s",
                      shown(rel), attempts, MAX_UNEXPECTED_ATTEMPTS, delay)
        with self._lock:
            self.session["retries"] += 1
        self._requeue(claimed, rel, input_error, delay)

    def _process_inner(self, claimed: Path, rel: Path, input_error: BgremoveError | None,
                       content: Content | None) -> None:
        assert self.journal is not None
        started = time.monotonic()
        if isinstance(input_error, UnsafeInputError):  # never opened: no journal key
            self._fail(None, claimed, rel, input_error)
            return
        if content is None:
            try:
                content, input_error, _st = self._read(claimed, self.claims.dir_fd())
            except UnsafeInputError as exc:
                self._fail(None, claimed, rel, exc)
                return
            except FileNotFoundError:
                log.warning("claimed file %s is gone", shown(claimed))
                return
            except OSError as exc:
                log.warning("cannot read claimed file %s: %s; retrying", shown(claimed), exc)
                self._requeue(claimed, rel, input_error, self.backoff_initial)
                return
        digest, source = content
        key = f"{digest}:{self._fingerprint}"
        with self._lock:
            mine_busy = key in self._active_keys
            if not mine_busy:
                self._active_keys.add(key)
        if mine_busy:
            self._requeue(claimed, rel, input_error, 1.0)
            return
        try:
            begin = self.journal.begin(key, owner=self.owner, input=str(rel),
                                       claim=str(claimed), reprocess=self.watch.reprocess,
                                       is_alive=self.claims.is_alive)
            if begin.action == "busy":
                self._requeue(claimed, rel, input_error, 2.0)
                return
            if begin.action == "duplicate":
                self._duplicate(claimed, rel, begin.job)
                return
            assert begin.job is not None
            if input_error is not None:
                self._fail(begin.job, claimed, rel, input_error)
                return
            with self._lock:
                self._in_flight += 1
            try:
                self._run_job(begin.job, claimed, rel, started, source)
            finally:
                with self._lock:
                    self._in_flight -= 1
        finally:
            with self._lock:
                self._active_keys.discard(key)

    def _run_job(self, job: Job, claimed: Path, rel: Path, started: float,
                 source: SourceImage | None) -> None:
        assert self.journal is not None
        try:
            job = self._advance(job, claimed, rel, source)
        except CancelledError:
            log.info("%s: interrupted by shutdown; it resumes on the next start", shown(rel))
            return
        except FolderBlocked as exc:
            self.journal.count_attempt(job.key, kind="output", message=exc.reason)
            raise
        except BgremoveError as exc:
            self._handle_error(job, claimed, rel, exc)
            return
        except OSError as exc:
            self._handle_error(job, claimed, rel, OutputError(
                f"cannot write the result of {shown(rel)}: {exc.strerror or exc}"))
            return
        seconds = time.monotonic() - started
        self.outage.end()
        with self._lock:
            self.session["done"] += 1
        log.info("done %s -> %s in %.2f s (task %s)", shown(rel), shown(job.output), seconds,
                 job.task_id or "-",
                 extra={"event": "done", "input": shown(rel), "output": shown(job.output),
                        "seconds": round(seconds, 3), "task_id": job.task_id})

    def _advance(self, job: Job, claimed: Path, rel: Path, source: SourceImage | None) -> Job:
        """Take a job from its journaled state to done; each step is safe to repeat."""
        assert self.journal is not None and self._backend is not None
        from bgremove.jobs import remove_file

        journal, key = self.journal, job.key
        staged = self.staging / f"{key[:24]}{self._ext}"
        if job.state in ("claimed", "submitted"):
            check_output_dir(self.layout.outbox / rel.parent,
                             self.layout.trusted_base(self.layout.outbox))
            resume = job.task_id if job.state == "submitted" else self._unsaved_tasks.get(key)
            guard = self.guard
            assert guard is not None
            reserved = False
            if resume is None:
                # waiting for the rate limit or cost cap ends at shutdown: nothing sent yet
                if not self.rate.acquire(self.cancel, lambda: self.stopping):
                    raise CancelledError("shutting down")
                if not guard.acquire(self.cancel, lambda: self.stopping or (
                        self.watch.once and guard.paused is not None)):
                    if self.watch.once and guard.paused is not None:
                        self._cap_reached = True
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
                self._unsaved_tasks[key] = task_id
                tasklog.record(task_id, input=self.layout.inbox / rel)
                try:
                    journal.update(key, state="submitted", task_id=task_id)
                except sqlite3.Error as exc:  # keep waiting; the id is kept in memory
                    log.warning("cannot journal task %s of %s: %s", task_id, shown(rel), exc)
                    self._block_journal(exc)

            def on_submit(sent_at: float, upload_url: str) -> None:
                # before the submit leaves: a crash from here on is reconciled on restart
                journal.update(key, submit_sent=sent_at, upload_url=upload_url)

            lost = None
            if resume is None and job.submit_sent is not None and job.upload_url:
                lost = (job.submit_sent, job.upload_url)
                log.info("%s: a submit was sent before the last stop and its answer never "
                         "came: looking for its task", shown(rel))
            hooks = JobHooks(cancel=self.cancel, on_task=on_task, resume_task=resume,
                             on_submit=on_submit, lost_submit=lost,
                             known_tasks=journal.known_tasks())
            try:
                result = remove_file(claimed, staged, self._backend, self.config, hooks,
                                     source=source)
            finally:
                if reserved:  # no task id was reported: a local backend, or nothing was sent
                    guard.release()
            if result.warning:  # e.g. no subject found: the result is placed all the same
                log.warning("%s: %s", shown(rel), result.warning,
                            extra={"event": "warning", "input": shown(rel)})
            journal.update(key, state="staged", staged=str(staged),
                           task_id=result.task_id or resume or self._unsaved_tasks.get(key))
            self._unsaved_tasks.pop(key, None)
            job = self._reload(key)
        if job.state in ("staged", "placing"):
            output = place_staged(journal, job, staged,
                                  self.layout.output_for(rel, self._ext), rel,
                                  below=self.layout.trusted_base(self.layout.outbox))
            journal.update(key, state="placed", output=str(output))
            if job.task_id:
                tasklog.record(job.task_id, output=output)
            job = self._reload(key)
        if job.state == "placed":
            self._move(claimed, self.layout.done, rel)
            journal.update(key, state="done", claim=None)
            journal.add_event("done", input=str(rel), output=job.output, task_id=job.task_id)
            job = self._reload(key)
        return job

    def _move(self, claimed: Path, folder: Path, rel: Path) -> Path:
        """Move a claimed original to done/ or failed/; ``FolderBlocked`` if that folder fails."""
        below = self.layout.trusted_base(folder)
        try:
            target = move_no_replace(claimed, folder / rel, below=below,
                                     src_dir_fd=self.claims.dir_fd())
        except OSError as exc:
            if not os.path.lexists(claimed):
                raise  # not a folder problem: the file is gone
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and exc.filename:
                # something planted in the way: blocked until that very entry is fixed
                raise FolderBlocked(Path(exc.filename), f"cannot move {shown(rel)} into "
                                    f"{shown(folder)}: {shown(exc.filename)}: {exc.strerror}",
                                    below=below) from None
            raise FolderBlocked(folder, f"cannot move {shown(rel)} into {shown(folder)}: "
                                        f"{exc.strerror or exc}") from None
        self.claims.release(claimed)
        return target

    def _reload(self, key: str) -> Job:
        assert self.journal is not None
        job = self.journal.get(key)
        assert job is not None
        return job

    # -- outcomes ---------------------------------------------------------------

    def _duplicate(self, claimed: Path, rel: Path, first: Job | None) -> None:
        """Same content as an earlier input: link its cut-out to this input's own output
        name (no second upload), then move the input to done/."""
        assert self.journal is not None
        output: Path | None = None
        if first is not None and first.output:
            try:
                output = place_duplicate(Path(first.output), self.layout.output_for(rel, self._ext),
                                         self.staging,
                                         below=self.layout.trusted_base(self.layout.outbox))
            except FileNotFoundError:  # the earlier result vanished this instant
                self._requeue(claimed, rel, None, 1.0)
                return
            except (OSError, OutputError) as exc:
                raise FolderBlocked(self.layout.outbox, f"cannot write the output of "
                                    f"{shown(rel)}: {getattr(exc, 'strerror', None) or exc}"
                                    ) from None
        done = self._move(claimed, self.layout.done, rel)
        self.journal.add_event("duplicate", input=str(rel), output=str(output) if output else None,
                               task_id=first.task_id if first else None)
        with self._lock:
            self.session["duplicates"] += 1
        log.info("duplicate %s: same content as %s: its cut-out is also %s (not sent again); "
                 "moved to %s", shown(rel), shown(first.input if first else "?"), shown(output),
                 shown(done),
                 extra={"event": "duplicate", "input": shown(rel), "output": shown(output),
                        "seconds": 0.0, "task_id": first.task_id if first else None})

    def _handle_error(self, job: Job, claimed: Path, rel: Path, exc: BgremoveError) -> None:
        assert self.journal is not None
        code = getattr(exc, "code", None) if isinstance(exc, TaskFailedError) else \
            getattr(exc, "status_code", None)
        if isinstance(exc, OutputError):
            newly = self.health.block(self.layout.outbox, str(exc))
            if newly:
                self.journal.add_event("warning", input=str(rel), error_kind=exc.kind,
                                       error=str(exc))
            self.journal.count_attempt(job.key, kind=exc.kind, message=str(exc))
            self._requeue(claimed, rel, None, OUTPUT_PROBE_SECONDS)
            return
        outage = outage_of(exc)
        if outage is not None:  # not this file's fault: pause intake, keep the file
            if self.outage.begin(outage, exc):
                self.journal.add_event("warning", input=str(rel), error_kind=exc.kind,
                                       error=str(exc))
            self._requeue(claimed, rel, None, self.outage.retry_seconds)
            return
        resumed_gone = (job.task_id is not None and isinstance(exc, APIStatusError)
                        and exc.status_code == 404)
        if isinstance(exc, TaskFailedError) or resumed_gone:
            # the task is dead: the next attempt submits a new one
            self.journal.update(job.key, state="claimed", task_id=None, submit_sent=None,
                                upload_url=None)
            self._unsaved_tasks.pop(job.key, None)
        if not (exc.transient or resumed_gone):
            self._fail(job, claimed, rel, exc)
            return
        noted = self.journal.note_error(job.key, kind=exc.kind, code=code, message=str(exc))
        attempts = noted.attempts if noted else 1
        first = noted.first_error if noted and noted.first_error else time.time()
        if time.time() - first >= self.watch.retry_for_seconds:
            self._fail(self._reload(job.key), claimed, rel, exc,
                       note=f"gave up after {attempts} attempts over "
                            f"{time.time() - first:.0f} s")
            return
        delay = backoff_delay(attempts, initial=self.backoff_initial, cap=BACKOFF_MAX, spread=0.2)
        if isinstance(exc, RateLimitError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        with self._lock:
            self.session["retries"] += 1
        self.journal.add_event("retry", input=str(rel), error_kind=exc.kind, error=str(exc))
        log.warning("%s: %s (attempt %d); retrying in %.0f s", shown(rel), shown(exc),
                    attempts, delay,
                    extra={"event": "retry", "input": shown(rel), "error_kind": exc.kind})
        self._requeue(claimed, rel, None, delay)

    def _fail(self, job: Job | None, claimed: Path, rel: Path, exc: BgremoveError,
              note: str | None = None, attempts: int | None = None) -> None:
        assert self.journal is not None
        target = self._move(claimed, self.layout.failed, rel)
        latest: Job | None = None
        if job is not None:
            try:
                latest = self.journal.get(job.key) or job
            except sqlite3.Error:
                latest = job
        write_error_report(target, rel, exc, latest, note=note, attempts=attempts,
                           below=self.layout.trusted_base(self.layout.failed))
        with self._lock:
            self.session["failed"] += 1
        log.error("failed %s -> %s: %s%s", shown(rel), shown(target), shown(exc),
                  f" ({note})" if note else "",
                  extra={"event": "failed", "input": shown(rel), "output": None,
                         "error_kind": exc.kind, "task_id": report_task_id(exc, latest)})
        # the file is in failed/ already: a journal error from here on is only logged
        try:
            if job is not None:
                self.journal.update(job.key, state="failed", claim=None, error_kind=exc.kind,
                                    error=str(exc))
            self.journal.add_event("failed", input=str(rel), error_kind=exc.kind,
                                   error=str(exc))
        except sqlite3.Error as exc3:
            log.warning("cannot journal the failure of %s: %s", shown(rel), exc3)
            self._block_journal(exc3)

    # -- folder health --------------------------------------------------------------

    def _block_journal(self, exc: Exception) -> None:
        assert self.journal is not None
        self.health.block_journal(self.journal.path, exc)


def _same_file(path: Path, st: os.stat_result | None) -> bool:
    """Whether ``path`` (not followed) is the file ``st`` was taken from."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return st is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
