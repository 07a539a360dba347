"""The hot folder against its own writers: whoever can drop a file into INBOX (and so into
``INBOX/.bgremove-claims/``, ``INBOX/done/``, ``INBOX/failed/``) must not make the daemon
read, write or move anything outside INBOX, OUTBOX, done/ and failed/.

Each test lays out ``root/site/in`` (INBOX, with done/ and failed/ inside) and
``root/site/out`` (OUTBOX), plants its traps, runs a real daemon against the emulator, and
compares a snapshot of everything else under ``root`` before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.test_watch_support import DaemonRun, files, image_bytes, wait_until, write_image

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

DEAD_PID = 2**22 + 12345  # above pid_max: no such process


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` except the ``skip`` folders: type, size, content, links."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, names in os.walk(root):
        here = Path(dirpath)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in dirs + names:
            path = here / name
            if path in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                detail: Any = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                detail = None
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_nlink,
                                                st.st_size, st.st_mtime_ns, detail)
    return out


def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, INBOX, OUTBOX) with INBOX and OUTBOX two levels below root, so a ``../..``
    from either still lands inside the snapshot."""
    inbox, outbox = tmp_path / "site" / "in", tmp_path / "site" / "out"
    inbox.mkdir(parents=True)
    outbox.mkdir()
    return tmp_path, inbox, outbox


def plant_stale_owner(claims: Path, pid: int = DEAD_PID, started: float = 1.0) -> Path:
    from bgremove.watcher.claims import make_owner_id

    folder = claims / make_owner_id(pid=pid, started=started)
    folder.mkdir(parents=True)
    (folder / ".heartbeat").touch()
    return folder


def entries(folder: Path) -> list[str]:
    """Names in ``folder`` (dangling links too), [] when it does not exist."""
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_planted_claim_folder_cannot_reach_outside(tmp_path: Path, emulator_factory,
                                                   mode: str) -> None:
    root, inbox, outbox = site(tmp_path)
    private = root / "private"
    (private / "pics").mkdir(parents=True)
    (private / "secret.png").write_bytes(image_bytes(7))
    (private / "id_rsa").write_text("PRIVATE KEY\n")
    (root / "abs").mkdir()
    claims = inbox / ".bgremove-claims"
    # a "stopped daemon" with names that climb out of INBOX, an absolute name, symlinks
    stale = plant_stale_owner(claims)
    (stale / "1-..%2F..%2Fescape.png").write_bytes(image_bytes(1))
    (stale / f"2-{str(root / 'abs' / 'evil.txt').replace('/', '%2F')}").write_text("ssh-rsa x")
    (stale / "3-link.png").symlink_to(private / "secret.png")
    (stale / "4-rel.png").symlink_to(Path("..") / ".." / ".." / ".." / "private" / "id_rsa")
    (stale / "5-#0123abcd.png").write_bytes(image_bytes(5))  # a name kept in a sidecar
    (stale / ".5-#0123abcd.png.rel").write_bytes(b"../../../side.png")
    (stale / ".6-#feed.png.rel").symlink_to(private / "id_rsa")  # a sidecar that is a link
    (stale / "6-#feed.png").write_bytes(image_bytes(6))
    # a stopped daemon's folder that is a symlink to a private folder of claim-like names
    (private / "pics" / "1-photo.png").write_bytes(image_bytes(8))
    (private / "pics" / ".heartbeat").touch()
    from bgremove.watcher.claims import make_owner_id

    (claims / make_owner_id(pid=DEAD_PID + 1, started=1.0)).symlink_to(private / "pics")
    keep = (inbox, outbox)
    before = snapshot(root, keep)

    emu = emulator_factory()
    with DaemonRun(root, emu, mode, inbox=inbox, outbox=outbox) as run:
        wait_until(lambda: not stale.exists() and len(entries(run.failed)) == 12,
                   what="the planted entries in failed/")
    assert snapshot(root, keep) == before
    assert files(outbox) == []  # nothing planted was cut out...
    assert emu.stats()["uploads"] == 0  # ...or even uploaded
    assert files(run.done) == []
    failed = entries(run.failed)
    # each kept with a reason beside it: a name that leads out under its own claim name,
    # a link (under its harmless name) as the link itself, never a copy of its target
    names = ["1-..%2F..%2Fescape.png", "5-#0123abcd.png", "6-#feed.png",
             f"2-{str(root / 'abs' / 'evil.txt').replace('/', '%2F')}", "link.png", "rel.png"]
    for name in names:
        assert name in failed and f"{name}.error.json" in failed, (name, failed)
    assert len(failed) == 2 * len(names)
    links = [p for p in run.failed.iterdir() if p.is_symlink()]
    assert sorted(p.name for p in links) == ["link.png", "rel.png"]
    # the symlinked "owner folder" is left alone, and so is what it points to
    assert sorted(os.listdir(private / "pics")) == [".heartbeat", "1-photo.png"]


