"""When a dropped file is taken: at once when it arrives whole, after the wait otherwise.

A file renamed into INBOX (written elsewhere first) is tried at once; one written in place
waits, even once closed (its writer may open it again). The completeness check still
decides, and a file that fails it goes back to the normal wait (``watch.stable_seconds``),
never to failed/. These tests set the wait very high, so a file taken within the deadline
can only have been taken early. Real daemon, real emulator, real files and inotify events
(a move from outside INBOX is only known as a move to native events; the polling observer
sees a new file).
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.test_watch_support import (
    DaemonRun,
    LogLines,
    captured_logs,
    files,
    image_bytes,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

#: the normal wait: far longer than any deadline below
NEVER = 600.0


@pytest.fixture
def logs() -> Iterator[LogLines]:
    with captured_logs("bgremove.watcher.intake", logging.DEBUG) as handler:
        yield handler


def pixels(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def cutout_problem(output: Path, original: bytes) -> str | None:
    """Why ``output`` is not a cut-out of exactly ``original`` (None when it is): same
    size, its key colour cleared, its red block kept, every opaque pixel the original's own."""
    source = pixels(original)
    with Image.open(output) as im:
        out = im.convert("RGBA")
    if out.size != source.size:
        return f"size {out.size}, not {source.size}"
    key = source.getpixel((0, 0))
    for xy in ((x, y) for x in range(out.width) for y in range(out.height)):
        r, g, b, a = out.getpixel(xy)
        colour = source.getpixel(xy)
        if colour == key and a != 0:
            return f"pixel {xy} of the background kept"
        if colour == (220, 20, 20) and a != 255:
            return f"pixel {xy} of the subject cleared"
        if a == 255 and (r, g, b) != colour:
            return f"pixel {xy} is not the input's"
    return None


def assert_cutout_of(output: Path, original: bytes) -> None:
    problem = cutout_problem(output, original)
    assert problem is None, problem


def mirrored(data: bytes) -> bytes:
    """Another picture of the same size (its subject elsewhere)."""
    buf = io.BytesIO()
    pixels(data).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "PNG")
    return buf.getvalue()


