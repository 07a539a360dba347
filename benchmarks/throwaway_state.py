"""Benchmarks run bgremove with throwaway config and state folders, never the user's.

Every runner calls ``isolate()`` first thing in ``main``: bgremove then reads no
``config.yaml`` of the user (its settings would change the figures) and appends to a
task log of its own (``bgremove tasks`` of the user would otherwise list thousands of
benchmark tasks). That holds for bgremove run inside the runner and for every process it
starts, since they inherit the environment. The model cache is left alone, so no model is
downloaded again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

_base: Path | None = None


def isolated_env(base: Path, env: MutableMapping[str, str]) -> None:
    """Point ``env`` at config and state folders under ``base``."""
    from platformdirs import user_config_dir

    # pip reads its user config from the same config folder: keep the user's.
    pip_conf = Path(user_config_dir("pip")) / "pip.conf"
    if "PIP_CONFIG_FILE" not in env and pip_conf.is_file():
        env["PIP_CONFIG_FILE"] = str(pip_conf)
    env.pop("BGREMOVE_CONFIG", None)
    env["XDG_CONFIG_HOME"] = str(base / "config")
    env["XDG_STATE_HOME"] = str(base / "state")


def isolate() -> Path:
    """Give this process and its children fresh folders (removed at exit); idempotent."""
    global _base
    if _base is None:
        _base = Path(tempfile.mkdtemp(prefix="bgremove-bench-home-"))
        atexit.register(shutil.rmtree, _base, True)
        isolated_env(_base, os.environ)
    return _base