def test_claims_folder_that_is_a_symlink_is_refused(tmp_path: Path, emulator_factory) -> None:
    from bgremove.errors import ConfigError

    root, inbox, outbox = site(tmp_path)
    elsewhere = root / "elsewhere"
    stale = plant_stale_owner(elsewhere)
    write_image(stale / "1-x.png", 3)
    (inbox / ".bgremove-claims").symlink_to(elsewhere)
    write_image(inbox / "fine.png", 4)
    before = snapshot(root, (inbox, outbox))
    emu = emulator_factory()
    run = DaemonRun(root, emu, inbox=inbox, outbox=outbox, once=True)
    run.start()
    run.thread.join(20)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="symbolic link"):
        run.stop()
    assert snapshot(root, (inbox, outbox)) == before
    assert (inbox / "fine.png").is_file()  # inputs untouched


def test_done_and_failed_subfolders_that_are_symlinks_are_not_followed(
        tmp_path: Path, emulator_factory, mode: str) -> None:
    root, inbox, outbox = site(tmp_path)
    private = root / "private"
    private.mkdir()
    (private / "keep.txt").write_text("mine\n")
    # planted by an INBOX writer: failed/sub and done/sub lead out of the four folders,
    # and a report temp name in failed/ points at a private file
    (inbox / "failed").mkdir()
    (inbox / "failed" / "sub").symlink_to(private)
    (inbox / "done").mkdir()
    (inbox / "done" / "sub").symlink_to(private)
    (inbox / "failed" / ".top.txt.error.json.tmp").symlink_to(private / "keep.txt")
    before = snapshot(root, (inbox, outbox))
    emu = emulator_factory()
    run = DaemonRun(root, emu, mode, inbox=inbox, outbox=outbox, recursive=True)
    (inbox / "top.txt").write_text("not an image")
    with run:
        wait_until(lambda: "top.txt.error.json" in files(run.failed), what="top.txt failed")
        (inbox / "sub").mkdir()
        (inbox / "sub" / "authorized_keys").write_text("ssh-rsa AAAA attacker\n")
        write_image(inbox / "sub" / "img.png", 11)
        wait_until(lambda: run.daemon.health.blocked, what="the symlinked folders refused")
        blocked = run.daemon.health.blocked
    assert "symbolic link" in blocked and "/sub" in blocked
    assert snapshot(root, (inbox, outbox)) == before
    # nothing lost: each file is in INBOX or still claimed
    left = {p.name for p in inbox.rglob("*") if p.is_file() and "failed" not in p.parts}
    assert {"authorized_keys", "img.png"} <= {n.split("%2F")[-1] for n in left}


