"""The hot-folder daemon end to end, in-process: real emulator, files, threads and observers.

Every test runs twice: with native file events and with the polling observer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgremove.emulator import Fault
from tests import images as img
from tests.test_watch_support import (
    DaemonRun,
    LogLines,
    captured_logs,
    files,
    image_bytes,
    wait_until,
    write_image,
)

# Every test here fails if it leaves a thread behind (fixtures in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("no_leaked_threads")


@pytest.fixture
def logs() -> Iterator[LogLines]:
    with captured_logs() as handler:
        yield handler


def assert_cutout(path: Path) -> None:
    """The output is a full RGBA cut-out: key-colour corner transparent, red block opaque."""
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        assert im.getpixel((0, 0))[3] == 0
        w, h = im.size
        assert im.getpixel((w // 4 + 1, h // 4 + 1)) == (220, 20, 20, 255)


def test_files_dropped_before_and_after_start(tmp_path: Path, emulator_factory, mode: str
                                              ) -> None:
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, mode)
    write_image(run.inbox / "before.png", 1)
    with run:
        write_image(run.inbox / "after.png", 2)
        wait_until(lambda: files(run.done) == ["after.png", "before.png"], what="both done")
    assert files(run.outbox) == ["after.png", "before.png"]
    assert_cutout(run.outbox / "after.png")
    assert files(run.inbox) == ["done/after.png", "done/before.png"]
    assert emu.stats()["tasks_submitted"] == 2


def test_slow_chunked_write_is_taken_only_when_complete(tmp_path: Path, emulator_factory,
                                                        mode: str) -> None:
    emu = emulator_factory()
    data = image_bytes(3, size=(200, 150))
    with DaemonRun(tmp_path, emu, mode, stable_seconds=0.5) as run:
        target = run.inbox / "slow.png"
        with open(target, "wb") as fh:
            for i in range(0, len(data), max(1, len(data) // 8)):
                fh.write(data[i:i + max(1, len(data) // 8)])
                fh.flush()
                time.sleep(0.15)  # a slow writer: the gaps are shorter than stable_seconds
                assert emu.stats()["uploads"] == 0, "taken before the write finished"
        wait_until(lambda: files(run.done) == ["slow.png"], what="slow.png done")
    assert_cutout(run.outbox / "slow.png")
    assert files(run.failed) == []
    assert emu.stats()["tasks_submitted"] == 1


def test_write_then_rename_is_taken_by_its_new_name(tmp_path: Path, emulator_factory,
                                                    mode: str) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        part = run.inbox / "photo.png.part"
        part.write_bytes(image_bytes(4))
        left = run.inbox / "still-downloading.jpg.crdownload"
        left.write_bytes(image_bytes(5, fmt="JPEG"))
        os.rename(part, run.inbox / "photo.png")
        wait_until(lambda: files(run.done) == ["photo.png"], what="renamed file done")
    assert files(run.outbox) == ["photo.png"]
    assert left.exists(), "a partial download was touched"
    assert emu.stats()["tasks_submitted"] == 1


def test_junk_and_temp_files(tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        ignored = ["a.tmp", "b.part", "~$lock.png", ".hidden.png", "c.crdownload"]
        for name in ignored:
            (run.inbox / name).write_bytes(image_bytes(6))
        (run.inbox / "notes.txt").write_text("not an image")
        write_image(run.inbox / "good.png", 7)
        wait_until(lambda: files(run.failed) == ["notes.txt", "notes.txt.error.json"]
                   and files(run.done) == ["good.png"], what="junk failed, good done")
        report = json.loads((run.failed / "notes.txt.error.json").read_text())
    assert report["kind"] == "unreadable"
    assert report["attempts"] == 1 and report["transient"] is False
    assert {"error", "first_error", "failed_at"} <= set(report)
    for name in ignored:
        assert (run.inbox / name).exists(), name
    assert emu.stats()["tasks_submitted"] == 1


BAD_INPUTS = {
    "bomb.png": (img.make_decompression_bomb, "too_large"),
    "truncated.jpg": (img.make_truncated, "unreadable"),
    "empty.png": (img.make_zero_byte, "unreadable"),
    "text.jpg": (img.make_text_as_jpg, "unreadable"),
    "image.pcx": (img.make_unsupported, "unreadable"),
}


def test_every_bad_input_kind_goes_to_failed_without_slowing_the_others(
        tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        for name, (make, _kind) in BAD_INPUTS.items():
            make(run.inbox / name)
        for i in range(6):
            write_image(run.inbox / f"ok{i}.png", 10 + i)
        wait_until(lambda: len(files(run.done)) == 6, what="good files done")
        wait_until(lambda: len(files(run.failed)) == 2 * len(BAD_INPUTS), what="bad files failed")
    for name, (_make, kind) in BAD_INPUTS.items():
        report = json.loads((run.failed / f"{name}.error.json").read_text())
        assert report["kind"] == kind, name
    assert emu.stats()["tasks_submitted"] == 6
    assert files(run.outbox) == [f"ok{i}.png" for i in range(6)]


def test_burst_of_500_files(tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, mode, concurrency=16, rescan_seconds=30.0)
    with run:
        for i in range(500):
            write_image(run.inbox / f"b{i:03d}.png", i, size=(16, 12))
        wait_until(lambda: len(files(run.done)) == 500, 90, interval=0.1, what="500 done")
    assert len(files(run.outbox)) == 500
    stats = emu.stats()
    assert stats["tasks_submitted"] == 500
    assert stats["duplicate_submits"] == 0
    assert files(run.failed) == []


@pytest.mark.parametrize("fault", [
    Fault("status", route="submit", status=503, first=2),
    Fault("status", route="submit", status=429, first=2, retry_after="0"),
    Fault("drop", route="result", first=2),
    Fault("drop", route="uploads", first=2),
    Fault("fail_task", route="submit", code=5003, first=2),
], ids=["5xx", "429", "drop-result", "drop-upload", "task-5003"])
def test_transient_faults_are_retried(tmp_path: Path, emulator_factory, mode: str,
                                      fault: Fault) -> None:
    emu = emulator_factory(faults=(fault,))
    with DaemonRun(tmp_path, emu, mode, concurrency=2) as run:
        for i in range(4):
            write_image(run.inbox / f"f{i}.png", 20 + i)
        wait_until(lambda: len(files(run.done)) == 4, 30, what="all done despite faults")
    assert files(run.failed) == []
    assert len(files(run.outbox)) == 4
    assert emu.stats()["faults"], "the fault never fired"


def test_permanent_task_failure_goes_to_failed_at_once(tmp_path: Path, emulator_factory,
                                                       mode: str) -> None:
    emu = emulator_factory(faults=(Fault("fail_task", route="submit", code=1401, first=1),))
    with DaemonRun(tmp_path, emu, mode, concurrency=1) as run:
        write_image(run.inbox / "bad-param.png", 30)
        wait_until(lambda: files(run.failed), what="a failure")
        write_image(run.inbox / "fine.png", 31)
        wait_until(lambda: files(run.done) == ["fine.png"], what="the next file done")
    report = json.loads((run.failed / "bad-param.png.error.json").read_text())
    assert report["kind"] == "task_failed" and report["code"] == 1401
    assert report["attempts"] == 1
    assert emu.stats()["tasks_submitted"] == 2


def test_a_refused_output_download_fails_that_file_and_never_pauses_intake(
        tmp_path: Path, emulator_factory, mode: str, logs: LogLines) -> None:
    # storage answers 403 for an expired or deleted result: that file's problem, not the account's
    emu = emulator_factory(faults=(Fault("status", route="download", status=403, first=1),))
    with DaemonRun(tmp_path, emu, mode, concurrency=1) as run:
        write_image(run.inbox / "gone.png", 32)
        wait_until(lambda: files(run.failed), what="a failure")
        write_image(run.inbox / "fine.png", 33)
        wait_until(lambda: files(run.done) == ["fine.png"], what="the next file done")
        assert not run.daemon.snapshot()["paused"]
    report = json.loads((run.failed / "gone.png.error.json").read_text())
    assert "refused the download (HTTP 403)" in report["error"], report
    assert not logs.has("intake paused")
    assert emu.stats()["tasks_submitted"] == 2


def test_transient_errors_give_up_after_retry_for_seconds(tmp_path: Path, emulator_factory,
                                                          mode: str) -> None:
    emu = emulator_factory(faults=(Fault("fail_task", route="submit", code=5000, every=1),))
    with DaemonRun(tmp_path, emu, mode, retry_for_seconds=1.0) as run:
        write_image(run.inbox / "doomed.png", 40)
        wait_until(lambda: files(run.failed) == ["doomed.png", "doomed.png.error.json"], 20,
                   what="given up")
    report = json.loads((run.failed / "doomed.png.error.json").read_text())
    assert report["kind"] == "task_failed" and report["code"] == 5000
    assert report["attempts"] >= 2
    assert "gave up" in report["note"]
    assert emu.stats()["tasks_submitted"] == report["attempts"]


def test_same_content_twice_is_processed_once(tmp_path: Path, emulator_factory, mode: str,
                                              logs: LogLines) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / "first.png", 50)
        wait_until(lambda: files(run.done) == ["first.png"], what="first done")
        write_image(run.inbox / "copy.png", 50)
        wait_until(lambda: files(run.done) == ["copy.png", "first.png"], what="copy moved")
    assert files(run.outbox) == ["copy.png", "first.png"]  # each input its own output
    assert os.path.samefile(run.outbox / "copy.png", run.outbox / "first.png")
    assert emu.stats()["tasks_submitted"] == 1
    assert logs.has("duplicate copy.png: same content as first.png")


def test_reprocess_forces_a_new_cutout(tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode, reprocess=True) as run:
        write_image(run.inbox / "x.png", 51)
        wait_until(lambda: files(run.done) == ["x.png"], what="first done")
        write_image(run.inbox / "x.png", 51)
        wait_until(lambda: files(run.done) == ["x-1.png", "x.png"], what="second done")
    assert files(run.outbox) == ["x-1.png", "x.png"]
    assert emu.stats()["tasks_submitted"] == 2


def test_names_never_collide_or_overwrite(tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    outbox = tmp_path / "out"
    outbox.mkdir()
    (outbox / "keep.png").write_bytes(b"someone else's file")
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / "x.png", 60)
        (run.inbox / "x.jpg").write_bytes(image_bytes(61, fmt="JPEG"))
        write_image(run.inbox / "keep.png", 62)
        wait_until(lambda: len(files(run.done)) == 3, what="three done")
    assert files(outbox) == ["keep-1.png", "keep.png", "x-1.png", "x.png"]
    assert (outbox / "keep.png").read_bytes() == b"someone else's file"


def test_recursive_mirrors_subfolders(tmp_path: Path, emulator_factory, mode: str) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode, recursive=True) as run:
        write_image(run.inbox / "a" / "x.png", 70)
        write_image(run.inbox / "b" / "x.png", 71)
        staging = tmp_path / "staging-folder"
        write_image(staging / "deep" / "y.png", 72)
        os.rename(staging, run.inbox / "moved-in")  # a whole folder moved into INBOX
        (run.inbox / "c").mkdir()
        (run.inbox / "c" / "bad.jpg").write_text("nope")
        wait_until(lambda: len(files(run.done)) == 3 and len(files(run.failed)) == 2,
                   what="mirrored")
    assert files(run.outbox) == ["a/x.png", "b/x.png", "moved-in/deep/y.png"]
    assert files(run.done) == ["a/x.png", "b/x.png", "moved-in/deep/y.png"]
    assert files(run.failed) == ["c/bad.jpg", "c/bad.jpg.error.json"]


def test_unwritable_outbox_pauses_and_resumes(tmp_path: Path, emulator_factory, mode: str,
                                              logs: LogLines) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        staging = run.daemon.staging
        staging.rmdir()
        staging.write_text("in the way")  # writing the result now fails (like a full disk)
        write_image(run.inbox / "waits.png", 80)
        wait_until(lambda: logs.has("cannot be written"), what="the OUTBOX error")
        write_image(run.inbox / "queued.png", 81)
        wait_until(lambda: run.daemon.snapshot()["paused"], what="intake paused")
        assert files(run.failed) == [] and files(run.done) == []
        staging.unlink()
        wait_until(lambda: len(files(run.done)) == 2, 20, what="resumed")
    assert logs.has("writable again")
    assert files(run.outbox) == ["queued.png", "waits.png"]
    assert emu.stats()["tasks_submitted"] == 2  # the staged-failed job waited on its task


def test_cost_guard_pauses_intake(tmp_path: Path, emulator_factory, mode: str,
                                  logs: LogLines) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode, max_per_hour=2, concurrency=1) as run:
        for i in range(4):
            write_image(run.inbox / f"c{i}.png", 90 + i)
        wait_until(lambda: len(files(run.done)) == 2, what="two done")
        wait_until(lambda: run.daemon.snapshot()["paused"], what="paused")
        assert "max_per_hour=2" in run.daemon.snapshot()["paused"]
        # the reason is set a moment before the warning is logged (another thread)
        wait_until(lambda: logs.has("intake paused"), what="the pause logged")
        # paused, nothing dropped: the rest wait (in INBOX or claimed), none failed
        waiting = [p.name for p in run.inbox.rglob("*.png") if run.done not in p.parents]
        assert len(waiting) == 2, waiting
        assert emu.stats()["tasks_submitted"] == 2
    assert files(run.failed) == []


def test_native_observer_failure_falls_back_to_polling(tmp_path: Path, emulator_factory,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       logs: LogLines) -> None:
    import errno

    import watchdog.observers

    class Broken(watchdog.observers.Observer):  # type: ignore[misc,valid-type]
        def schedule(self, *args: object, **kwargs: object) -> object:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Broken)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, "native") as run:
        assert run.daemon.watcher.mode == "polling"
        write_image(run.inbox / "x.png", 100)
        wait_until(lambda: files(run.done) == ["x.png"], what="done via polling")
    assert logs.has("native file events unavailable")


def test_inbox_offline_and_back(tmp_path: Path, emulator_factory, mode: str,
                                logs: LogLines) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        away = tmp_path / "share-offline"
        os.rename(run.inbox, away)
        wait_until(lambda: logs.has("is not reachable"), what="offline noticed")
        assert run.daemon.snapshot()["paused"] == "INBOX unreachable"
        write_image(away / "while-offline.png", 110)
        os.rename(away, run.inbox)
        wait_until(lambda: logs.has("reachable again"), what="back online")
        write_image(run.inbox / "after.png", 111)
        wait_until(lambda: files(run.done) == ["after.png", "while-offline.png"], 20,
                   what="both processed")


def test_stale_claim_of_a_dead_daemon_is_recovered(tmp_path: Path, emulator_factory,
                                                   mode: str) -> None:
    from bgremove.watcher.claims import make_owner_id

    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, mode, recursive=True)
    dead = make_owner_id(pid=2**22 + 12345, started=1.0)  # no such process
    claimed = run.inbox / ".bgremove-claims" / dead / "1-sub%2Forphan.png"
    write_image(claimed, 120)
    (claimed.parent / ".heartbeat").touch()
    with run:
        wait_until(lambda: files(run.done) == ["sub/orphan.png"], what="orphan recovered")
    assert not (run.inbox / ".bgremove-claims" / dead).exists()
    assert files(run.outbox) == ["sub/orphan.png"]


def test_once_mode_exit_codes(tmp_path: Path, emulator_factory) -> None:
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    write_image(run.inbox / "a.png", 130)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    assert run.stop() == 0
    run2 = DaemonRun(tmp_path, emu, once=True)
    write_image(run2.inbox / "b.png", 131)
    (run2.inbox / "c.jpg").write_text("junk")
    run2.start()
    run2.thread.join(20)  # type: ignore[union-attr]
    assert run2.stop() == 1
    assert files(run2.done) == ["a.png", "b.png"]


def test_status_reads_the_journal(tmp_path: Path, emulator_factory) -> None:
    from bgremove.watcher.status import format_status, read_status

    emu = emulator_factory()
    with DaemonRun(tmp_path, emu) as run:
        write_image(run.inbox / "ok.png", 140)
        (run.inbox / "bad.png").write_text("junk")
        wait_until(lambda: len(files(run.done)) == 1 and len(files(run.failed)) == 2,
                   what="one done, one failed")
        live = read_status(run.outbox / ".bgremove" / "journal.sqlite3")
        assert live["daemons"][0]["running"] is True
    status = read_status(run.outbox / ".bgremove" / "journal.sqlite3")
    assert status["done"] == 1 and status["failed"] == 1
    assert status["daemons"][0]["state"] == "stopped"
    assert status["last_errors"][0]["input"] == "bad.png"
    text = format_status(status)
    assert "not running" in text and "failed: 1" in text and "bad.png" in text


# -- regressions from the review (disk full, odd names, dead claims, folders, costs) ----------


def test_journal_write_failure_keeps_files_and_resumes(tmp_path: Path, emulator_factory,
                                                       mode: str, logs: LogLines,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full under the journal: nothing is stranded in a claim folder or failed."""
    import sqlite3
    from contextlib import contextmanager

    from bgremove.watcher.journal import Journal

    full = threading.Event()
    real_tx = Journal._tx

    @contextmanager
    def tx(self: Journal) -> Iterator[sqlite3.Connection]:
        if full.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        with real_tx(self) as db:
            yield db

    monkeypatch.setattr(Journal, "_tx", tx)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        full.set()
        for i in range(3):
            write_image(run.inbox / f"full{i}.png", 150 + i)
        wait_until(lambda: logs.has("cannot be written"), what="the journal error")
        wait_until(lambda: run.daemon.snapshot()["paused"], what="intake paused")
        assert files(run.failed) == []
        full.clear()  # space freed
        wait_until(lambda: len(files(run.done)) == 3, 20, what="all resumed")
    assert logs.has("writable again")
    assert files(run.outbox) == ["full0.png", "full1.png", "full2.png"]
    assert not list((run.inbox / ".bgremove-claims").rglob("*.png"))


