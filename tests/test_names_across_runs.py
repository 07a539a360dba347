"""Names across runs, through the real command and the emulator on 127.0.0.1: an input
named alone gets the name its folder gave it, and a result is only ever skipped or
replaced by the input it was made from, never by another input that shares its name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bgremove.emulator import Emulator
from tests.cli_process import bgremove


def picture(path: Path, size: tuple[int, int]) -> Path:
    """An image whose size tells its result apart (a result has its input's size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (0, 200, 0))
    image.paste((200, 20, 20), (5, 5, size[0] - 5, size[1] - 5))
    image.save(path)
    return path


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def outputs(stdout: str) -> dict[str, tuple[str, str]]:
    """input name -> (output name, status), from ``--json``."""
    return {Path(r["input"]).name: (Path(r["output"]).name, r["status"])
            for r in map(json.loads, stdout.splitlines())}


def run(tmp: Path, emulator: Emulator, *args: str) -> dict[str, tuple[str, str]]:
    done = bgremove(tmp, "remove", *args, "--json", emulator=emulator)
    assert done.returncode == 0, done.stderr
    return outputs(done.stdout)


TIFF, WEBP = (60, 40), (40, 60)


def photo_folder(tmp: Path) -> tuple[Path, Path, Path]:
    """``a/photo.tiff`` and ``a/photo.webp`` (one name for both); -> a, out, the webp."""
    a = tmp / "a"
    picture(a / "photo.tiff", TIFF)
    return a, tmp / "out", picture(a / "photo.webp", WEBP)


def test_one_input_of_a_folder_gets_the_name_the_folder_gave_it(
        tmp_path: Path, emulator: Emulator) -> None:
    a, out, webp = photo_folder(tmp_path)
    assert run(tmp_path, emulator, str(a), "-o", str(out)) == {
        "photo.tiff": ("photo.png", "ok"), "photo.webp": ("photo-2.png", "ok")}
    tiffs = (out / "photo.png").read_bytes()

    # the webp alone: its own result is there, so it is skipped (not a false skip on the tiff's)
    assert run(tmp_path, emulator, str(webp), "-o", str(out)) == {
        "photo.webp": ("photo-2.png", "skipped")}
    assert emulator.stats()["tasks_submitted"] == 2

    # its result gone: it is made again under the same name, the tiff's untouched
    (out / "photo-2.png").unlink()
    assert run(tmp_path, emulator, str(webp), "-o", str(out)) == {
        "photo.webp": ("photo-2.png", "ok")}
    assert size_of(out / "photo-2.png") == WEBP
    assert (out / "photo.png").read_bytes() == tiffs
    assert emulator.stats()["tasks_submitted"] == 3


def test_an_input_named_first_alone_takes_the_name_its_folder_gives_it(
        tmp_path: Path, emulator: Emulator) -> None:
    a, out, webp = photo_folder(tmp_path)
    assert run(tmp_path, emulator, str(webp), "-o", str(out)) == {
        "photo.webp": ("photo-2.png", "ok")}  # photo.png is the tiff's name, made or not
    assert run(tmp_path, emulator, str(a), "-o", str(out)) == {
        "photo.tiff": ("photo.png", "ok"), "photo.webp": ("photo-2.png", "skipped")}
    assert size_of(out / "photo.png") == TIFF and size_of(out / "photo-2.png") == WEBP


def test_results_with_no_record_are_judged_by_the_names_the_folder_gives(
        tmp_path: Path, emulator: Emulator) -> None:
    """Results made before their inputs were recorded (or with the records lost)."""
    a, out, webp = photo_folder(tmp_path)
    run(tmp_path, emulator, str(a), "-o", str(out))
    records = Path(os.environ["XDG_STATE_HOME"]) / "bgremove" / "results"
    assert any(records.iterdir())
    shutil.rmtree(records)
    assert run(tmp_path, emulator, str(webp), "-o", str(out)) == {
        "photo.webp": ("photo-2.png", "skipped")}
    assert emulator.stats()["tasks_submitted"] == 2


def test_overwrite_replaces_only_the_inputs_own_result(tmp_path: Path, emulator: Emulator) -> None:
    a, out, webp = photo_folder(tmp_path)
    run(tmp_path, emulator, str(a), "-o", str(out))
    tiffs = (out / "photo.png").read_bytes()
    (out / "photo-2.png").write_bytes(b"stale")  # so its replacement shows

    assert run(tmp_path, emulator, str(webp), "-o", str(out), "--overwrite") == {
        "photo.webp": ("photo-2.png", "ok")}
    assert (out / "photo.png").read_bytes() == tiffs  # the tiff's paid result is kept
    assert size_of(out / "photo-2.png") == WEBP
    assert sorted(p.name for p in out.iterdir()) == ["photo-2.png", "photo.png"]
    assert emulator.stats()["tasks_submitted"] == 3


def test_a_name_another_folders_input_holds_is_passed_over(
        tmp_path: Path, emulator: Emulator) -> None:
    out = tmp_path / "out"
    first = picture(tmp_path / "b" / "x.jpg", TIFF)
    second = picture(tmp_path / "a" / "x.jpg", WEBP)
    assert run(tmp_path, emulator, str(first), "-o", str(out)) == {"x.jpg": ("x.png", "ok")}
    firsts = (out / "x.png").read_bytes()

    # another x.jpg: x.png is not its result, so it is neither skipped nor replaced
    assert run(tmp_path, emulator, str(second), "-o", str(out)) == {"x.jpg": ("x-2.png", "ok")}
    assert size_of(out / "x-2.png") == WEBP
    for extra in ([], ["--overwrite"]):
        assert run(tmp_path, emulator, str(second), "-o", str(out), *extra) == {
            "x.jpg": ("x-2.png", "skipped" if not extra else "ok")}
        assert (out / "x.png").read_bytes() == firsts
    # and the first one still finds its own
    assert run(tmp_path, emulator, str(first), "-o", str(out)) == {"x.jpg": ("x.png", "skipped")}
    assert emulator.stats()["tasks_submitted"] == 3


def test_a_moved_input_still_finds_its_own_result(tmp_path: Path, emulator: Emulator) -> None:
    out = tmp_path / "out"
    src = picture(tmp_path / "a" / "x.jpg", TIFF)
    run(tmp_path, emulator, str(src), "-o", str(out))
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "a"), moved)
    assert run(tmp_path, emulator, str(moved / "x.jpg"), "-o", str(out)) == {
        "x.jpg": ("x.png", "skipped")}  # the same bytes: its result, not paid again
    assert emulator.stats()["tasks_submitted"] == 1


