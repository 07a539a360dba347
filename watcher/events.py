"""Finding files: a watchdog observer, a scan at start, periodic rescans, and a supervisor.

The event handler only hands paths to a callback (the readiness tracker);
it never touches the file. Created, modified, closed and moved-in events
(by their destination name) all count. A file moved in (renamed into INBOX:
written elsewhere first, as rsync, browsers and careful writers do) is announced
as ``whole``: the tracker lets it be tried at once instead of after
``stable_seconds`` (``readiness``). A file closed after writing is not: its writer
may open it again (to add metadata, or the next chunk) and a file taken and billed
at the first close would then be billed again. Native events are used unless
``polling`` is asked for or the native observer cannot start (inotify
watch limit, a file system without events); then watchdog's
``PollingObserver`` takes over with a log line.

``Watcher.supervise`` runs from the daemon's housekeeping loop: when INBOX
becomes unreachable (a share went offline) it says so once, keeps trying,
and when INBOX is back restarts the observer and rescans. A stopped
emitter thread is restarted the same way, so the daemon never goes
silently deaf. The periodic rescan catches anything events missed
(overflowing event buffers, coalesced events on macOS).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgremove.watcher.naming import shown

if TYPE_CHECKING:
    from bgremove.watcher.naming import Layout

log = logging.getLogger(__name__)


class _QuietStopRace(logging.Filter):
    """Drops watchdog's harmless "called when the thread is inactive" error at observer stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


_quiet = _QuietStopRace()


def scan(layout: Layout, left_out: set[str] | None = None) -> Iterator[Path]:
    """Every candidate file now in INBOX (sub-folders too if recursive), excluded ones skipped.

    Without ``--recursive`` the sub-folders a user put in INBOX are added to ``left_out``."""
    excluded = {str(p) for p in layout.excluded()}
    stack = [layout.inbox]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == layout.inbox:
                raise
            log.debug("cannot list %s: %s", folder, exc)
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if entry.path not in excluded and not entry.name.startswith("."):
                    if layout.recursive:
                        stack.append(path)
                    elif left_out is not None:
                        left_out.add(entry.name)
                continue
            if layout.relative(path) is not None:
                yield path


class Watcher:
    """Owns the observer; feeds ``announce(path, whole)`` with every candidate path
    (``whole``: the event says the file arrived complete, see the module doc)."""

    def __init__(self, layout: Layout, announce: Callable[[Path, bool], None], *,
                 polling: bool, poll_seconds: float) -> None:
        self.layout = layout
        self.announce = announce
        self.want_polling = polling
        self.poll_seconds = poll_seconds
        self.mode = "none"
        self._observer: Any = None
        self._offline = False
        self._told_left_out: set[str] = set()  # sub-folders said once not to be watched

    # -- observer -------------------------------------------------------------

    def _handler(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    if event.event_type in ("created", "moved") and watcher.layout.recursive:
                        # files moved in with a folder produce no events of their own
                        target = event.dest_path if event.event_type == "moved" \
                            else event.src_path
                        if target:
                            watcher.rescan_folder(Path(os.fsdecode(target)))
                    return
                kind = event.event_type
                if kind in ("created", "modified", "closed", "moved"):
                    target = event.dest_path if kind == "moved" else event.src_path
                    if target:  # a move out of INBOX has no destination here
                        watcher.offer(Path(os.fsdecode(target)),
                                      whole=kind == "moved")

        return Handler()

    def offer(self, path: Path, *, whole: bool = False) -> None:
        if self.layout.relative(path) is not None:
            self.announce(path, whole)

    def rescan_folder(self, folder: Path) -> None:
        if self.layout.relative(folder) is None:
            return
        for dirpath, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                self.offer(Path(dirpath) / name)

    def start(self) -> None:
        """Start the observer (native, else polling) and announce what is already there."""
        self._start_observer()
        self.rescan()

    def _start_observer(self) -> None:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        handler = self._handler()
        inotify_log = logging.getLogger("watchdog.observers.inotify")
        if _quiet not in inotify_log.filters:
            inotify_log.addFilter(_quiet)
        if not self.want_polling:
            # On Linux: a file moved in from outside INBOX is a move (``dest_path`` set,
            # ``src_path`` empty), not a creation, so it can be taken at once (``whole``).
            native: Any = Observer
            observer = native(generate_full_events=True) if _is_inotify(native) else native()
            try:
                # Always recursive: a claim renames a file into INBOX/.bgremove-claims/, and a
                # move within one recursive watch is paired at once; out of a flat watch,
                # watchdog holds the move-out event 0.5 s, delaying every event queued behind
                # it. Sub-folder files are still filtered by layout.relative().
                observer.schedule(handler, str(self.layout.inbox), recursive=True)
                observer.start()
            except OSError as exc:
                log.warning("native file events unavailable for %s (%s): polling every %.1f s "
                            "instead", self.layout.inbox, exc, self.poll_seconds)
                _stop(observer)
            else:
                self._observer, self.mode = observer, "native"
                log.debug("watching %s with native events", self.layout.inbox)
                return
        observer = PollingObserver(timeout=self.poll_seconds)
        observer.schedule(handler, str(self.layout.inbox), recursive=self.layout.recursive)
        observer.start()
        self._observer, self.mode = observer, "polling"

    def rescan(self) -> int:
        """Announce every file now in INBOX; returns how many were found."""
        count = 0
        left_out: set[str] = set()
        for path in scan(self.layout, left_out):
            self.announce(path, False)
            count += 1
        for name in sorted(left_out - self._told_left_out):
            log.warning("sub-folder %s of INBOX is not watched: its images are left alone "
                        "(start with --recursive to take them)", shown(name),
                        extra={"event": "warning", "input": shown(name)})
        self._told_left_out |= left_out
        return count

    def healthy(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters) and bool(observer.emitters)

    def supervise(self) -> None:
        """Check INBOX is reachable and the observer alive; recover both (see module doc)."""
        try:
            os.stat(self.layout.inbox)
            os.listdir(self.layout.inbox)
        except OSError as exc:
            if not self._offline:
                self._offline = True
                log.error("INBOX %s is not reachable (%s): waiting for it to come back, "
                          "files already queued continue", self.layout.inbox, exc)
            return
        if self._offline:
            self._offline = False
            log.warning("INBOX %s is reachable again: restarting the watcher and rescanning",
                        self.layout.inbox)
            self.restart()
            return
        if not self.healthy():
            log.warning("the %s watcher of %s stopped: restarting it", self.mode,
                        self.layout.inbox)
            self.restart()

    @property
    def offline(self) -> bool:
        return self._offline

    def restart(self) -> None:
        _stop(self._observer)
        self._observer = None
        try:
            self._start_observer()
            self.rescan()
        except OSError as exc:
            log.error("cannot watch %s yet (%s): will try again", self.layout.inbox, exc)

    def stop(self) -> None:
        _stop(self._observer)
        self._observer = None


def _is_inotify(observer: type) -> bool:
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        return False
    return issubclass(observer, InotifyObserver)


def _stop(observer: Any) -> None:
    if observer is None:
        return
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except RuntimeError:  # never started
        pass