def test_unexpected_errors_retry_then_fail(tmp_path: Path, emulator_factory, mode: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove.watcher.journal import Journal

    calls: dict[str, int] = {}
    real = Journal.begin

    def flaky_begin(self: Journal, key: str, **kwargs: Any) -> Any:
        name = "cursed" if "cursed" in kwargs["input"] else \
            "flaky" if "flaky" in kwargs["input"] else ""
        calls[name] = calls.get(name, 0) + 1
        if name == "cursed" or (name == "flaky" and calls[name] <= 2):
            raise RuntimeError("a bug")
        return real(self, key, **kwargs)

    monkeypatch.setattr(Journal, "begin", flaky_begin)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / "flaky.png", 160)
        write_image(run.inbox / "cursed.png", 161)
        wait_until(lambda: files(run.done) == ["flaky.png"]
                   and files(run.failed) == ["cursed.png", "cursed.png.error.json"], 20,
                   what="flaky done, cursed failed")
    report = json.loads((run.failed / "cursed.png.error.json").read_text())
    assert report["attempts"] == calls["cursed"] == 5
    assert "RuntimeError: a bug" in report["error"]


def test_non_utf8_names(tmp_path: Path, emulator_factory, mode: str) -> None:
    from bgremove.watcher.status import read_status

    emu = emulator_factory()
    good = os.fsdecode(b"caf\xe9.png")
    bad = os.fsdecode(b"bad\xff.jpg")
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / good, 170)
        (run.inbox / bad).write_text("not an image")
        wait_until(lambda: files(run.done) == [good]
                   and files(run.failed) == [bad, bad + ".error.json"], what="both handled")
    assert files(run.outbox) == [os.fsdecode(b"caf\xe9.png")]
    report = json.loads((run.failed / (bad + ".error.json")).read_text(encoding="utf-8"))
    assert report["input"] == "bad\\xff.jpg" and report["kind"] == "unreadable"
    status = read_status(run.outbox / ".bgremove" / "journal.sqlite3")
    assert status["done"] == 1 and status["failed"] == 1
    assert status["last_errors"][0]["input"] == bad  # the journal gives the real name back


