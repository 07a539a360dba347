"""The hot-folder daemon: INBOX -> cut-outs in OUTBOX, originals to done/ or failed/.

Threads::

    watchdog observer --announce--> ReadinessTracker <--check_due-- readiness thread
                                                                    |
                                                      Scheduler (ready files, retries)
                                                                    |
                                       a few worker threads: read, check, claim, start
                                                                    |
              the pipeline (``bgremove.stages``): prepare + finish on a CPU pool, upload,
              polls and downloads on a few IO threads and one poller, for any number of
              tasks in flight
    main thread: housekeeping (heartbeats, rescans, supervision, status), shutdown

This module is the lifecycle: it builds the parts (journal, cost guard, backend, claims:
``context``), starts and stops the threads, beats the heartbeats and decides when to stop.
A worker takes a stable file through ``intake`` (read once, hashed, prepared, claimed),
then ``filejob`` walks it through its journaled states (submit and wait with the task id
journaled first, stage the cut-out, link it to a free output name, move the original to
done/) as a job on the pipeline, and ``policy`` decides what an error means (failed/ at
once, retry with backoff, or pause intake for an unwritable folder or an outage). Every
step can be repeated after a crash without paying twice or writing twice.

Duplicates: a file whose content (with the same settings) was already processed is not
sent again; its output is a hard link to (or copy of) the earlier cut-out, then it moves
to done/. ``watch.reprocess`` forces a new cut-out.

The smaller pieces live next door too: ``scheduler`` (the work queue), ``fingerprint``
(journal keys), ``placement`` (free output names), ``folder_health`` (pause and probe)
and ``failures`` (the error.json report).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgremove.account import RateLimiter
from bgremove.contract import CancelToken
from bgremove.errors import ConfigError
from bgremove.files import probe_writable
from bgremove.stages import Pipeline
from bgremove.watcher import policy
from bgremove.watcher.claims import Claims, make_owner_id
from bgremove.watcher.context import Context, staging_folder
from bgremove.watcher.events import Watcher
from bgremove.watcher.filejob import FileJobs
from bgremove.watcher.fingerprint import settings_fingerprint
from bgremove.watcher.folder_health import FolderHealth
from bgremove.watcher.intake import Intake
from bgremove.watcher.journal import Journal
from bgremove.watcher.limits import CostGuard, Limits, effective_limits
from bgremove.watcher.naming import Layout, ensure_folder, shown
from bgremove.watcher.outage import Outage
from bgremove.watcher.policy import ErrorPolicy
from bgremove.watcher.readiness import ReadinessTracker
from bgremove.watcher.scheduler import Scheduler

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 2.0
HEARTBEAT_SECONDS = 2.0
SUPERVISE_SECONDS = 2.0


def _open_outbox(layout: Layout) -> None:
    """Before anything is taken from INBOX: an unusable OUTBOX is a setup error."""
    staging = staging_folder(layout)
    try:
        layout.outbox.mkdir(parents=True, exist_ok=True)
        ensure_folder(staging, layout.trusted_base(layout.outbox))
        # no data written here (start-up stays quick): a full disk later pauses intake
        probe_writable(layout.outbox)
        probe_writable(staging)
    except OSError as exc:
        where = f"{shown(exc.filename)}: " if exc.filename else ""
        raise ConfigError(f"OUTBOX {layout.outbox} cannot be written: "
                          f"{where}{exc.strerror or exc}",
                          hint="check its permissions and free space, or remove what is in "
                          "the way; nothing was taken from INBOX") from None


class Daemon:
    """One ``bgremove watch`` run. ``run()`` blocks; other threads may call the stop methods.

    Built ready to run: OUTBOX checked, the journal opened, the backend made (a
    ``ConfigError`` here means nothing was taken from INBOX). ``run()`` closes them.
    """

    def __init__(self, config: Config, layout: Layout, *,
                 backend_factory: Callable[[], Backend] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None,
                 backoff_initial: float = BACKOFF_INITIAL) -> None:
        from bgremove.backends import make_backend, resolve_backend_name
        from bgremove.imaging import extension_for

        self.config = config
        self.watch = watch = config.watch
        self.layout = layout
        self.limits: Limits = effective_limits(config)
        self.started = time.time()
        self.owner = make_owner_id(started=self.started)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._on_status = on_status
        self._threads: list[threading.Thread] = []
        self._heartbeat_failing = False
        self._foreign_claims = 0
        self._blocked_exit = False  # --once stopped for an unwritable folder
        journal_path = layout.journal_path(watch.journal)
        _open_outbox(layout)
        journal = Journal(journal_path, check=True)
        try:
            backend = backend_factory() if backend_factory \
                else make_backend(config, wait_mode="poll")
        except BaseException:
            journal.close()
            raise
        self.tracker = ReadinessTracker(watch.stable_seconds, watch.settle_seconds)
        self.ctx = ctx = Context(
            config=config, layout=layout, limits=self.limits, owner=self.owner,
            journal=journal,
            guard=CostGuard(journal, per_hour=self.limits.max_per_hour,
                            per_day=self.limits.max_per_day),
            rate=RateLimiter(self.limits.images_per_minute), backend=backend,
            claims=Claims(layout.claims, self.owner, stale_seconds=watch.stale_claim_seconds),
            tracker=self.tracker, scheduler=Scheduler(),
            health=FolderHealth(layout.outbox, staging_folder(layout)),
            outage=Outage(watch.outage_retry_seconds), cancel=CancelToken(),
            stopping=self._stopping.is_set,
            fingerprint=settings_fingerprint(config, resolve_backend_name(config)),
            ext=extension_for(config.output.format), backoff_initial=backoff_initial)
        self.watcher = Watcher(layout, self._announce, polling=watch.polling,
                               poll_seconds=watch.poll_seconds)
        self.errors = ErrorPolicy(ctx)
        # the remote part's threads do not grow with the tasks in flight (``bgremove.stages``)
        self.pipeline = Pipeline(backend, config, in_flight=self.limits.concurrency,
                                 cancel=ctx.cancel)
        self.jobs = FileJobs(ctx, self.errors, self.pipeline)
        self.intake = Intake(ctx, self.jobs)
        # the parts most read from outside (tests, status)
        self.journal, self.guard, self.rate = ctx.journal, ctx.guard, ctx.rate
        self.claims, self.scheduler, self.health = ctx.claims, ctx.scheduler, ctx.health
        self.outage, self.cancel = ctx.outage, ctx.cancel
        self.session = ctx.counters.session

    @property
    def staging(self) -> Path:
        return self.ctx.staging

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
                     self.watch.shutdown_grace, self.ctx.counters.in_flight)
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
        paused = self.health.blocked or self.outage.reason or self.guard.paused
        if self.watcher.offline:
            paused = "INBOX unreachable"
        counters = self.ctx.counters
        with counters.lock:
            in_flight = counters.in_flight
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
        layout = self.layout
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
            self.pipeline.close(wait=False)  # what is left is cancelled: the journal resumes it
            if not self.pipeline.drain(timeout=5.0):  # a step still running (an upload, say)
                log.warning("%d job(s) still running at exit are left for the next start "
                            "(the journal resumes them)", self.pipeline.open_jobs())
            self._heartbeat(stopped=True)
            self.ctx.backend.close()
            self.claims.stop()
            self.journal.close()
            self._stopped.set()

    def _start_threads(self) -> None:
        readiness = threading.Thread(target=self._readiness_loop, name="bgremove-readiness",
                                     daemon=True)
        self._threads.append(readiness)
        # workers read, check and claim files (CPU work) and start their jobs; the jobs in
        # flight need no thread each
        for i in range(min(self.limits.concurrency, (os.cpu_count() or 1) + 1)):
            self._threads.append(threading.Thread(target=self._worker_loop,
                                                  name=f"bgremove-worker-{i}", daemon=True))
        for thread in self._threads:
            thread.start()

    def _announce(self, path: Path, whole: bool) -> None:
        if not self.stopping:
            self.tracker.seen(path, whole=whole)

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
                next_probe = now + policy.OUTPUT_PROBE_SECONDS
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
            elif self.ctx.cap_reached.is_set():
                log.warning("cost cap reached (%s): stopping; the files not started stay for "
                            "the next run", self.guard.paused or "?")
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
        return self.ctx.counters.busy() == 0 and len(self.tracker) == 0 and len(self.scheduler) == 0

    def _shutdown(self) -> int:
        self._stopping.set()
        self.watcher.stop()
        deadline = time.monotonic() + self.watch.shutdown_grace
        counters = self.ctx.counters
        while time.monotonic() < deadline and not self.cancel.cancelled:
            if counters.busy() == 0:
                break
            time.sleep(0.02)
        if counters.busy():
            log.warning("shutdown grace over: %d job(s) still running are left for the next "
                        "start (the journal resumes them)", counters.busy())
        self.cancel.cancel()
        self.scheduler.close()
        self.tracker.close()
        unclaimable = self.intake.unclaimable
        if self.watch.once and unclaimable:
            log.error("%d file(s) could not be taken from INBOX (see above)", len(unclaimable))
        session = self.session
        log.info("stopped: %d done, %d duplicates, %d failed since start", session["done"],
                 session["duplicates"], session["failed"])
        problems = (session["failed"] or self.ctx.cap_reached.is_set()
                    or self._blocked_exit or self._foreign_claims
                    or (self.watch.once and unclaimable))
        return 1 if problems else 0

    def _heartbeat(self, stopped: bool = False) -> bool:
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
            self.ctx.counters.add("busy_workers", 1)
            try:
                if item.ready is not None:
                    self.intake.take_ready(item.ready)
                elif item.claimed is not None and item.rel is not None:
                    self.jobs.process(item.claimed, item.rel, item.input_error)
            except Exception:  # process handles its own; this is the last line of defence
                log.exception("unexpected error on %s", shown(item.rel or item.ready))
            finally:
                self.ctx.counters.add("busy_workers", -1)

    def _intake_open(self) -> bool:
        """Wait while a folder is unwritable or the cost cap is reached; False to re-check."""
        if self.health.blocked is not None or not self.outage.may_try():
            self.cancel.wait(0.25)
            return False
        guard = self.guard
        if guard.paused is not None and not guard.open_now():
            if self.watch.once:
                self.ctx.cap_reached.set()
            self.cancel.wait(0.5)
            return False
        return True
