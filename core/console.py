"""The one helper for what bgremove draws on stderr besides log lines.

``Console`` owns the live line: on a terminal it is redrawn in place (at most
ten times a second) and stepped around by every log line (``bgremove.logs`` clears
it before a record and redraws it after); elsewhere it is written as a plain
``bgremove: ...`` line at most every ``plain_every`` seconds, or never.
``Progress`` counts finished items on it with an ETA and ends with a summary
line that is always written, terminal or not.

    console = Console()                      # sys.stderr; live when it is a terminal
    progress = Progress(console, total=10, noun="image")
    progress.step(ok=True) ...
    progress.finish("10 images: 9 done, 1 failed")
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PREFIX = "bgremove: "
#: Seconds between redraws of the live line on a terminal.
REDRAW_SECONDS = 0.1
#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_EVERY_SECONDS = 10.0


class Console:
    """The live progress or status line on ``stream`` (default ``sys.stderr``)."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 plain_every: float | None = PLAIN_EVERY_SECONDS) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        self.plain_every = plain_every
        self._lock = threading.RLock()
        self._text = ""       # what the live line says now
        self._drawn = False   # whether it is on the screen
        self._last_draw = 0.0
        self._last_plain = time.monotonic()
        self._attached = False

    def __enter__(self) -> Console:
        self.attach()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def attach(self) -> None:
        """Have log lines on stderr step around the live line (terminal only)."""
        from bgremove.logs import set_live_line

        if self.live and not self._attached:
            set_live_line(self)
            self._attached = True

    def show(self, text: str, *, force: bool = False) -> None:
        """Set the live line. Redrawn on a terminal; elsewhere a plain line now and then."""
        now = time.monotonic()
        with self._lock:
            if self.live:
                if text == self._text and self._drawn and not force:
                    return
                self._text = text
                if force or now - self._last_draw >= REDRAW_SECONDS:
                    self._draw(now)
            elif self.plain_every is not None and (
                    force or now - self._last_plain >= self.plain_every):
                self._last_plain = now
                self._write(PREFIX + text + "\n")

    def line(self, text: str) -> None:
        """Write one whole line (a result, a summary), keeping the live line below it."""
        with self._lock, self.cleared():
            self._write(text + "\n")

    @contextmanager
    def cleared(self) -> Iterator[None]:
        """Take the live line off the screen for the duration (a log line is written)."""
        with self._lock:
            drawn = self._drawn
            if drawn:
                self._write("\r\x1b[K")
                self._drawn = False
            try:
                yield
            finally:
                if drawn and self._text:
                    self._draw(time.monotonic())

    def close(self) -> None:
        """Remove the live line for good (nothing is left on the screen) and detach."""
        from bgremove.logs import set_live_line

        with self._lock:
            if self._drawn:
                self._write("\r\x1b[K")
            self._drawn = False
            self._text = ""
            if self._attached:
                set_live_line(None)
                self._attached = False

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._drawn = True
        self._write("\r\x1b[K" + self._text)

    def _write(self, data: str) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: drawing is a convenience
            pass


class Progress:
    """Finished items out of a known total, with an ETA, on a ``Console``."""

    WIDTH = 30

    def __init__(self, console: Console, total: int, *, noun: str = "image") -> None:
        self.console = console
        self.total = total
        self.noun = noun
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        if console.live:
            console.show(self.render(), force=True)

    def step(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.console.show(self.render(), force=self.console.live)

    def render(self) -> str:
        """``[####....] 3/10, 1 failed, about 20 s left`` (no bar off a terminal)."""
        text = f"{self.done}/{self.total} {self.noun}s"
        if self.console.live:
            filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
            text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"
        if self.failed:
            text += f", {self.failed} failed"
        left = self.eta()
        if left is not None:
            text += f", about {format_duration(left)} left"
        return text

    def eta(self) -> float | None:
        """Seconds left, from the pace so far; None before the first item or after the last."""
        if not self.done or self.done >= self.total:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def finish(self, summary: str | None = None) -> None:
        """Clear the live line; write ``summary`` if given (always, terminal or not)."""
        self.console.close()
        if summary is not None:
            self.console.line(PREFIX + summary)


class DownloadProgress:
    """``progress(done_bytes, total_bytes)`` for a download, drawn on a ``Console``."""

    WIDTH = 30

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.label = label
        self.console = console or Console()
        self.console.attach()
        self._last = 0

    def __call__(self, done: int, total: int | None) -> None:
        self._last = done
        mb = f"{done / 1e6:.1f}"
        if total:
            filled = int(min(done / total, 1.0) * self.WIDTH)
            bar = f" [{'#' * filled:<{self.WIDTH}}]" if self.console.live else ""
            text = f"{self.label}{bar} {mb}/{total / 1e6:.1f} MB"
        else:
            text = f"{self.label} {mb} MB"
        self.console.show(text, force=total is not None and done >= total)

    def finish(self) -> None:
        self.console.close()


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
