"""``bgremove`` as a user runs it: a real process, its exit code, stdout and stderr.

    result = bgremove(tmp_path, "remove", str(src), emulator=emu, config="output: {crop: true}")
    assert result.returncode == 0, result.stderr

The command gets a config file of its own (the test settings below plus ``config``), the
emulator's URL and key through the environment (as a user sets them), and no terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bgremove.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "bgremove"]

#: Short poll and retry intervals, so a test does not wait on the service's real pacing.
FAST = ("wavespeed:\n  poll:\n    initial: 0.05\n    max: 0.2\n"
        "  retry:\n    backoff_initial: 0.01\n    backoff_max: 0.1\n")


def bgremove(tmp: Path, *args: str, emulator: Emulator | None = None, config: str = "",
             env: dict[str, str] | None = None, timeout: float = 120.0
             ) -> subprocess.CompletedProcess[str]:
    """Run ``bgremove ARGS`` to the end; ``config`` is YAML merged after the fast settings."""
    path = tmp / "bgremove-test-config.yaml"
    path.write_text(_merge(FAST, config), encoding="utf-8")
    environ = dict(os.environ, BGREMOVE_CONFIG=str(path), PYTHONUNBUFFERED="1")
    if emulator is not None:
        environ.update(WAVESPEED_API_KEY=emulator.api_key, WAVESPEED_BASE_URL=emulator.base_url)
    environ.update(env or {})
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _merge(base: str, extra: str) -> str:
    import yaml

    merged: dict[str, object] = yaml.safe_load(base) or {}
    _deep_update(merged, yaml.safe_load(extra) or {})
    return str(yaml.safe_dump(merged))


def _deep_update(into: dict[str, object], extra: dict[str, object]) -> None:
    for key, value in extra.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _deep_update(current, value)
        else:
            into[key] = value
