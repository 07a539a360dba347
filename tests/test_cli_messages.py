"""Say what is true: each message checked through the real command (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from bgremove.emulator import Fault
from tests.terminal import ROOT
from tests.test_watch_support import write_image


def bgremove(*args: str, env: dict[str, str] | None = None, home: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m bgremove ARGS`` with a clean environment (no key, no config) plus ``env``."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("WAVESPEED_API_KEY", "WAVESPEED_BASE_URL", "BGREMOVE_CONFIG")}
    if home is not None:
        base.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                    XDG_CACHE_HOME=str(home / ".cache"))
    return subprocess.run([sys.executable, "-m", "bgremove", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**base, **(env or {})})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- .error.json -------------------------------------------------------------------------


def test_error_report_names_the_failed_task_and_hints_only_what_helps(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory(faults=(Fault("fail_task", route="submit", code=1401, first=1),))
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "refused.png", 1)
    (inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    whole = write_image(tmp_path / "whole.jpg", 2, size=(400, 300)).read_bytes()
    (inbox / "half.jpg").write_bytes(whole[:len(whole) // 2])  # a copy that stalled, say
    cfg = tmp_path / "c.yaml"
    cfg.write_text("watch:\n  stable_seconds: 0.1\n  settle_seconds: 0.3\n"
                   "wavespeed:\n  poll:\n    initial: 0.05\n")
    done = bgremove("watch", str(inbox), str(outbox), "--once", "--config", str(cfg),
                    env={"WAVESPEED_API_KEY": emu.api_key, "WAVESPEED_BASE_URL": emu.base_url})
    assert done.returncode == 1, done.stderr
    refused = json.loads((inbox / "failed" / "refused.png.error.json").read_text())
    assert refused["code"] == 1401 and refused["task_id"], refused
    assert refused["task_id"] in refused["error"]  # the id the message names
    assert "move the file back" not in refused["hint"] and "will not help" in refused["hint"]
    corrupt = json.loads((inbox / "failed" / "corrupt.jpg.error.json").read_text())
    assert "move the file back" not in corrupt["hint"] and "will not help" in corrupt["hint"]
    half = json.loads((inbox / "failed" / "half.jpg.error.json").read_text())
    assert "if it was still being copied, move the file back into INBOX" in half["hint"], half


# -- doctor ------------------------------------------------------------------------------


def _doctor_lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {line.split("]", 1)[1].split(":", 1)[0].strip(): line
            for line in done.stdout.splitlines() if line.startswith("[")}


def test_doctor_names_the_config_path_it_looked_at(tmp_path: Path) -> None:
    lines = _doctor_lines(bgremove("doctor", home=tmp_path))
    expected = tmp_path / ".config" / "bgremove" / "config.yaml"
    assert f"no config file at {expected}" in lines["config"], lines


def test_doctor_says_where_the_key_came_from(tmp_path: Path, emulator) -> None:  # type: ignore[no-untyped-def]
    env = {"WAVESPEED_API_KEY": emulator.api_key, "WAVESPEED_BASE_URL": emulator.base_url}
    lines = _doctor_lines(bgremove("doctor", env=env, home=tmp_path))
    assert "set in WAVESPEED_API_KEY (not shown)" in lines["api key"], lines
    cfg = tmp_path / "key.yaml"
    cfg.write_text(f"wavespeed:\n  api_key: {emulator.api_key}\n")
    cfg.chmod(0o600)
    done = bgremove("doctor", "--config", str(cfg), env={"WAVESPEED_BASE_URL": emulator.base_url},
                    home=tmp_path)
    assert f"set in {cfg} (not shown)" in _doctor_lines(done)["api key"]
    assert emulator.api_key not in done.stdout + done.stderr


def test_a_malformed_base_url_names_the_environment_variable(tmp_path: Path) -> None:
    env = {"WAVESPEED_API_KEY": "wsk-0123456789abcdef", "WAVESPEED_BASE_URL": "api.wavespeed.ai"}
    done = bgremove("doctor", env=env, home=tmp_path)
    assert done.returncode == 1
    assert "WAVESPEED_BASE_URL 'api.wavespeed.ai' is not an http(s) URL" in done.stdout
    assert "wavespeed.base_url" not in _doctor_lines(done)["config"]
    removed = bgremove("remove", "x.png", env=env, home=tmp_path)
    assert removed.returncode == 2 and "WAVESPEED_BASE_URL" in removed.stderr


def test_doctor_names_the_url_it_could_not_reach(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"WAVESPEED_API_KEY": "wsk-0123456789abcdef", "WAVESPEED_BASE_URL": url}
    done = bgremove("doctor", env=env, home=tmp_path)
    assert done.returncode == 1
    service = _doctor_lines(done)["service"]
    assert service.startswith("[FAIL]") and url in service, service


# -- models ------------------------------------------------------------------------------


def test_models_path_of_a_model_not_downloaded_exits_1(tmp_path: Path) -> None:
    done = bgremove("models", "path", "u2net", home=tmp_path)
    assert done.returncode == 1
    assert done.stdout.strip().endswith("u2net.onnx")  # where it would be
    assert "not downloaded yet" in done.stderr and "models fetch u2net" in done.stderr


def test_models_fetch_of_an_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    done = bgremove("models", "fetch", "foo", home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("bgremove: error: unknown model 'foo' "
                                   "(choose one of u2netp, u2net)")


# -- help and config ---------------------------------------------------------------------


def test_help_names_the_key_variable_and_the_exit_codes() -> None:
    done = bgremove("--help")
    assert done.returncode == 0
    assert "WAVESPEED_API_KEY" in done.stdout
    assert re.search(r"exit codes:\s+0 .*\n\s+1 .*\n\s+2 ", done.stdout), done.stdout


def test_every_command_and_option_has_help_text() -> None:
    import argparse

    from bgremove.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    missing += walk(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "bgremove") == []
    for command in ("remove", "watch", "status", "doctor", "models", "emulator"):
        assert bgremove(command, "--help").returncode == 0


def test_a_mistyped_config_key_gets_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("watch:\n  concurency: 3\n")
    done = bgremove("doctor", "--config", str(cfg), home=tmp_path)
    assert "unknown key 'watch.concurency' (did you mean 'watch.concurrency'?" in done.stdout
    removed = bgremove("remove", "x.png", "--config", str(cfg), home=tmp_path)
    assert removed.returncode == 2 and "did you mean 'watch.concurrency'?" in removed.stderr


# -- the systemd recipe ------------------------------------------------------------------


def test_systemd_recipe_matches_the_install_and_creates_the_folders() -> None:
    unit = (ROOT / "scripts" / "bgremove-watch.service").read_text()
    readme = (ROOT / "README.md").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) watch (\S+) (\S+)", unit, re.M)
    assert exec_start, unit
    program, inbox, outbox = exec_start.groups()
    assert program == "%h/.local/bin/bgremove"
    # the README's recipe puts the command there, whichever way bgremove was installed
    recipe = readme.split("**Linux (systemd user unit)**", 1)[1].split("**macOS", 1)[0]
    assert "~/.local/bin/bgremove" in recipe
    mkdir = re.search(r"^ExecStartPre=\S*mkdir -p (.+)$", unit, re.M)
    assert mkdir and inbox in mkdir.group(1).split() and outbox in mkdir.group(1).split()


# -- the [local] extra missing, no key ---------------------------------------------------

WITHOUT_LOCAL = '''\
"""Test helper: numpy and onnxruntime look not installed (the [local] extra is missing)."""
import sys
from importlib.machinery import PathFinder


class _Without(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("numpy", "onnxruntime"):
            return None
        return PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [_Without if f is PathFinder else f for f in sys.meta_path]
'''


def test_a_missing_local_extra_without_a_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(WITHOUT_LOCAL)
    env = {"PYTHONPATH": str(blocker)}
    probe = subprocess.run([sys.executable, "-c", "import numpy"], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0  # the helper works: numpy is "not installed"
    srcs = [write_image(tmp_path / f"p{i}.png", i) for i in range(3)]
    inbox = tmp_path / "in"
    for i in range(3):
        write_image(inbox / f"w{i}.png", i)

    removed = bgremove("remove", *map(str, srcs), "-o", str(tmp_path / "out"), env=env,
                       home=tmp_path)
    watched = bgremove("watch", str(inbox), str(tmp_path / "wout"), "--once", env=env,
                       home=tmp_path)
    for done in (removed, watched):
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines  # once, not per file
        assert "pip install 'bgremove[local]'" in lines[0] and "WAVESPEED_API_KEY" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["w0.png", "w1.png",
                                                                       "w2.png"]
    doctor = bgremove("doctor", env=env, home=tmp_path)
    assert doctor.returncode == 1
    model = _doctor_lines(doctor)["offline model"]
    assert model.startswith("[FAIL]") and "bgremove[local]" in model, model


def test_an_error_line_says_error_as_the_readme_says(tmp_path: Path) -> None:
    """`bgremove: ` then `error: ` on an error line, whether it stops the command (a config
    mistake, exit 2) or one file of a batch (exit 1), as `watch` and the usage errors say."""
    config = tmp_path / "config.yaml"
    config.write_text("concurrency: three\n", encoding="utf-8")
    done = bgremove("remove", str(tmp_path / "x.jpg"), "--config", str(config), home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"bgremove: error: {config}: key 'concurrency' must be a "
                                   "whole number, not 'three'")
    config.write_text("backend: wavespeed\n", encoding="utf-8")
    done = bgremove("remove", str(tmp_path / "gone.jpg"), "--config", str(config), home=tmp_path,
                    env={"WAVESPEED_API_KEY": "wsk-test-0123456789abcdef",
                         "WAVESPEED_BASE_URL": f"http://127.0.0.1:{closed_port()}"})
    assert done.returncode == 1
    assert f"bgremove: error: {tmp_path / 'gone.jpg'}: no such file" in done.stderr.splitlines()