def test_names_too_long_to_claim_in_once_mode(tmp_path: Path, emulator_factory) -> None:
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True, recursive=True)
    longest = "n" * 251 + ".png"  # 255 bytes: legal, but not with a claim prefix
    deep = "/".join(["a-fairly-long-folder-name-for-a-client-and-a-campaign"] * 4)
    write_image(run.inbox / longest, 180)
    write_image(run.inbox / deep / "IMG_0001-with-a-descriptive-name.png", 181)
    run.start()
    run.thread.join(30)  # type: ignore[union-attr]
    assert run.stop() == 0
    assert files(run.done) == sorted([f"{deep}/IMG_0001-with-a-descriptive-name.png", longest])
    assert files(run.outbox) == sorted([f"{deep}/IMG_0001-with-a-descriptive-name.png", longest])
    assert not [p for p in (run.inbox / ".bgremove-claims").rglob("*") if p.is_file()]


def test_once_exits_non_zero_when_a_file_cannot_be_claimed(
        tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch,
        logs: LogLines) -> None:
    import errno

    from bgremove.watcher.claims import Claims

    real = Claims.claim

    def claim(self: Claims, path: Path, rel: Path, **kwargs: Any) -> Path | None:
        if path.name == "stuck.png":
            raise OSError(errno.EACCES, "Permission denied")
        return real(self, path, rel, **kwargs)

    monkeypatch.setattr(Claims, "claim", claim)
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    write_image(run.inbox / "stuck.png", 185)
    write_image(run.inbox / "fine.png", 186)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    assert run.stop() == 1
    assert files(run.done) == ["fine.png"]
    assert (run.inbox / "stuck.png").exists()
    assert logs.has("cannot take stuck.png")


