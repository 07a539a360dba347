"""Batches through the real command: re-runs that bill nothing twice, ``-o`` checked once,
subfolders and files that are not images said, not silently dropped."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgremove.emulator import Emulator
from tests.cli_process import bgremove


def photo(path: Path, colour: tuple[int, int, int] = (200, 20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (40, 30), (0, 200, 0))
    image.paste(colour, (10, 5, 30, 25))
    image.save(path)
    return path


def records(stdout: str) -> dict[str, dict[str, object]]:
    return {Path(str(r["input"])).name: r for r in map(json.loads, stdout.splitlines())}


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if " images: " in line or " image: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


# --- 1. re-running costs nothing ---------------------------------------------------------------

def test_a_folder_run_twice_pays_once_even_with_collision_names(
        tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "photo1.jpg")
    photo(shoot / "photo1.png", (20, 20, 200))  # same stem: its result is photo1-nobg-2.png
    photo(shoot / "photo2.png")
    first = bgremove(tmp_path, "remove", str(shoot), emulator=emulator)
    assert first.returncode == 0, first.stderr
    made = sorted(p.name for p in shoot.iterdir())
    assert made == ["photo1-nobg-2.png", "photo1-nobg.png", "photo1.jpg", "photo1.png",
                    "photo2-nobg.png", "photo2.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in shoot.iterdir()}
    assert emulator.stats()["tasks_submitted"] == 3

    again = bgremove(tmp_path, "remove", str(shoot), "--json", emulator=emulator)
    assert again.returncode == 0, again.stderr
    assert emulator.stats()["tasks_submitted"] == 3 and emulator.stats()["uploads"] == 3
    assert sorted(p.name for p in shoot.iterdir()) == made  # no result of a result
    assert {p.name: p.stat().st_mtime_ns for p in shoot.iterdir()} == stamps
    got = records(again.stdout)
    assert set(got) == {"photo1.jpg", "photo1.png", "photo2.png"}
    assert all(r["status"] == "skipped" and r["error"] is None for r in got.values())
    assert got["photo1.png"]["output"] == str(shoot / "photo1-nobg-2.png")
    assert "3 skipped" in summary(again.stderr)


def test_one_file_to_a_folder_twice_pays_once_and_overwrite_redoes_it(
        tmp_path: Path, emulator: Emulator) -> None:
    src = photo(tmp_path / "x.jpg")
    out = tmp_path / "out"
    assert bgremove(tmp_path, "remove", str(src), "-o", str(out), emulator=emulator
                    ).returncode == 0
    second = bgremove(tmp_path, "remove", str(src), "-o", str(out), emulator=emulator)
    assert second.returncode == 0, second.stderr
    assert emulator.stats()["tasks_submitted"] == 1
    assert "1 skipped" in summary(second.stderr) and "--overwrite" in second.stderr
    (out / "x.png").write_bytes(b"stale")
    third = bgremove(tmp_path, "remove", str(src), "-o", str(out), "--overwrite",
                     emulator=emulator)
    assert third.returncode == 0, third.stderr
    assert emulator.stats()["tasks_submitted"] == 2
    with Image.open(out / "x.png") as result:
        assert result.size == (40, 30)


def test_results_made_beside_the_inputs_are_not_inputs_of_a_run_with_o(
        tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "a.jpg")
    photo(shoot / "a.png")
    assert bgremove(tmp_path, "remove", str(shoot), emulator=emulator).returncode == 0
    assert (shoot / "a-nobg-2.png").is_file()
    done = bgremove(tmp_path, "remove", str(shoot), "-o", str(tmp_path / "out"), "--json",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert set(records(done.stdout)) == {"a.jpg", "a.png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-2.png", "a.png"]


def test_an_empty_suffix_still_finds_the_images(tmp_path: Path, emulator: Emulator) -> None:
    photo(tmp_path / "shoot" / "a.jpg")
    done = bgremove(tmp_path, "remove", str(tmp_path / "shoot"), emulator=emulator,
                    config="output:\n  suffix: ''\n")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "shoot").iterdir()) == ["a.jpg", "a.png"]


def test_a_new_image_in_a_done_folder_is_the_only_one_sent(
        tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "a.png")
    assert bgremove(tmp_path, "remove", str(shoot), "-o", str(tmp_path / "out"),
                    emulator=emulator).returncode == 0
    photo(shoot / "b.png")
    done = bgremove(tmp_path, "remove", str(shoot), "-o", str(tmp_path / "out"), "--json",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    got = records(done.stdout)
    assert got["a.png"]["status"] == "skipped" and got["b.png"]["status"] == "ok"
    assert emulator.stats()["tasks_submitted"] == 2


# --- 8. -o checked once; -o FILE for one input --------------------------------------------------

def test_an_unusable_output_folder_is_one_line_and_exit_2(
        tmp_path: Path, emulator: Emulator) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    srcs = [photo(tmp_path / "in" / f"{i}.png") for i in range(11)]
    (tmp_path / "in" / "sub").mkdir()  # its note would be a second line
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    done = bgremove(tmp_path, "remove", str(tmp_path / "in"), str(bad), "-o",
                    str(blocker / "out"), emulator=emulator)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(blocker / "out") in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert emulator.stats()["uploads"] == 0
    assert all(s.exists() for s in srcs)


def test_a_read_only_output_folder_is_one_line_and_exit_2(
        tmp_path: Path, emulator: Emulator, read_only_folder: Path) -> None:
    srcs = [photo(tmp_path / f"{i}.png") for i in range(3)]
    done = bgremove(tmp_path, "remove", *map(str, srcs), "-o", str(read_only_folder),
                    emulator=emulator)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(read_only_folder) in done.stderr and "Traceback" not in done.stderr
    assert "or give another folder with -o" in done.stderr  # true beside an input too
    assert emulator.stats()["uploads"] == 0
    assert all(s.exists() for s in srcs)


def test_o_with_an_image_name_names_the_output_file(tmp_path: Path, emulator: Emulator) -> None:
    src = photo(tmp_path / "shoe.jpg")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "result.png"),
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "result.png").is_file()
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "new" / "shop.jpg"),
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "new" / "shop.jpg") as out:  # the format follows the name
        assert out.format == "JPEG" and out.getpixel((1, 1)) == (255, 255, 255)
    again = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "result.png"),
                     emulator=emulator)
    assert again.returncode == 0 and emulator.stats()["tasks_submitted"] == 2  # kept, not paid


def test_o_naming_a_format_bgremove_does_not_write_is_refused(tmp_path: Path,
                                                              emulator: Emulator) -> None:
    """`-o cutout.gif` meant a GIF file: refused in one line, not a folder named cutout.gif."""
    src = photo(tmp_path / "shoe.jpg")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "cutout.gif"),
                    emulator=emulator)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"bgremove: error: -o {tmp_path / 'cutout.gif'}: .gif is not an output format (name "
        "the result .png, .jpg, .webp or .tif, or give a folder)"), done.stderr
    assert not (tmp_path / "cutout.gif").exists() and emulator.stats()["uploads"] == 0


def test_o_with_an_image_name_and_several_inputs_is_refused(
        tmp_path: Path, emulator: Emulator) -> None:
    for i in range(2):
        photo(tmp_path / "in" / f"{i}.png")
    (tmp_path / "in" / "sub").mkdir()  # the note on subfolders waits until the work starts
    done = bgremove(tmp_path, "remove", str(tmp_path / "in"), "-o", str(tmp_path / "result.png"),
                    emulator=emulator)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "result.png" in lines[0] and "2 images" in lines[0]
    assert not (tmp_path / "result.png").exists() and emulator.stats()["uploads"] == 0


def test_o_file_with_a_contradicting_format_is_refused(
        tmp_path: Path, emulator: Emulator) -> None:
    src = photo(tmp_path / "a.png")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "r.png"), "--format",
                    "webp", emulator=emulator)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "webp" in done.stderr and "r.png" in done.stderr


@pytest.mark.parametrize("flags", [(), ("--overwrite",)])
def test_o_file_naming_the_input_itself_is_refused_and_the_input_kept(
        tmp_path: Path, emulator: Emulator, flags: tuple[str, ...]) -> None:
    """``-o`` naming the input (by another spelling too) would replace the user's photo with
    its cut-out (with ``--overwrite``), or call the photo "a result already there"."""
    src = photo(tmp_path / "in" / "a.png")
    original = src.read_bytes()
    other_spelling = tmp_path / "in" / ".." / "in" / "a.png"
    done = bgremove(tmp_path, "remove", str(src), "-o", str(other_spelling), *flags,
                    emulator=emulator)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a.png" in lines[0] and "input" in lines[0], done.stderr
    assert src.read_bytes() == original
    assert emulator.stats()["uploads"] == 0

# --- 10. subfolders and files that are not images ----------------------------------------------

def test_subfolders_are_said_once_and_taken_with_recursive(
        tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "top.png")
    photo(shoot / "day1" / "a.png")
    photo(shoot / "day2" / "a.png")
    photo(shoot / "day2" / "deeper" / "b.png")
    (shoot / ".hidden").mkdir()
    photo(shoot / ".hidden" / "x.png")
    done = bgremove(tmp_path, "remove", str(shoot), "-o", str(tmp_path / "out"),
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "subfolder" in line]
    assert len(said) == 1 and "2 subfolders" in said[0] and "-r" in said[0], done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["top.png"]

    done = bgremove(tmp_path, "remove", str(shoot), "-o", str(tmp_path / "out"), "-r",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert "subfolder" not in done.stderr
    out = tmp_path / "out"
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert found == ["day1/a.png", "day2/a.png", "day2/deeper/b.png", "top.png"]
    assert emulator.stats()["tasks_submitted"] == 4  # top.png was done by the first run


def test_recursive_without_o_writes_beside_each_input_and_skips_results(
        tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "day1" / "a.png")
    assert bgremove(tmp_path, "remove", str(shoot), "--recursive", emulator=emulator
                    ).returncode == 0
    assert (shoot / "day1" / "a-nobg.png").is_file()
    again = bgremove(tmp_path, "remove", str(shoot), "--recursive", emulator=emulator)
    assert again.returncode == 0 and emulator.stats()["tasks_submitted"] == 1
    assert sorted(p.name for p in (shoot / "day1").iterdir()) == ["a-nobg.png", "a.png"]


def test_a_folder_of_subfolders_only_says_to_add_r(tmp_path: Path, emulator: Emulator) -> None:
    photo(tmp_path / "shoot" / "day1" / "a.png")
    done = bgremove(tmp_path, "remove", str(tmp_path / "shoot"), emulator=emulator)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no images found" in lines[0] and "add -r" in lines[0]


def test_a_subfolder_name_cannot_forge_a_line(tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot\nbgremove: all done"
    photo(shoot / "a.png")
    (shoot / "sub").mkdir()
    Image.new("RGB", (40, 30), (0, 200, 0)).save(shoot / "wall\x1b[2K.png")  # no subject
    done = bgremove(tmp_path, "remove", str(shoot), emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr
    assert not any(line.startswith("bgremove: all done") for line in done.stderr.splitlines())
    assert sum("add -r" in line for line in done.stderr.splitlines()) == 1
    assert sum("warning:" in line for line in done.stderr.splitlines()) == 1


def test_files_that_are_not_images_are_counted(tmp_path: Path, emulator: Emulator) -> None:
    shoot = tmp_path / "shoot"
    photo(shoot / "a.png")
    for name in ("IMG_1.HEIC", "IMG_2.heic", "DSC_3.NEF", "notes.txt"):
        (shoot / name).write_bytes(b"\0" * 10)
    (shoot / ".DS_Store").write_bytes(b"\0")
    done = bgremove(tmp_path, "remove", str(shoot), emulator=emulator)
    assert done.returncode == 0, done.stderr
    line = summary(done.stderr)
    assert "4 other files left out" in line, line
    assert ".heic" in line and ".nef" in line and ".txt" in line


def test_an_mpo_in_a_folder_is_taken_as_watch_and_a_named_file_take_it(tmp_path: Path,
                                                                   emulator: Emulator) -> None:
    """A stereo camera's .MPO is a JPEG (its first picture is cut out): in a folder too."""
    shoot = tmp_path / "shoot"
    photo(shoot / "a.png")
    image = Image.open(photo(tmp_path / "b.png"))
    image.save(shoot / "DSCF0001.MPO", format="MPO", save_all=True, append_images=[image])
    done = bgremove(tmp_path, "remove", str(shoot), emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert summary(done.stderr) == "bgremove: 2 images: 2 done", done.stderr
    assert (shoot / "DSCF0001-nobg.png").is_file()


# --- 14. the breaker decides before the next image starts ---------------------------------------

def test_an_unreachable_service_starts_no_image_after_the_third_failure(tmp_path: Path) -> None:
    """Through the command: one worker, a port with nothing listening: exactly three tries."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srcs = [photo(tmp_path / f"{i}.png") for i in range(8)]
    done = bgremove(tmp_path, "remove", *map(str, srcs), "--concurrency", "1", "--json",
                    config="wavespeed:\n  retry:\n    max_attempts: 1\n",
                    env={"WAVESPEED_API_KEY": "wsk-some-valid-looking-key",
                         "WAVESPEED_BASE_URL": f"http://127.0.0.1:{port}"})
    assert done.returncode == 1
    kinds = [r["error_kind"] for r in records(done.stdout).values()]
    assert kinds.count("connection") == 3 and kinds.count("not_attempted") == 5


def test_the_breaker_wins_the_race_against_a_slow_reporter(tmp_path: Path) -> None:
    """The race itself: the thread that reports results is held up on the second failure
    until a fourth image starts (or 2 s pass). Meanwhile the worker fails the third image:
    when the reporting thread makes the decision, it has not seen that failure yet and the
    worker starts the fourth; when the worker decides, it never does."""
    import threading

    from bgremove.batch import plan_outputs, run_batch
    from bgremove.config import Config
    from bgremove.errors import ServiceConnectionError
    from bgremove.jobs import JobResult

    started: list[str] = []
    fourth = threading.Event()

    class Unreachable:
        name = "unreachable"

        def cut_out(self, image: object, hooks: object = None) -> object:
            started.append(threading.current_thread().name)
            if len(started) >= 4:
                fourth.set()
            raise ServiceConnectionError("cannot connect to the service")

        def close(self) -> None:
            pass

    failures = 0

    def slow_reporter(result: JobResult) -> None:
        nonlocal failures
        if isinstance(result.error, ServiceConnectionError):
            failures += 1
            if failures == 2:
                fourth.wait(2.0)  # the window in which a late decision lets one through

    config = Config().with_overrides({"concurrency": 1})
    srcs = [photo(tmp_path / f"{i}.png") for i in range(8)]
    plan = plan_outputs(srcs, tmp_path / "out", config.output)
    results = run_batch(plan, Unreachable(), config,  # type: ignore[arg-type]
                        on_result=slow_reporter)
    assert len(started) == 3, started
    assert [r.error.kind for r in results if r.error].count("not_attempted") == 5


# --- Ctrl-C: the wait for a sync submit ends at once, without a traceback ------------------------

def _remove_interrupted(tmp_path: Path, emu: Emulator, images: int
                        ) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """``bgremove remove`` of ``images`` photos at that concurrency in sync mode, sent a
    Ctrl-C once each one's submit waits at the service (its task never ends by itself).
    Returns the process, the lines of its stderr as a thread reads them, and that thread."""
    import signal
    import time

    from tests.cli_process import COMMAND, FAST, ROOT

    config = tmp_path / "config.yaml"
    config.write_text(FAST + "  wait: sync\n", encoding="utf-8")
    env = dict(os.environ, BGREMOVE_CONFIG=str(config), PYTHONUNBUFFERED="1",
               WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url)
    srcs = [str(photo(tmp_path / "in" / f"photo{i}.png")) for i in range(images)]
    proc = subprocess.Popen([*COMMAND, "remove", *srcs, "-o", str(tmp_path / "out"),
                             "--concurrency", str(images)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while emu.stats().get("running_tasks", 0) < images:  # each sync submit is waiting
            assert time.monotonic() < deadline and proc.poll() is None, "".join(said)
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
    except BaseException:
        _ended(proc, reader, emu)
        raise
    return proc, said, reader


def _ended(proc: subprocess.Popen[str], reader: threading.Thread, emu: Emulator) -> None:
    """Make sure the process is gone and its tasks end (a failed test leaves neither)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    reader.join(60)
    if proc.stderr is not None:
        proc.stderr.close()
    emu.end_delays()


def test_a_second_ctrl_c_ends_the_wait_for_a_sync_submit_without_a_traceback(
        tmp_path: Path, emulator_factory: Any) -> None:
    """After the first Ctrl-C a batch's process still waits for the sync submits its
    pipeline's threads sent (they cannot be interrupted); a second Ctrl-C must end it there
    and then, with no traceback from the interpreter's wait for those threads."""
    import signal
    import time

    emu = emulator_factory(delay=600.0)
    proc, said, reader = _remove_interrupted(tmp_path, emu, 2)
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("bgremove: interrupted") for line in said):
            assert time.monotonic() < deadline, "".join(said)  # the first Ctrl-C is handled
            time.sleep(0.02)
        assert proc.poll() is None, "".join(said)  # still waiting for the sync submits
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        _ended(proc, reader, emu)
    stderr = "".join(said)
    assert proc.returncode in (130, -signal.SIGINT), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_one_ctrl_c_ends_one_images_sync_wait_at_once(tmp_path: Path,
                                                       emulator_factory: Any) -> None:
    """One image waits for its sync submit on the command's own thread: the first Ctrl-C
    ends the process there and then (its task, which may be billed, is said), not when the
    service answers (here: in ten minutes)."""
    emu = emulator_factory(delay=600.0)
    proc, said, reader = _remove_interrupted(tmp_path, emu, 1)
    try:
        proc.wait(60)
        still_running = emu.stats().get("running_tasks", 0)
    finally:
        _ended(proc, reader, emu)
    stderr = "".join(said)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-2:] == [
        "bgremove: stopped; 1 image(s) were at the service and may still be billed: run the "
        "same command again to get their results without paying twice (`bgremove tasks` "
        "lists them)", "bgremove: interrupted"], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert still_running == 1 and emu.stats()["tasks_submitted"] == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
