"""Run ``python -m bgremove ...`` with stderr on a real terminal (a pty); no tests here."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAR = "\r\x1b[K"


@dataclass
class Run:
    code: int
    stdout: str
    terminal: str  # everything written to the terminal (stderr), escapes included

    def lines(self) -> list[str]:
        """The terminal's lines as a person sees them: each line's text after its last
        clear-line escape or carriage return."""
        shown = []
        for raw in self.terminal.replace("\r\n", "\n").split("\n"):
            text = raw.replace(CLEAR, "\r").split("\r")[-1]
            if text:
                shown.append(text)
        return shown


def run_in_terminal(args: list[str], env: Mapping[str, str] | None = None,
                    timeout: float = 60.0) -> Run:
    """Run bgremove with stderr on a pty and stdout on a pipe; wait up to ``timeout``."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bgremove", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"bgremove {' '.join(args)} still runs after {timeout} s")
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed its end of the terminal
                    data = b""
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(master)
    return Run(code, out, b"".join(chunks).decode("utf-8", "replace"))