def test_once_recovers_dead_claims_and_reports_live_ones(tmp_path: Path, emulator_factory,
                                                         logs: LogLines) -> None:
    import subprocess
    import sys

    from bgremove.watcher.claims import make_owner_id

    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    claims = run.inbox / ".bgremove-claims"
    # an earlier run of this very pid (a container restarts with the same pid)
    reused = make_owner_id(pid=os.getpid(), started=1.0)
    write_image(claims / reused / "1-reused.png", 190)
    (claims / reused / ".heartbeat").touch()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a pid now used by a process that started long after that daemon
        recycled = make_owner_id(pid=sleeper.pid, started=2.0)
        write_image(claims / recycled / "1-recycled.png", 191)
        (claims / recycled / ".heartbeat").touch()
        # a daemon that really runs: its files are not waited for, and --once says so
        alive = make_owner_id(pid=sleeper.pid, started=time.time() + 5)
        write_image(claims / alive / "1-busy.png", 192)
        (claims / alive / ".heartbeat").touch()
        run.start()
        run.thread.join(20)  # type: ignore[union-attr]
        assert run.stop() == 1
    finally:
        sleeper.kill()
        sleeper.wait()
    assert files(run.done) == ["recycled.png", "reused.png"]
    assert (claims / alive / "1-busy.png").exists()
    assert logs.has(f"1 file(s) are claimed by daemon {alive}")