def test_links_fifos_and_hard_links_in_inbox_are_never_followed(tmp_path: Path,
                                                                emulator_factory,
                                                                mode: str) -> None:
    root, inbox, outbox = site(tmp_path)
    private = root / "private"
    private.mkdir()
    (private / "secret.png").write_bytes(image_bytes(21))
    (private / "shared.png").write_bytes(image_bytes(22))
    (inbox / "abs.png").symlink_to(private / "secret.png")
    (inbox / "rel.png").symlink_to(Path("..") / ".." / "private" / "secret.png")
    (inbox / "folder.png").symlink_to(private)
    os.link(private / "shared.png", inbox / "hard.png")
    os.mkfifo(inbox / "pipe.png")  # opening it for reading would block a worker for ever
    before = snapshot(root, (inbox, outbox))
    emu = emulator_factory()
    with DaemonRun(root, emu, mode, inbox=inbox, outbox=outbox) as run:
        write_image(inbox / "good.png", 23)  # after the traps: they must not hold it up
        wait_until(lambda: files(run.done) == ["good.png"]
                   and len(entries(run.failed)) == 8, what="good.png done, the links failed")
    assert snapshot(root, (inbox, outbox)) == before  # hard.png's second name is in failed/
    assert files(outbox) == ["good.png"]
    assert emu.stats()["uploads"] == 1
    failed = run.failed
    for name, target in (("abs.png", str(private / "secret.png")),
                         ("rel.png", str(Path("..") / ".." / "private" / "secret.png")),
                         ("folder.png", str(private))):
        assert os.readlink(failed / name) == target  # the link itself, kept as it was
    assert os.path.samefile(failed / "hard.png", private / "shared.png")  # moved, not copied
    reasons = {name: json.loads((failed / f"{name}.error.json").read_text())
               for name in ("abs.png", "rel.png", "folder.png", "hard.png")}
    for name in ("abs.png", "rel.png", "folder.png"):
        assert "symbolic link" in reasons[name]["error"] and reasons[name]["kind"] == "unsafe"
    assert "hard links" in reasons["hard.png"]["error"]
    assert all("\n" not in r["error"] for r in reasons.values())
    assert stat.S_ISFIFO(os.lstat(inbox / "pipe.png").st_mode)  # left alone, unopened


