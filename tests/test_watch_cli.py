"""``bgremove watch`` as a user runs it (a subprocess): duplicates, folders, the service, status."""

from __future__ import annotations

import os
from pathlib import Path

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

    from bgremove.emulator import Fault
    from tests.test_watch_process import journal_rows
    from tests.test_watch_support import wait_until

    # every result request is held: the daemon submits, journals the task and waits
    emu = emulator_factory(faults=(Fault("delay", route="result", first=10**9, seconds=600),))
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for name in ("one.png", "two.png"):
        write_image(inbox / name, len(name) + ord(name[0]))
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), concurrency=2)
    try:
        wait_until(lambda: sum(s == "submitted" for s, _t in journal_rows(outbox)) == 2, 30,
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
        assert lines[0].startswith(f"bgremove: OUTBOX {outbox} cannot be written: ")
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