def test_unwritable_done_folder_is_blamed_and_probed(tmp_path: Path, emulator_factory,
                                                     mode: str, logs: LogLines,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import bgremove.watcher.policy as policy_mod

    monkeypatch.setattr(policy_mod, "OUTPUT_PROBE_SECONDS", 0.1)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        run.done.write_text("in the way")  # moving into done/ fails (like a read-only mount)
        write_image(run.inbox / "d.png", 200)
        wait_until(lambda: logs.has("cannot be written"), what="the done/ error")
        blocked_at = time.monotonic()
        # several probe rounds go by: a probe of the wrong folder would resume and flap
        wait_until(lambda: time.monotonic() - blocked_at > 1.0, what="probe rounds")
        assert not logs.has("writable again")
        assert f"folder {run.done} cannot be written" in "\n".join(logs.lines)
        assert run.daemon.snapshot()["paused"]
        run.done.unlink()
        wait_until(lambda: files(run.done) == ["d.png"], 20, what="moved once writable")
    assert sum("cannot be written" in line for line in logs.lines) == 1
    assert sum("writable again" in line for line in logs.lines) == 1
    assert files(run.outbox) == ["d.png"]
    assert emu.stats()["tasks_submitted"] == 1


def test_redropped_image_whose_output_was_deleted_is_processed_again(
        tmp_path: Path, emulator_factory, mode: str, logs: LogLines) -> None:
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / "p.png", 220)
        wait_until(lambda: files(run.outbox) == ["p.png"], what="first cut-out")
        wait_until(lambda: files(run.done) == ["p.png"], what="first done")
        (run.outbox / "p.png").unlink()  # the user took the cut-out away
        write_image(run.inbox / "p.png", 220)
        wait_until(lambda: files(run.outbox) == ["p.png"], what="cut out again")
        wait_until(lambda: len(files(run.done)) == 2, what="second done")
    assert not logs.has("duplicate p.png")
    assert emu.stats()["tasks_submitted"] == 2