def test_a_moved_in_file_is_taken_at_once_files_written_in_place_wait(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with DaemonRun(tmp_path, emu, "native", stable_seconds=NEVER) as run:
        # written in place and still open: complete bytes, but nothing says it is finished
        kept_open = open(run.inbox / "open.png", "wb")  # noqa: SIM115
        try:
            kept_open.write(image_bytes(1))
            kept_open.flush()
            # written in place and closed: its writer may still open it again
            (run.inbox / "closed.png").write_bytes(image_bytes(3))
            # written elsewhere, then renamed in (its events come after the others')
            (outside / "moved.png").write_bytes(image_bytes(2))
            os.rename(outside / "moved.png", run.inbox / "moved.png")
            wait_until(lambda: files(run.done) == ["moved.png"], what="the moved-in file done")
            assert (run.inbox / "open.png").exists(), "a file still open was taken"
            assert (run.inbox / "closed.png").exists(), "a file written in place was taken"
            assert emu.stats()["tasks_submitted"] == 1
        finally:
            kept_open.close()
    assert_cutout_of(run.outbox / "moved.png", image_bytes(2))
    assert files(run.failed) == []
    assert emu.stats()["tasks_submitted"] == 1


def test_a_temporary_name_renamed_within_inbox_is_taken_at_once(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, "native", stable_seconds=NEVER) as run:
        part = run.inbox / "photo.png.part"  # as a browser or rsync --partial writes it
        part.write_bytes(image_bytes(3))
        os.rename(part, run.inbox / "photo.png")
        wait_until(lambda: files(run.done) == ["photo.png"], what="the renamed file done")
    assert_cutout_of(run.outbox / "photo.png", image_bytes(3))
    assert emu.stats()["tasks_submitted"] == 1


def test_moved_in_while_still_written_goes_back_to_the_wait_not_to_failed(
        tmp_path: Path, emulator_factory, logs: LogLines) -> None:  # type: ignore[no-untyped-def]
    """Renamed in with half its bytes, the writer still holding it open: the early try
    finds it incomplete, the file waits as any other and is done whole once written."""
    emu = emulator_factory()
    data = image_bytes(4, size=(200, 150))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with DaemonRun(tmp_path, emu, "native") as run:
        with open(outside / "slow.png", "wb") as fh:
            fh.write(data[:len(data) // 2])
            fh.flush()
            os.rename(outside / "slow.png", run.inbox / "slow.png")
            wait_until(lambda: logs.has("slow.png arrived incomplete"), what="the early try")
            assert emu.stats()["uploads"] == 0, "an incomplete file went up"
            fh.write(data[len(data) // 2:])
        wait_until(lambda: files(run.done) == ["slow.png"], what="slow.png done")
    assert files(run.failed) == []
    assert_cutout_of(run.outbox / "slow.png", data)
    assert emu.stats()["tasks_submitted"] == 1


def test_a_writer_closing_after_every_chunk_is_never_taken_half_written(
        tmp_path: Path, emulator_factory, mode: str,  # type: ignore[no-untyped-def]
        logs: LogLines) -> None:
    """Open, append a chunk, close: each close is seen (inotify's close-after-write) while
    the file is not complete yet."""
    emu = emulator_factory()
    data = image_bytes(5, size=(200, 150))
    chunk = len(data) // 6 + 1
    with DaemonRun(tmp_path, emu, mode) as run:
        target = run.inbox / "chunks.png"
        for i in range(0, len(data), chunk):
            with open(target, "ab") as fh:
                fh.write(data[i:i + chunk])
            time.sleep(0.05)  # the writer's pace: less than stable_seconds between chunks
            assert emu.stats()["uploads"] == 0, "taken before the write finished"
        wait_until(lambda: files(run.done) == ["chunks.png"], what="chunks.png done")
    assert files(run.failed) == []
    assert_cutout_of(run.outbox / "chunks.png", data)
    assert emu.stats()["tasks_submitted"] == 1


def test_renamed_in_then_rewritten_through_its_descriptor_is_never_mixed(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    """A race, run at several moments at once: each writer renames a complete image in,
    then rewrites the file through the descriptor it kept (another picture of the same
    size, its subject elsewhere). Whenever the rewrite lands (before the read, during the
    upload, after the finish), each output is a cut-out of exactly one version, and each
    file ends in done/ or in failed/ (saying it changed), never lost."""
    emu = emulator_factory(delay=0.2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    delays = [0.0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
    first = {i: image_bytes(10 + i, size=(64, 48)) for i in range(len(delays))}
    second = {i: mirrored(image_bytes(40 + i, size=(64, 48))) for i in range(len(delays))}
    with DaemonRun(tmp_path, emu, "native", stable_seconds=0.2, concurrency=8) as run:
        def writer(i: int) -> None:
            with open(outside / f"r{i}.png", "wb") as fh:
                fh.write(first[i])
                fh.flush()
                os.rename(outside / f"r{i}.png", run.inbox / f"r{i}.png")
                time.sleep(delays[i])  # the writer's own pace
                fh.seek(0)
                fh.truncate()
                fh.write(second[i])

        writers = [threading.Thread(target=writer, args=(i,)) for i in range(len(delays))]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        names = {f"r{i}.png" for i in range(len(delays))}
        wait_until(lambda: names <= set(files(run.done)) | set(files(run.failed)),
                   what="every file done or failed")
    for i in range(len(delays)):
        name = f"r{i}.png"
        if name in files(run.failed):
            report = json.loads((run.failed / f"{name}.error.json").read_text())
            assert "changed while it was being processed" in report["error"]
            assert (run.failed / name).read_bytes() == second[i]
            assert not (run.outbox / name).exists()
            continue
        problems = [cutout_problem(run.outbox / name, version)
                    for version in (first[i], second[i])]
        assert None in problems, f"{name}: {problems}"
