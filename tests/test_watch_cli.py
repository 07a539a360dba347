"""``bgremove watch`` as a user runs it (a subprocess): duplicates, folders, the service, status."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.test_watch_process import Proc
from tests.test_watch_support import files, image_bytes, write_image

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def test_inputs_with_the_same_content_each_get_their_output(tmp_path: Path,
                                                             emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "a.png", 1)
    write_image(inbox / "b.png", 1)  # a SKU-named batch: same photo, two names
    write_image(inbox / "c.png", 2)
    write_image(inbox / "shoot1" / "x.png", 3)  # a mirrored shoot folder
    write_image(inbox / "shoot2" / "x.png", 3)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive")
    assert proc.wait(60) == 0, proc.log()
    assert files(outbox) == ["a.png", "b.png", "c.png", "shoot1/x.png", "shoot2/x.png"]
    assert os.path.samefile(outbox / "a.png", outbox / "b.png")
    assert os.path.samefile(outbox / "shoot1/x.png", outbox / "shoot2/x.png")
    assert emu.stats()["tasks_submitted"] == 3  # one upload per content, not per name
    assert proc.log().count("not sent again") == 2

    # the same file dropped again: already has its output, no second copy, nothing sent
    (inbox / "b.png").write_bytes(image_bytes(1))
    again = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive", name="again")
    assert again.wait(60) == 0, again.log()
    assert files(outbox) == ["a.png", "b.png", "c.png", "shoot1/x.png", "shoot2/x.png"]
    assert emu.stats()["tasks_submitted"] == 3


def test_status_lists_unfinished_jobs_by_name_and_where_they_are(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    from tests.test_watch_process import journal_rows
    from tests.test_watch_support import wait_until

    # every task takes 10 minutes: the daemon submits, journals the task and polls
    emu = emulator_factory(delay=600.0)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for name in ("one.png", "two.png"):
        write_image(inbox / name, len(name) + ord(name[0]))
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), concurrency=2)
    try:
        wait_until(lambda: sum(s == "submitted" for s, _t in journal_rows(outbox)) == 2, 60,
                   what="both submitted")
    finally:
        proc.kill()  # kill -9: both files are out of INBOX, in the claim folder
    assert files(inbox) == []  # "vanished" from a user's point of view

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bgremove", "status", str(outbox), *extra],
                              capture_output=True, text=True, timeout=30,
                              cwd=Path(__file__).resolve().parents[1])

    text = status()
    assert text.returncode == 0, text.stderr
    assert "killed" in text.stdout and "unfinished jobs: 2" in text.stdout
    assert "resumes them" in text.stdout
    listed = json.loads(status("--json").stdout)["unfinished_jobs"]
    assert sorted(j["input"] for j in listed) == ["one.png", "two.png"]
    for job in listed:
        assert job["state"] == "submitted" and job["task_id"]
        assert Path(job["file"]).is_file() and ".bgremove-claims" in job["file"]
        assert f"{job['input']}: submitted, task {job['task_id']}; the file is at " \
               f"{job['file']}" in text.stdout


def _unwritable_outbox(tmp_path: Path) -> Path:
    """A folder that cannot be written, even by root: its parent is a regular file."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro / "out"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return blocker / "out"


