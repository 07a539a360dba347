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
