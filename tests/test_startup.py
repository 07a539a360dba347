"""What a one-image run loads: only what it uses (start-up is most of a small image's cost).

Each test runs a fresh interpreter, since what one process has already loaded hides what
a real start would load. No timings: the speed itself is measured by
``benchmarks/bench_small.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_keyed_image

from bgremove.cli import COMMANDS, build_parser, main
from bgremove.emulator import Emulator
from tests.images import make_unsupported

REPO = Path(__file__).resolve().parents[1]

#: Runs ``bgremove ARGS...`` in this interpreter, then prints what it loaded as JSON: the
#: modules of interest and how many times TLS certificate authorities were loaded.
PROBE = """
import json, ssl, sys
loads = []
original = ssl.SSLContext.load_verify_locations
def counting(self, *args, **kwargs):
    loads.append(1)
    return original(self, *args, **kwargs)
ssl.SSLContext.load_verify_locations = counting
from bgremove.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "ca_loads": len(loads),
                  "modules": sorted(m for m in sys.modules
                                    if m.startswith(("PIL.", "yaml", "bgremove.commands.")))}))
"""


def _run(args: list[str], emulator: Emulator) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env=_env(emulator), cwd=REPO, timeout=120)


def test_one_image_loads_only_what_it_uses(tmp_path: Path, emulator: Emulator) -> None:
    src = tmp_path / "subject.png"
    make_keyed_image().save(src)
    proc = _run(["remove", str(src), "-o", str(tmp_path / "out")], emulator)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["code"] == 0 and (tmp_path / "out" / "subject.png").is_file()
    modules = report["modules"]
    # no config file: no YAML parser
    assert not [m for m in modules if m.startswith("yaml")]
    # the sub-command's own module, not the other commands'
    assert [m for m in modules if m.startswith("bgremove.commands.")] == [
        "bgremove.commands.common", "bgremove.commands.remove"]
    # Pillow's plugins for the formats bgremove reads and writes, not all ~40
    plugins = {m for m in modules if m.endswith("ImagePlugin")}
    assert "PIL.PngImagePlugin" in plugins
    assert not plugins & {"PIL.PdfImagePlugin", "PIL.EpsImagePlugin", "PIL.IcoImagePlugin",
                          "PIL.PcxImagePlugin"}
    # a plain-http address needs no TLS: the certificate authorities (the costly part of a
    # TLS context) are never loaded; an https one loads them once (tests/test_tls.py)
    assert report["ca_loads"] == 0


def test_a_format_not_accepted_is_named_by_a_fresh_process(tmp_path: Path,
                                                            emulator: Emulator) -> None:
    src = make_unsupported(tmp_path / "old.png")  # PCX bytes under a .png name
    proc = _run(["remove", str(src), "-o", str(tmp_path / "out")], emulator)
    assert proc.returncode == 0, proc.stderr  # main() returned; its code is in the report
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["code"] == 1
    assert "PCX images are not accepted" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert emulator.stats()["tasks_submitted"] == 0


def test_a_config_file_is_still_read(tmp_path: Path, emulator: Emulator) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("output:\n  format: webp\n", encoding="utf-8")
    config.chmod(0o600)
    src = tmp_path / "subject.png"
    make_keyed_image().save(src)
    proc = _run(["remove", str(src), "-o", str(tmp_path / "out"), "--config", str(config)],
                emulator)
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert (tmp_path / "out" / "subject.webp").is_file()
    assert "yaml" in report["modules"]


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_the_command_table_names_every_command_and_its_module() -> None:
    assert _commands(build_parser()) == set(COMMANDS)
    for command in COMMANDS:
        assert command in _commands(build_parser(command))


def test_the_process_entry_leaves_its_objects_frozen_and_the_collector_off(
        tmp_path: Path, emulator: Emulator) -> None:
    # main() with the process's own command line returns with the objects frozen and the
    # collector not turned back on for one image (no last collection over all of them); a
    # caller passing argv, such as this test process, gets the code back and keeps its GC
    src = tmp_path / "subject.png"
    make_keyed_image().save(src)
    code = ("import atexit, gc, sys; from bgremove.cli import main; "
            "first = main(sys.argv[1:]); kept = gc.get_freeze_count(); "
            "atexit.register(lambda: print(first, kept, gc.get_freeze_count() > 0, "
            "gc.isenabled())); "
            "sys.argv = ['bgremove', *sys.argv[1:]]; main(); print('main returned')")
    proc = subprocess.run([sys.executable, "-c", code, "remove", str(src), "-o",
                           str(tmp_path / "out"), "--overwrite"], capture_output=True,
                          text=True, env=_env(emulator), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["main returned", "0 0 True False"], proc.stdout


def test_the_process_ends_with_every_line_written_through_a_pipe(
        tmp_path: Path, emulator: Emulator) -> None:
    # stdout to a pipe is block-buffered: what the process ends without must be written
    srcs = []
    for i in range(12):
        srcs.append(str(tmp_path / f"subject{i}.png"))
        make_keyed_image().save(srcs[-1])
    env = _env(emulator)
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.run([sys.executable, "-m", "bgremove", "remove", *srcs, "--json", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len([json.loads(line) for line in proc.stdout.splitlines()]) == 12
    assert proc.stderr.splitlines()[-1] == "bgremove: 12 images: 12 done"
    listed = subprocess.run([sys.executable, "-m", "bgremove", "tasks"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=120)  # print()s its table
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 + 12, listed.stdout


def test_the_usual_exit_waits_for_a_thread_still_running(tmp_path: Path) -> None:
    # (after Ctrl-C, a sync submit already sent is waited for by the exit)
    code = ("import sys, threading; from bgremove.cli import main; "
            "ended = threading.Event(); "
            "threading.Thread(target=lambda: (ended.wait(60), print('thread ended'))).start(); "
            "sys.argv = ['bgremove', 'remove', '--concurrency', '0', sys.argv[1]]; "
            "code = main(); print('main returned', code); ended.set()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.png")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["main returned 2", "thread ended"], proc.stderr
    assert proc.returncode == 0


def _env(emulator: Emulator) -> dict[str, str]:
    return dict(os.environ, WAVESPEED_API_KEY=emulator.api_key,
                WAVESPEED_BASE_URL=emulator.base_url)


@pytest.mark.parametrize("images", [1, 3])
def test_collection_waits_for_the_start_up_of_one_image_only(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
        images: int) -> None:
    # the start-up's long-lived objects are not collected over and over; one image never
    # turns the collector back on, a batch does before its images run, and the caller
    # (this test process) has it back on when main() returns, whatever happened
    from bgremove.stages import FileJob

    seen: list[bool] = []
    prepare = FileJob.prepare

    def noting(job: FileJob) -> Any:
        seen.append(gc.isenabled())
        return prepare(job)

    monkeypatch.setattr(FileJob, "prepare", noting)
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)
    srcs = []
    for i in range(images):
        srcs.append(str(tmp_path / f"subject{i}.png"))
        make_keyed_image().save(srcs[-1])
    assert gc.isenabled()
    assert main(["remove", *srcs, "-o", str(tmp_path / "out")]) == 0
    assert seen == [images > 1] * images
    assert gc.isenabled()
    assert main(["remove", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")]) == 1
    assert gc.isenabled()


def test_a_command_with_stdout_and_stderr_closed_still_succeeds(tmp_path: Path) -> None:
    # run from cron or a service with ">&- 2>&-": the process starts without fds 1 and 2
    def close_stdio() -> None:
        os.close(1)
        os.close(2)

    proc = subprocess.run(
        [sys.executable, "-m", "bgremove", "models", "list"], preexec_fn=close_stdio,
        env=dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache")),
        cwd=REPO, timeout=120)
    assert proc.returncode == 0
