"""Benchmarks run bgremove with throwaway config and state folders, never the user's.

Each runner in benchmarks/ calls ``throwaway_state.isolate()`` first in ``main``; a real
benchmark run (bench_stages, a handful of tiny images) leaves the user's task log alone.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RUNNERS = sorted([*BENCH.glob("bench_*.py"), BENCH / "watch_rembg.py"])


def _user_env(tmp: Path) -> dict[str, str]:
    """An environment whose 'user' has a config file, a pip config and a state folder."""
    config, state = tmp / "user-config", tmp / "user-state"
    (config / "bgremove").mkdir(parents=True)
    (config / "bgremove" / "config.yaml").write_text("concurrency: 3\n", encoding="utf-8")
    (config / "pip").mkdir()
    (config / "pip" / "pip.conf").write_text("[global]\n", encoding="utf-8")
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), XDG_STATE_HOME=str(state))
    env.pop("PIP_CONFIG_FILE", None)
    env.pop("BGREMOVE_CONFIG", None)
    return env


def test_every_runner_isolates_first_thing_in_main() -> None:
    assert len(RUNNERS) >= 10
    for runner in RUNNERS:
        tree = ast.parse(runner.read_text(encoding="utf-8"))
        main = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "main")
        first = main.body[0]
        assert isinstance(first, ast.Expr) and ast.unparse(first) == "throwaway_state.isolate()", \
            runner.name


def test_isolate_moves_config_and_state_for_the_process_and_its_children(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    code = """
import json, os, subprocess, sys
import throwaway_state
base = throwaway_state.isolate()
assert throwaway_state.isolate() == base
from bgremove import tasklog
from bgremove.config import find_config_file
tasklog.record("task-1", input="a.png")
child = subprocess.run([sys.executable, "-c",
    "from bgremove import tasklog; print(tasklog.log_path())"],
    capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"base": str(base), "log": str(tasklog.log_path()), "child": child,
                  "config": str(find_config_file(None)),
                  "pip": os.environ.get("PIP_CONFIG_FILE")}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, check=True,
                         capture_output=True, text=True).stdout
    seen = json.loads(out)
    base = Path(seen["base"])
    assert Path(seen["log"]).is_relative_to(base)
    assert seen["child"] == seen["log"]
    assert seen["config"] == "None"  # the user's config.yaml is not read
    assert seen["pip"] == str(tmp_path / "user-config" / "pip" / "pip.conf")
    assert not (tmp_path / "user-state").exists()
    assert not base.exists()  # removed at exit


def test_a_benchmark_run_leaves_the_users_task_log_alone(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_stages.py"), "--counts", "2", "--delay", "0.05"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| 2 | " in done.stdout
    assert not (tmp_path / "user-state").exists()