def test_cost_guard_counts_tasks_not_attempts(tmp_path: Path, emulator_factory) -> None:
    import sqlite3

    # each upload failure ends a daemon attempt (no retries inside the client): no task,
    # nothing billed, nothing counted
    emu = emulator_factory(faults=(Fault("status", route="uploads", status=503, first=2),))
    run = DaemonRun(tmp_path, emu, max_per_day=100, concurrency=2)
    run.config = run.config.with_overrides({"wavespeed.retry.max_attempts": 1})
    with run:
        for i in range(3):
            write_image(run.inbox / f"t{i}.png", 230 + i)
        wait_until(lambda: len(files(run.done)) == 3, 20, what="all done")
    db = sqlite3.connect(run.outbox / ".bgremove" / "journal.sqlite3")
    try:
        submits = db.execute("SELECT COUNT(*) FROM submits").fetchone()[0]
    finally:
        db.close()
    assert emu.stats()["faults"]
    assert submits == emu.stats()["tasks_submitted"] == 3


def test_once_with_cost_cap_reached_exits_1(tmp_path: Path, emulator_factory,
                                            logs: LogLines) -> None:
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True, max_per_hour=2, concurrency=1)
    for i in range(4):
        write_image(run.inbox / f"c{i}.png", 240 + i)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    assert run.stop() == 1
    assert len(files(run.done)) == 2 and files(run.failed) == []
    assert logs.has("cost cap reached")
    assert emu.stats()["tasks_submitted"] == 2


