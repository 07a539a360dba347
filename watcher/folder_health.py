"""Unwritable folders (OUTBOX, done/, failed/, the journal's): the pause they cause, and
the probe write that ends it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from bgremove.files import probe_writable
from bgremove.watcher.naming import ensure_folder, shown

log = logging.getLogger(__name__)


class FolderBlocked(Exception):
    """A folder (OUTBOX, done/, failed/, the journal's) cannot be written: pause intake,
    keep the file, resume when a probe write into ``folder`` succeeds."""

    def __init__(self, folder: Path, reason: str, *, journal: bool = False,
                 below: Path | None = None) -> None:
        super().__init__(reason)
        self.folder = folder
        self.reason = reason
        self.journal = journal
        self.below = below  # the trusted folder above ``folder``, when not ``folder`` itself


class FolderHealth:
    """Whether intake is paused for an unwritable folder; ``blocked`` holds the reason."""

    def __init__(self, outbox: Path, staging: Path) -> None:
        self._outbox = outbox
        self._staging = staging
        self._lock = threading.Lock()
        self.blocked: str | None = None
        self._folder: Path | None = None
        self._below: Path | None = None
        self._journal = False

    def block(self, folder: Path, reason: str, *, journal: bool = False,
              below: Path | None = None) -> bool:
        """Pause intake until ``folder`` can be written; True when this starts an outage.
        ``below``: the trusted folder above it (no symbolic link between is followed)."""
        with self._lock:
            newly = self.blocked is None
            if newly:
                self._folder, self._journal, self._below = folder, journal, below
            self.blocked = reason
        if newly:
            what = "OUTBOX" if folder == self._outbox else (
                "the journal folder" if journal else "folder")
            log.error("%s %s cannot be written (%s): inputs are kept, intake paused until it "
                      "can", what, shown(folder), shown(reason),
                      extra={"event": "warning", "error_kind": "output"})
        return newly

    def block_journal(self, journal_path: Path, exc: Exception) -> None:
        self.block(journal_path.parent, f"the journal {shown(journal_path)} "
                   f"cannot be written: {exc}", journal=True)

    def probe(self, heartbeat: Callable[[], bool]) -> None:
        """Resume when the blocked folder (and staging) take a write again; a blocked
        journal must also take a ``heartbeat``."""
        folder = self._folder or self._outbox
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
            for target in {self._staging, folder}:
                if target == folder and self._below is not None:
                    ensure_folder(target, self._below)
                # 64 KiB and an fsync: a full disk may still create empty files.
                probe_writable(target, size=65536)
        except OSError:
            return
        if self._journal and not heartbeat():
            return
        log.warning("%s is writable again: resuming", shown(folder))
        with self._lock:
            self.blocked = None
            self._folder = None
            self._below = None
            self._journal = False