def test_a_file_swapped_in_the_claim_folder_is_journaled_under_what_was_decoded(
        tmp_path: Path, emulator_factory, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal key and the cut-out come from one read of the same bytes, whatever is
    renamed over the claimed file after the readiness check decoded it."""
    import sqlite3

    from bgremove.watcher.claims import Claims

    real_claim = Claims.claim

    def claim_then_swap(self: Claims, path: Path, rel: Path, **kwargs: Any) -> Path | None:
        claimed = real_claim(self, path, rel, **kwargs)
        if claimed is not None and rel.name == "a.png":  # an INBOX writer swaps it now
            swap = claimed.with_name("swap.tmp")
            swap.write_bytes(image_bytes(32))
            os.replace(swap, claimed)
        return claimed

    monkeypatch.setattr(Claims, "claim", claim_then_swap)
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, mode) as run:
        write_image(run.inbox / "a.png", 31)
        wait_until(lambda: files(run.done) == ["a.png"], what="a.png done")
    done_bytes = (run.done / "a.png").read_bytes()
    assert done_bytes == image_bytes(32)  # the swapped-in content is what was claimed
    db = sqlite3.connect(str(run.outbox / ".bgremove" / "journal.sqlite3"))
    try:
        keys = [row[0] for row in db.execute("SELECT key FROM jobs WHERE state='done'")]
    finally:
        db.close()
    assert [k.split(":")[0] for k in keys] == [hashlib.sha256(done_bytes).hexdigest()]
    # ...and the cut-out is of that content too: variant 32's off-key block, not 31's
    from PIL import Image

    with Image.open(run.outbox / "a.png") as out, Image.open(run.done / "a.png") as src:
        w = out.size[0]
        spot = (w * 3 // 4 + 1, 1)
        assert out.getpixel(spot)[:3] == src.convert("RGB").getpixel(spot)
        assert out.getpixel(spot)[3] == 255


@pytest.mark.parametrize("damage", ["garbage", "torn page"])
def test_corrupt_journal_stops_watch_with_one_line(tmp_path: Path, damage: str) -> None:
    import sqlite3
    import subprocess
    import sys

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "keep.png", 41)
    journal = outbox / ".bgremove" / "journal.sqlite3"
    journal.parent.mkdir(parents=True)
    if damage == "garbage":
        journal.write_bytes(b"not a database, just bytes\n" * 200)
    else:
        db = sqlite3.connect(str(journal))
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(200)])
        db.commit()
        db.close()
        with open(journal, "r+b") as fh:
            fh.seek(4096 * 3 + 100)
            fh.write(b"\xff" * 3000)
    before = journal.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "bgremove", "watch", str(inbox), str(outbox), "--once"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, WAVESPEED_API_KEY="k-1234", WAVESPEED_BASE_URL="http://127.0.0.1:9"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(journal) in lines[0] and "damaged" in lines[0] and "move it aside" in lines[0]
    assert sorted(os.listdir(inbox)) == ["keep.png"]  # inputs untouched, no claim folder
    assert journal.read_bytes() == before


def test_a_fifo_swapped_in_after_the_check_is_not_read(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The race behind the lstat check: the open itself neither blocks on a FIFO nor follows
    a link, and the descriptor is checked again."""
    import threading

    import bgremove.watcher.untrusted as untrusted
    from bgremove.errors import UnsafeInputError

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "real.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    regular = os.lstat(tmp_path / "real.png")
    monkeypatch.setattr(untrusted.os, "lstat", lambda *a, **k: regular)  # the check is fooled
    outcome: dict[str, BaseException] = {}

    def read(name: str) -> None:
        try:
            untrusted.read_file(tmp_path / name, limit=1000)
        except BaseException as exc:
            outcome[name] = exc

    for name in ("pipe.png", "link.png"):
        reader = threading.Thread(target=read, args=(name,))
        reader.start()
        reader.join(10)
        if reader.is_alive():  # blocked in open(): let it go before failing
            with open(tmp_path / name, "wb"):
                pass
            reader.join()
            pytest.fail(f"opening {name} blocked")
        assert isinstance(outcome[name], UnsafeInputError), outcome
    assert "FIFO" in str(outcome["pipe.png"])
    assert "symbolic link" in str(outcome["link.png"])


def test_a_subfolder_swapped_for_a_link_is_not_entered(tmp_path: Path, emulator_factory,
                                                       mode: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--recursive: a sub-folder the daemon saw a file in is replaced by a link to a private
    folder holding a file of the same name; the daemon must not read, upload or move it."""
    from bgremove.watcher.intake import Intake

    real_take = Intake._take_ready

    def take(self: Intake, ready: Any) -> bool:
        if ready.path.name == "sub":  # the link itself goes to failed/ (tested above):
            return False             # here it stays, as if swapped in a moment ago
        return real_take(self, ready)

    monkeypatch.setattr(Intake, "_take_ready", take)
    root, inbox, outbox = site(tmp_path)
    private = root / "private"
    private.mkdir()
    (private / "IMG_0001.png").write_bytes(image_bytes(51))
    (inbox / "sub").symlink_to(private)
    before = snapshot(root, (inbox, outbox))
    emu = emulator_factory()
    with DaemonRun(root, emu, mode, inbox=inbox, outbox=outbox, recursive=True) as run:
        run.daemon.tracker.seen(inbox / "sub" / "IMG_0001.png")  # as an event from before
        write_image(inbox / "real" / "after.png", 52)  # the swap would have announced it
        wait_until(lambda: files(run.done) == ["real/after.png"], what="after.png done")
        wait_until(lambda: len(run.daemon.tracker) == 0, what="the tracker settled")
    assert snapshot(root, (inbox, outbox)) == before
    assert (inbox / "sub").is_symlink()
    assert emu.stats()["uploads"] == 1 and files(outbox) == ["real/after.png"]


def test_a_checked_folder_swapped_for_a_link_before_the_move_is_not_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The move and the report go through the descriptor of the folder that was checked:
    a writer who swaps failed/sub for a link right after the check gains nothing."""
    import bgremove.watcher.failures as failures
    import bgremove.watcher.naming as naming
    from bgremove.errors import UnsafeInputError

    inbox, private = tmp_path / "in", tmp_path / "private"
    (inbox / "failed" / "sub").mkdir(parents=True)
    private.mkdir()
    src = inbox / "x.txt"
    src.write_text("dropped\n")

    def swap() -> None:
        os.rename(inbox / "failed" / "sub", inbox / "failed" / "old")
        (inbox / "failed" / "sub").symlink_to(private)

    real_link = naming.link_no_replace

    def link_after_swap(src: Path, dst: Path, **kwargs: Any) -> bool:
        swap()
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(naming, "link_no_replace", link_after_swap)
    target = naming.move_no_replace(src, inbox / "failed" / "sub" / "x.txt", below=inbox)
    assert os.listdir(private) == []
    assert (inbox / "failed" / "old" / "x.txt").read_text() == "dropped\n"

    os.unlink(inbox / "failed" / "sub")
    os.rename(inbox / "failed" / "old", inbox / "failed" / "sub")
    real_fd = failures.folder_fd

    def fd_then_swap(*args: Any, **kwargs: Any) -> int:
        fd = real_fd(*args, **kwargs)
        swap()
        return fd

    monkeypatch.setattr(failures, "folder_fd", fd_then_swap)
    failures.write_error_report(target, Path("sub/x.txt"), UnsafeInputError("x"), None,
                                note=None, attempts=1, below=inbox)
    assert os.listdir(private) == []
    assert sorted(os.listdir(inbox / "failed" / "old")) == ["x.txt", "x.txt.error.json"]


def test_status_of_a_damaged_journal_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from bgremove.cli import main

    journal = tmp_path / "journal.sqlite3"
    journal.write_bytes(b"not a database\n" * 300)
    assert main(["status", "--journal", str(journal)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(journal) in err[0] and "damaged" in err[0], err


def test_a_duplicate_output_follows_no_link_planted_in_an_outbox_inside_inbox(
        tmp_path: Path) -> None:
    """OUTBOX inside INBOX is allowed (not watched); its writers can plant links there."""
    from bgremove.watcher.placement import place_duplicate

    root, inbox, _ = site(tmp_path)
    outbox, staging = inbox / "out", tmp_path / "staging"
    outbox.mkdir()
    result = outbox / "first.png"
    result.write_bytes(image_bytes(3))
    outside = root / "outside"
    outside.mkdir()
    (outside / "a.png").write_bytes(result.read_bytes())  # the same bytes, outside
    (outbox / "a.png").symlink_to(outside / "a.png")
    (outbox / "sub").symlink_to(outside, target_is_directory=True)
    before = snapshot(root, (inbox, staging))

    # a link at the chosen name is neither reused as the output nor read: the next name is
    assert place_duplicate(result, outbox / "a.png", staging, below=inbox) == outbox / "a-1.png"
    assert os.path.samefile(outbox / "a-1.png", result)
    # a linked folder on the way is refused, never written through
    with pytest.raises(OSError):
        place_duplicate(result, outbox / "sub" / "b.png", staging, below=inbox)
    assert snapshot(root, (inbox, staging)) == before
    assert os.readlink(outbox / "a.png") == str(outside / "a.png")


def test_own_claim_folder_swapped_for_a_link_moves_nothing_from_outside(
        tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An INBOX writer renames the daemon's own claim folder while a file is in it and puts
    a link to a private folder in its place, holding a file of the claimed name: the
    original is still moved from the folder the daemon opened; the private file stays."""
    from bgremove.watcher.context import Context

    root, inbox, outbox = site(tmp_path)
    private = root / "private"
    private.mkdir()
    real_move = Context.move_original

    def move_after_swap(self: Context, claimed: Path, folder: Path, rel: Path) -> Path:
        own = claimed.parent
        if not own.is_symlink():
            (private / claimed.name).write_bytes(b"private\n")
            os.rename(own, own.with_name("renamed"))
            own.symlink_to(private, target_is_directory=True)
        return real_move(self, claimed, folder, rel)

    monkeypatch.setattr(Context, "move_original", move_after_swap)
    write_image(inbox / "a.png", 61)
    original = (inbox / "a.png").read_bytes()
    emu = emulator_factory()
    with DaemonRun(root, emu, inbox=inbox, outbox=outbox) as run:
        wait_until(lambda: files(run.done) == ["a.png"], what="a.png done")
    assert [p.read_bytes() for p in private.iterdir()] == [b"private\n"]
    assert (run.done / "a.png").read_bytes() == original
    assert files(outbox) == ["a.png"]
