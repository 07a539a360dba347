"""``bgremove tasks`` and ``bgremove fetch`` against the emulator over sockets, real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgremove.cli import main
from bgremove.emulator import Emulator, keyout_alpha
from bgremove.wavespeed import WaveSpeedClient
from tests.conftest import configured, make_keyed_image

Run = Any


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    def call(emu: Emulator | None, *argv: str) -> tuple[int, str, str]:
        if emu is not None:
            monkeypatch.setenv("WAVESPEED_API_KEY", emu.api_key)
            monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def foreign_task(emu: Emulator, image: Image.Image) -> str:
    """A task this machine did not run through bgremove (the web playground, say)."""
    import io

    data = io.BytesIO()
    image.save(data, format="PNG")
    with WaveSpeedClient(configured(emu).wavespeed) as client:
        url = client.upload(data.getvalue(), "image.png", "image/png")
        return client.run(url, sync=True).id


def test_tasks_lists_the_account_and_what_this_machine_knows(emulator: Emulator, run: Run,
                                                             tmp_path: Path) -> None:
    image = make_keyed_image()
    image.save(tmp_path / "mine.png")
    code, out, err = run(emulator, "remove", str(tmp_path / "mine.png"), "-o",
                         str(tmp_path / "out"), "--json", "--backend", "wavespeed")
    assert code == 0, err
    mine = json.loads(out)["task_id"]
    other = foreign_task(emulator, make_keyed_image(key=(0, 0, 200)))
    code, out, err = run(emulator, "tasks", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [other, mine]  # newest first
    by_id = {r["id"]: r for r in rows}
    assert by_id[mine]["input"] == str(tmp_path / "mine.png")
    assert by_id[mine]["saved"] and by_id[mine]["output"] == str(tmp_path / "out" / "mine.png")
    assert by_id[other]["input"] is None and not by_id[other]["saved"]
    assert all(r["status"] == "completed" and r["created_at"].endswith("Z") for r in rows)
    (tmp_path / "out" / "mine.png").unlink()  # the result was moved away: no longer saved here
    code, out, _ = run(emulator, "tasks")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("TASK") and len(lines) == 3
    mine_line = next(line for line in lines if line.startswith(mine))
    assert "mine.png" in mine_line and mine_line.rstrip().endswith("no")


def test_fetch_writes_the_service_cutout_again(emulator: Emulator, run: Run,
                                               tmp_path: Path) -> None:
    image = make_keyed_image()
    task = foreign_task(emulator, image)
    code, out, err = run(emulator, "fetch", task, "-o", str(tmp_path / "got"))
    assert code == 0, err
    assert out.strip() == f"{task} -> {tmp_path / 'got' / f'{task}.png'}"
    with Image.open(tmp_path / "got" / f"{task}.png") as got:
        assert got.getchannel("A").tobytes() == keyout_alpha(image).tobytes()


def test_fetch_with_input_gives_what_remove_gives(emulator: Emulator, run: Run,
                                                  tmp_path: Path) -> None:
    image = make_keyed_image(size=(80, 60))
    source = tmp_path / "photo.png"
    image.save(source)
    code, out, err = run(emulator, "remove", str(source), "-o", str(tmp_path / "removed"),
                         "--json", "--backend", "wavespeed")
    assert code == 0, err
    task = json.loads(out)["task_id"]
    code, out, err = run(emulator, "fetch", task, "--input", str(source), "-o",
                         str(tmp_path / "fetched"))
    assert code == 0, err
    with Image.open(tmp_path / "removed" / "photo.png") as a, \
            Image.open(tmp_path / "fetched" / "photo.png") as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()


def test_fetch_errors_are_one_line_each_and_the_rest_goes_on(emulator: Emulator, run: Run,
                                                             tmp_path: Path) -> None:
    good = foreign_task(emulator, make_keyed_image())
    code, out, err = run(emulator, "fetch", "no-such-task", good, "-o", str(tmp_path))
    assert code == 1
    assert out.strip() == f"{good} -> {tmp_path / f'{good}.png'}"
    lines = [line for line in err.splitlines() if line.startswith("bgremove:")
             and "WaveSpeed emulator" not in line]  # the in-process emulator logs too
    assert len(lines) == 1 and lines[0].startswith("bgremove: error: task no-such-task")
    assert "unknown to the service" in lines[0] and "Traceback" not in err


def test_fetch_refuses_an_input_that_is_not_the_tasks(emulator: Emulator, run: Run,
                                                      tmp_path: Path) -> None:
    task = foreign_task(emulator, make_keyed_image(size=(64, 48)))
    wrong = tmp_path / "tall.png"
    make_keyed_image(size=(30, 90)).save(wrong)
    code, _, err = run(emulator, "fetch", task, "--input", str(wrong), "-o", str(tmp_path))
    assert code == 1 and "not that task's input" in err
    assert len([line for line in err.splitlines() if line.startswith("bgremove:")
                and "WaveSpeed emulator" not in line]) == 1  # the in-process emulator logs too
    assert not (tmp_path / "tall.png.png").exists() and len(list(tmp_path.iterdir())) == 1


def test_fetch_refuses_another_image_of_the_same_shape(emulator: Emulator, run: Run,
                                                       tmp_path: Path) -> None:
    import hashlib

    from bgremove import tasklog

    source, other = tmp_path / "photo.png", tmp_path / "other.png"
    make_keyed_image(size=(80, 60)).save(source)
    make_keyed_image(size=(80, 60), key=(0, 0, 200)).save(other)  # same shape, other picture
    code, out, err = run(emulator, "remove", str(source), "-o", str(tmp_path / "removed"),
                         "--json", "--backend", "wavespeed")
    assert code == 0, err
    task = json.loads(out)["task_id"]
    assert tasklog.read()[task].sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    kept = other.read_bytes()
    code, out, err = run(emulator, "fetch", task, "--input", str(other), "-o",
                         str(tmp_path / "fetched"))
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("bgremove:")
             and "WaveSpeed emulator" not in line]  # the in-process emulator logs too
    assert lines == [f"bgremove: error: {other} is not the file task {task} was made from "
                     f"({source}): its content differs (give that file as it was, or leave out "
                     "--input for the cut-out alone)"]
    assert other.read_bytes() == kept and not (tmp_path / "fetched").exists()
    code, _, err = run(emulator, "fetch", task, "--input", str(source), "-o",
                       str(tmp_path / "fetched"))
    assert code == 0, err  # the task's own input is still taken
    assert (tmp_path / "fetched" / "photo.png").exists()


def test_fetch_usage_errors_exit_2(emulator: Emulator, run: Run, tmp_path: Path) -> None:
    code, _, err = run(emulator, "fetch", "a", "b", "--input", str(tmp_path / "x.png"))
    assert code == 2 and "--input once per TASK_ID" in err


def test_tasks_without_a_key_exit_2(run: Run) -> None:
    code, _, err = run(None, "tasks")
    assert code == 2 and "WAVESPEED_API_KEY" in err


def test_tasks_against_an_api_without_the_list_is_one_line(emulator_factory: Any,
                                                           run: Run) -> None:
    emu = emulator_factory(list_route=False)
    code, out, err = run(emu, "tasks")
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("bgremove:")
             and "WaveSpeed emulator" not in line]  # the in-process emulator logs too
    assert lines == ["bgremove: error: the service offers no task list (HTTP 404) (check "
                     "wavespeed.base_url points at the WaveSpeed API)"]
    assert emu.api_key not in err and "Traceback" not in err


def test_the_task_log_drops_old_lines_once_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove import tasklog

    monkeypatch.setattr(tasklog, "_COMPACT_BYTES", 900)
    now = __import__("time").time()
    monkeypatch.setattr(tasklog.time, "time", lambda: now - 9 * 24 * 3600)  # 9 days ago
    for i in range(10):
        tasklog.record(f"old{i}", input=f"/in/old{i}.png")
    monkeypatch.setattr(tasklog.time, "time", lambda: now)
    for i in range(10):
        tasklog.record(f"new{i}", input=f"/in/new{i}.png", output=f"/out/new{i}.png")
    assert set(tasklog.read()) == {f"new{i}" for i in range(10)}
    text = tasklog.log_path().read_text()
    assert "old" not in text and tasklog.log_path().stat().st_mode & 0o777 == 0o600


def test_a_big_log_of_recent_lines_is_not_rewritten_at_every_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove import tasklog

    monkeypatch.setattr(tasklog, "_COMPACT_BYTES", 900)
    now = __import__("time").time()
    clock = {"now": now - 7 * 24 * 3600}  # a week ago: kept, nothing to drop
    monkeypatch.setattr(tasklog.time, "time", lambda: clock["now"])
    for i in range(10):
        tasklog.record(f"week{i}", input=f"/in/week{i}.png")
    clock["now"] = now
    path = tasklog.log_path()
    inode = path.stat().st_ino
    for i in range(10):
        tasklog.record(f"new{i}", input=f"/in/new{i}.png")
    # over the size, nothing old enough to drop: appended to, never rewritten
    assert path.stat().st_ino == inode and path.stat().st_size > 900
    assert len(tasklog.read()) == 20
    # two days on the week-old lines are past keeping: one rewrite drops them
    clock["now"] = now + 2 * 24 * 3600
    tasklog.record("later", input="/in/later.png")
    assert path.stat().st_ino != inode
    assert set(tasklog.read()) == {f"new{i}" for i in range(10)} | {"later"}
