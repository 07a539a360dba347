"""Helpers shared by the test_watch_* modules (no tests here).

A real daemon against the emulator: real files, real threads, deadlines
instead of sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bgremove.config import Config
from bgremove.emulator import Emulator
from tests.conftest import configured, make_keyed_image

#: Fast settings for daemon tests: short stability window and retry backoff.
FAST_WATCH: dict[str, Any] = {
    "watch.stable_seconds": 0.2,
    "watch.settle_seconds": 0.6,
    "watch.poll_seconds": 0.1,
    "watch.rescan_seconds": 2.0,
    "watch.concurrency": 4,
    "watch.shutdown_grace": 10.0,
}


def wait_until(condition: Callable[[], Any], timeout: float = 15.0, *, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def write_image(path: Path, variant: int = 0, size: tuple[int, int] = (40, 30)) -> Path:
    """A keyed PNG whose content differs per ``variant`` (so each is its own job)."""
    key = (variant % 256, 200, (variant // 256) % 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_keyed_image(size, key=key).save(path)
    return path


def image_bytes(variant: int = 0, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    import io

    key = (variant % 256, 200, (variant // 256) % 256)
    buf = io.BytesIO()
    make_keyed_image(size, key=key).save(buf, fmt)
    return buf.getvalue()


def files(folder: Path) -> list[str]:
    """Visible files under ``folder`` (relative, sorted), skipping the daemon's dot-folders."""
    if not folder.exists():
        return []
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


class DaemonRun:
    """A Daemon running in a thread with INBOX=tmp/in, OUTBOX=tmp/out."""

    def __init__(self, tmp: Path, emulator: Emulator, mode: str = "native", *,
                 inbox: Path | None = None, outbox: Path | None = None, recursive: bool = False,
                 **watch: Any) -> None:
        from bgremove.watcher.naming import Layout

        self.inbox = inbox or tmp / "in"
        self.outbox = outbox or tmp / "out"
        self.inbox.mkdir(parents=True, exist_ok=True)
        overrides = dict(FAST_WATCH)
        overrides["watch.polling"] = mode == "polling"
        overrides.update({f"watch.{k}": v for k, v in watch.items()})
        self.config: Config = configured(emulator, overrides)
        self.layout = Layout.create(self.inbox, self.outbox, recursive=recursive)
        self.daemon: Any = None
        self.thread: threading.Thread | None = None
        self.result: int | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> Path:
        return self.layout.done

    @property
    def failed(self) -> Path:
        return self.layout.failed

    def start(self, **kwargs: Any) -> DaemonRun:
        from bgremove.watcher.daemon import Daemon

        kwargs.setdefault("backoff_initial", 0.1)
        self.daemon = Daemon(self.config, self.layout, **kwargs)

        def target() -> None:
            try:
                self.result = self.daemon.run()
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self.thread = threading.Thread(target=target, name="test-daemon")
        self.thread.start()
        wait_until(lambda: self.daemon.watcher.mode != "none" or self.daemon.watch.once
                   or self.error, 10, what="the daemon to start")
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.daemon is not None and self.thread is not None:
            self.daemon.request_stop()
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the daemon did not stop"
        if self.error is not None:
            raise self.error
        return self.result

    def __enter__(self) -> DaemonRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def done_count(self) -> int:
        return int(self.daemon.session["done"]) + int(self.daemon.session["duplicates"])


def check_threads(before: set[threading.Thread], timeout: float = 10.0) -> None:
    """Fail if threads started by the test are still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the test leaked threads: {[t.name for t in extra]}")
        time.sleep(0.02)


class LogLines(logging.Handler):
    """Collects formatted log messages (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lines_lock:
            self.lines.append(record.getMessage())

    def has(self, text: str) -> bool:
        with self._lines_lock:
            return any(text in line for line in self.lines)


@contextmanager
def captured_logs(logger: str = "", level: int = logging.INFO) -> Iterator[LogLines]:
    """The messages of ``logger`` (the root by default) at ``level`` and above, while inside."""
    handler = LogLines()
    target = logging.getLogger(logger or None)
    old = target.level
    target.addHandler(handler)
    target.setLevel(level)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(old)