def test_an_unwritable_outbox_at_start_is_one_line_and_exit_2(tmp_path: Path,
                                                               emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    inbox = tmp_path / "in"
    write_image(inbox / "keep.png", 1)
    outbox = _unwritable_outbox(tmp_path)
    for extra in (("--once",), ()):
        proc = Proc(tmp_path, emu, str(inbox), str(outbox), *extra, name=f"start{len(extra)}")
        assert proc.wait(30) == 2
        lines = proc.log().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.log(), lines
        assert lines[0].startswith(f"bgremove: error: OUTBOX {outbox} cannot be written: ")
        assert "nothing was taken from INBOX" in lines[0]
        assert files(inbox) == ["keep.png"]  # untouched
    assert emu.stats()["tasks_submitted"] == 0


def test_once_stops_with_exit_1_when_outbox_cannot_be_written(tmp_path: Path,
                                                             emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "shoot" / "x.png", 1)
    outbox.mkdir()
    (outbox / "shoot").write_text("in the way")  # OUTBOX/shoot/ cannot be made: like a full disk
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive")
    assert proc.wait(60) == 1, proc.log()  # ends (a cron job must), instead of waiting forever
    log = proc.log()
    assert "cannot be written" in log and "stopping (--once)" in log, log
    assert "Traceback" not in log
    assert emu.stats()["tasks_submitted"] == 0  # nothing paid for a result it could not save
    assert files(inbox / "failed") == []  # not failed: it is kept for the next run
    # the next run, once the folder is fixed, finishes it
    (outbox / "shoot").unlink()
    again = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive", name="again")
    assert again.wait(60) == 0, again.log()
    assert files(outbox) == ["shoot/x.png"]


# -- outages: the service down, the offline model missing ---------------------------------

OUTAGE_CONFIG = ("backend: wavespeed\n"
                 "wavespeed:\n  poll:\n    initial: 0.05\n    max: 0.2\n"
                 "  retry:\n    max_attempts: 3\n    backoff_initial: 0.01\n"
                 "    backoff_max: 0.05\n"
                 "watch:\n  stable_seconds: 0.2\n  settle_seconds: 0.6\n  poll_seconds: 0.1\n"
                 "  shutdown_grace: 30\n  outage_retry_seconds: 1\n")


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _down(port: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(api_key="wsk-test-0123456789abcdef",
                           base_url=f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("cause", ["service down", "key refused"])
def test_an_outage_pauses_intake_with_one_line_and_resumes(tmp_path: Path, emulator_factory,  # type: ignore[no-untyped-def]
                                                           cause: str) -> None:
    """No file's fault: the service unreachable, or a key it refuses (a new key before the
    account's first top-up). The files wait, one line says so, the first success resumes."""
    from tests.test_watch_support import wait_until

    (tmp_path / "config.yaml").write_text(OUTAGE_CONFIG)
    port = _closed_port()
    key = _down(port).api_key
    refusing = emulator_factory(port=port, api_key=key, key_state="inactive") \
        if cause == "key refused" else None
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_image(inbox / f"s{i}.png", i)
    proc = Proc(tmp_path, _down(port), str(inbox), str(outbox), concurrency=2)
    paused, resumed = {"service down": ("service unreachable", "the service answers again"),
                       "key refused": ("API key refused", "the service accepts the key again")
                       }[cause]
    try:
        wait_until(lambda: "intake paused" in proc.log(), 30, what="the pause line")
        assert f"{paused}: intake paused, retrying every 1 s" in proc.log()
        assert files(inbox / "failed") == []
        if refusing is not None:
            refusing.stop()  # the account was topped up
        emu = emulator_factory(port=port, api_key=key)  # the service is back
        wait_until(lambda: len(files(outbox)) == 3, 30, what="all three cut out")
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    log = proc.log()
    assert log.count("intake paused") == 1, log  # one line for the outage, not per file
    assert "retrying in" not in log and "(attempt" not in log, log  # no per-try lines
    assert f"{resumed}: resuming intake" in log and "error: failed" not in log, log
    assert log.splitlines()[-1].endswith("stopped: 3 done, 0 duplicates, 0 failed since start")
    assert files(inbox / "failed") == [] and emu.stats()["tasks_submitted"] == 3


def test_service_down_a_signal_stops_the_daemon_at_once(tmp_path: Path) -> None:
    from tests.test_watch_support import wait_until

    (tmp_path / "config.yaml").write_text(OUTAGE_CONFIG)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_image(inbox / f"s{i}.png", i)
    proc = Proc(tmp_path, _down(_closed_port()), str(inbox), str(outbox))
    try:
        wait_until(lambda: "intake paused" in proc.log(), 30, what="the pause line")
        proc.signal(signal.SIGINT)
        # shutdown_grace is 30 s, but nothing in flight can finish: the daemon stops now
        assert proc.wait(10) == 0, proc.log()
    finally:
        if proc.popen.poll() is None:
            proc.kill()
    assert "stopping now (service unreachable)" in proc.log()
    assert files(inbox / "failed") == [] and files(outbox) == []
    left = [p.name for p in inbox.rglob("*.png")]
    assert len(left) == 3  # in INBOX or its claim folder: resumed by the next start


def _offline(tmp_path: Path) -> dict[str, str]:
    """No network for the model download (every source goes to a closed port), no cache."""
    dead = f"http://127.0.0.1:{_closed_port()}"
    return {"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead,
            "NO_PROXY": "", "no_proxy": "", "PIP_INDEX_URL": f"{dead}/simple",
            "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
            "PIP_FIND_LINKS": "", "BGREMOVE_MODEL_DIR": str(tmp_path / "no-models")}


def test_offline_without_a_cached_model_remove_fails_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    srcs = [write_image(tmp_path / f"m{i}.png", i) for i in range(3)]
    base = {k: v for k, v in os.environ.items()
            if k not in ("WAVESPEED_API_KEY", "WAVESPEED_BASE_URL", "BGREMOVE_CONFIG")}
    done = subprocess.run([sys.executable, "-m", "bgremove", "remove", *map(str, srcs), "-o",
                           str(tmp_path / "out"), "--backend", "local"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**base, **_offline(tmp_path)})
    assert done.returncode == 2, done.stderr
    # one download attempt (three sources tried once) and one error for the batch, not per image
    assert done.stderr.count("fetching model u2netp from") == 3, done.stderr
    assert done.stderr.count("could not be downloaded") == 1, done.stderr
    assert "m0.png" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or files(tmp_path / "out") == []


def test_offline_without_a_cached_model_the_daemon_pauses(tmp_path: Path) -> None:
    from tests.test_watch_support import wait_until

    (tmp_path / "config.yaml").write_text(OUTAGE_CONFIG.replace("outage_retry_seconds: 1",
                                                                "outage_retry_seconds: 60"))
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_image(inbox / f"m{i}.png", i)
    proc = Proc(tmp_path, _down(_closed_port()), str(inbox), str(outbox), "--backend",
                "local", concurrency=1, env=_offline(tmp_path))
    try:
        wait_until(lambda: "intake paused" in proc.log(), 90, what="the pause line")
        assert "offline model unavailable: intake paused, retrying every 60 s" in proc.log()
        proc.signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.log()
    finally:
        if proc.popen.poll() is None:
            proc.kill()
    assert files(inbox / "failed") == []  # not a permanent error of each image
    assert len([p for p in inbox.rglob("*.png")]) == 3
    assert proc.log().count("intake paused") == 1

    once = Proc(tmp_path, _down(_closed_port()), str(inbox), str(outbox), "--backend", "local",
                "--once", concurrency=1, env=_offline(tmp_path), name="once")
    assert once.wait(90) == 1, once.log()  # a cron job ends, and says why
    assert "offline model unavailable: stopping (--once)" in once.log()
    assert files(inbox / "failed") == []


def test_the_task_log_keeps_the_sha256_of_each_input(
        tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from bgremove import tasklog

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the daemon's (``Proc``)
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "a.png", 1)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once")
    assert proc.wait(60) == 0, proc.log()
    records = [r for r in tasklog.read().values() if r.input == str(inbox / "a.png")]
    assert [r.sha256 for r in records] == [hashlib.sha256(image_bytes(1)).hexdigest()]


def test_an_inbox_that_cannot_be_written_is_one_line_and_exit_2(
        tmp_path: Path, emulator_factory, read_only_folder: Path) -> None:  # type: ignore[no-untyped-def]
    """A read-only INBOX (a mounted card, a share without write access): the daemon cannot
    move files out of it, and says so, not that something is in the way of its claims."""
    emu = emulator_factory()
    proc = Proc(tmp_path, emu, str(read_only_folder), str(tmp_path / "out"), "--once")
    assert proc.wait(30) == 2
    lines = proc.log().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.log(), lines
    assert lines[0].startswith(
        f"bgremove: error: INBOX {read_only_folder} cannot be written: "), lines
    assert "nothing was taken from INBOX" in lines[0] and "remove it" not in lines[0]


def test_a_sub_folder_without_recursive_is_said_once_and_left_alone(tmp_path: Path,
                                                                    emulator_factory) -> None:  # type: ignore[no-untyped-def]
    """A folder dropped into INBOX without --recursive: one line says its images are not
    taken (instead of silence), and nothing in it is touched."""
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "top.png", 1)
    write_image(inbox / "shoot" / "x.png", 2)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once")
    assert proc.wait(60) == 0, proc.log()
    warned = [line for line in proc.log().splitlines() if "not watched" in line]
    assert len(warned) == 1 and "sub-folder shoot of INBOX" in warned[0], proc.log()
    assert "--recursive" in warned[0] and "done" not in warned[0] and "failed" not in warned[0]
    assert files(outbox) == ["top.png"] and (inbox / "shoot" / "x.png").is_file()