def test_status_counts_waiting_files_when_no_daemon_runs(tmp_path: Path,
                                                         emulator_factory) -> None:
    from bgremove.watcher.claims import make_owner_id
    from bgremove.watcher.status import read_status

    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    write_image(run.inbox / "a.png", 250)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    assert run.stop() == 0
    write_image(run.inbox / "w1.png", 251)
    write_image(run.inbox / "w2.png", 252)
    (run.inbox / "w3.png.part").write_bytes(b"partial")  # not taken: not counted
    write_image(run.inbox / ".bgremove-claims" / make_owner_id(pid=2**22 + 7, started=1.0)
                / "3-killed.png", 253)
    status = read_status(run.outbox / ".bgremove" / "journal.sqlite3")
    assert status["daemons"][0]["running"] is False
    assert status["queued"] == 3


def test_each_file_is_decoded_once(tmp_path: Path, emulator_factory,  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import bgremove.imaging
    from bgremove.imaging import _finish, _prepare

    decoded: list[str] = []
    real = bgremove.imaging.load_image

    def counting(path: Path, **kwargs: Any) -> Any:
        decoded.append(Path(path).name.split("-", 1)[-1])  # (claimed as "<n>-<name>")
        return real(path, **kwargs)

    # every full decode: the prepare stage's (only when the upload must be re-encoded) and
    # the finish stage's (the original pixels the mask is applied to)
    for module in (bgremove.imaging, _prepare, _finish):
        monkeypatch.setattr(module, "load_image", counting)
    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    for i in range(3):
        write_image(run.inbox / f"{i}.png", 150 + i)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    assert run.stop() == 0
    assert files(run.done) == ["0.png", "1.png", "2.png"]
    # the readiness check decodes only as far as it must to know the file is whole
    assert sorted(decoded) == ["0.png", "1.png", "2.png"]


def test_a_file_changed_while_it_is_uploaded_is_not_finished_with_mixed_content(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    """A writer rewrites the claimed file (same inode) while its upload is on the wire: the
    mask made for the old pixels is never applied to the new ones; the file goes to failed/
    (kept as it is now) with a line saying what happened, and no cut-out is written."""
    from bgremove.backends import make_backend

    emu = emulator_factory()
    run = DaemonRun(tmp_path, emu, once=True)
    claims = run.inbox / ".bgremove-claims"
    changed: list[Path] = []

    def factory() -> Any:
        backend = make_backend(run.config, wait_mode="poll")
        upload = backend.client.upload

        def rewriting_upload(data: bytes, *args: Any, **kwargs: Any) -> Any:
            claimed = next(p for p in claims.rglob("*photo.png"))
            with open(claimed, "r+b") as fh:  # the same file, new content
                fh.truncate(0)
                fh.write(image_bytes(2, size=(64, 48)))
            changed.append(claimed)
            return upload(data, *args, **kwargs)

        backend.client.upload = rewriting_upload
        return backend

    write_image(run.inbox / "photo.png", 1, size=(64, 48))
    run.start(backend_factory=factory)
    run.thread.join(30)  # type: ignore[union-attr]
    assert run.stop() == 1
    assert changed, "the upload was not made"
    assert files(run.outbox) == []  # no cut-out, mixed or not
    assert files(run.failed) == ["photo.png", "photo.png.error.json"]
    assert (run.failed / "photo.png").read_bytes() == image_bytes(2, size=(64, 48))
    report = json.loads((run.failed / "photo.png.error.json").read_text())
    assert "changed while it was being processed" in report["error"]
    assert emu.stats()["tasks_submitted"] == 1


def test_a_finishing_file_gives_its_place_to_the_next_upload(
        tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """concurrency 1: while the first file's cut-out is being written (its task is over),
    the second file already goes to the service; the account's tasks at once stay 1."""
    import bgremove.imaging

    real = bgremove.imaging.finish_file
    first_finishing, release = threading.Event(), threading.Event()

    def held_finish(*args: Any, **kwargs: Any) -> Any:
        if not first_finishing.is_set():
            first_finishing.set()
            assert release.wait(30), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(bgremove.imaging, "finish_file", held_finish)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, "native", concurrency=1) as run:
        write_image(run.inbox / "1.png", 1)
        wait_until(first_finishing.is_set, what="the first finish")
        write_image(run.inbox / "2.png", 2)
        try:
            wait_until(lambda: emu.stats()["tasks_submitted"] == 2,
                       what="the second task sent while the first finishes")
        finally:
            release.set()
        wait_until(lambda: files(run.done) == ["1.png", "2.png"], what="both done")
    assert emu.stats()["max_concurrent_tasks"] == 1