def test_o_naming_another_inputs_result_is_refused(tmp_path: Path, emulator: Emulator) -> None:
    out = tmp_path / "out"
    run(tmp_path, emulator, str(picture(tmp_path / "a.jpg", TIFF)), "-o", str(out / "cut.png"))
    before = (out / "cut.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        done = bgremove(tmp_path, "remove", str(picture(tmp_path / "b.jpg", WEBP)),
                        "-o", str(out / "cut.png"), *extra, emulator=emulator)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "is the result of another image" in lines[0], done.stderr
        assert "a.jpg" in lines[0] and "Traceback" not in done.stderr
        assert (out / "cut.png").read_bytes() == before
    assert emulator.stats()["tasks_submitted"] == 1


# --- the planner alone: any subset is named as the whole folder names it -----------------------

NAMES = ["photo-2.jpg", "Photo.png", "photo.tiff", "photo.webp", "photo-2-1.gif", "photo-x.jpg",
         "other.jpg", "photo-nobg.png", "photo-nobg-2.jpg"]


@pytest.mark.parametrize("with_o", [True, False], ids=["-o DIR", "beside"])
def test_every_subset_is_named_as_the_whole_folder_names_it(tmp_path: Path, with_o: bool) -> None:
    from bgremove.batch import expand_inputs, plan_outputs
    from bgremove.config import Config
    from bgremove.origins import Origins

    folder = tmp_path / "a"
    for name in NAMES:
        picture(folder / name, TIFF)
    output = Config().output
    out = tmp_path / "out" if with_o else None
    images = expand_inputs([str(folder)], output.suffix, out).images
    whole = dict(plan_outputs(images, out, output, origins=Origins(tmp_path / "records")))
    assert len(set(whole.values())) == len(images) >= 7
    for mask in range(1, 2 ** len(images)):
        subset = [p for i, p in enumerate(images) if mask >> i & 1]
        for order in (subset, subset[::-1]):  # as given on the command line, in any order
            plan = plan_outputs(order, out, output, origins=Origins(tmp_path / "records"))
            assert dict(plan) == {src: whole[src] for src in order}, order
