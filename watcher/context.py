"""What the daemon's parts share: its folders, journal, guard, backend, queue and counters.

Built once, before the daemon runs (``Daemon.__init__``); the lifecycle (``daemon``),
intake (``intake``), the per-file states (``filejob``) and the error policy (``policy``)
each take it, so none of them reaches into another's attributes.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.watcher.folder_health import FolderBlocked
from bgremove.watcher.naming import move_no_replace, shown

if TYPE_CHECKING:
    from bgremove.account import RateLimiter
    from bgremove.config import Config, WatchConfig
    from bgremove.contract import Backend, CancelToken
    from bgremove.watcher.claims import Claims
    from bgremove.watcher.folder_health import FolderHealth
    from bgremove.watcher.journal import Journal
    from bgremove.watcher.limits import CostGuard, Limits
    from bgremove.watcher.naming import Layout
    from bgremove.watcher.outage import Outage
    from bgremove.watcher.readiness import ReadinessTracker
    from bgremove.watcher.scheduler import Scheduler


class Counters:
    """This run's counts (``session``), jobs in flight (started on the pipeline, not ended)
    and busy workers; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.session = {"done": 0, "failed": 0, "duplicates": 0, "retries": 0}
        self.in_flight = 0
        self.busy_workers = 0

    def count(self, name: str) -> None:
        with self.lock:
            self.session[name] += 1

    def busy(self) -> int:
        """Workers at work plus jobs in flight: 0 when nothing is under way."""
        with self.lock:
            return self.busy_workers + self.in_flight

    def add(self, name: str, delta: int) -> None:
        """``in_flight`` or ``busy_workers`` += delta."""
        with self.lock:
            setattr(self, name, getattr(self, name) + delta)


@dataclass
class Context:
    config: Config
    layout: Layout
    limits: Limits
    owner: str
    journal: Journal
    guard: CostGuard
    rate: RateLimiter
    backend: Backend
    claims: Claims
    tracker: ReadinessTracker
    scheduler: Scheduler
    health: FolderHealth
    outage: Outage
    cancel: CancelToken
    stopping: Callable[[], bool]
    fingerprint: str  # the settings part of every journal key
    ext: str  # the output's extension
    backoff_initial: float
    counters: Counters = field(default_factory=Counters)
    #: ``--once`` met the cost cap: stop with the files not started left for the next run.
    cap_reached: threading.Event = field(default_factory=threading.Event)

    @property
    def watch(self) -> WatchConfig:
        return self.config.watch

    @property
    def staging(self) -> Path:
        return staging_folder(self.layout)

    def move_original(self, claimed: Path, folder: Path, rel: Path) -> Path:
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

    def block_journal(self, exc: Exception) -> None:
        self.health.block_journal(self.journal.path, exc)


def staging_folder(layout: Layout) -> Path:
    """Where cut-outs are written before they get their output name."""
    return layout.state_dir / "staging"
