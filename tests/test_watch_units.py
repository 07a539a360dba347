"""Unit tests of the daemon's parts: naming, readiness, limits, journal, claims, CLI wiring."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bgremove.account import RateLimiter
from bgremove.config import Config, WatchConfig
from bgremove.contract import CancelToken
from bgremove.errors import ConfigError
from bgremove.watcher.claims import Claims, make_owner_id, parse_owner, pid_alive
from bgremove.watcher.journal import Journal
from bgremove.watcher.limits import CostGuard, effective_limits
from bgremove.watcher.naming import Layout, candidate_names, is_ignored_name, move_no_replace
from bgremove.watcher.readiness import ReadinessTracker
from bgremove.watcher.status import render_line


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- naming ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ignored"), [
    ("photo.jpg", False), ("photo.jpg.part", True), ("x.crdownload", True), ("x.tmp", True),
    ("~$doc.png", True), (".hidden.png", True), ("x.png.error.json", True), ("Thumbs.db", True),
    ("my~file.png", False),
])
def test_ignored_names(name: str, ignored: bool) -> None:
    assert is_ignored_name(name) is ignored


def test_layout_defaults_and_exclusions(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    layout = Layout.create(tmp_path / "in", tmp_path / "out", recursive=True)
    assert layout.done == tmp_path / "in" / "done"
    assert layout.failed == tmp_path / "in" / "failed"
    assert layout.relative(tmp_path / "in" / "a" / "x.png") == Path("a/x.png")
    for skipped in ("done/x.png", "failed/x.png", ".bgremove-claims/o/1/x.png", "a/.x.png",
                    "a/x.png.part"):
        assert layout.relative(tmp_path / "in" / skipped) is None, skipped
    flat = Layout.create(tmp_path / "in", tmp_path / "out")
    assert flat.relative(tmp_path / "in" / "a" / "x.png") is None


@pytest.mark.parametrize(("outbox", "recursive", "message"), [
    ("in", False, "is the INBOX"),
    ("in/sub", True, "inside the watched INBOX"),
    (".", True, "INBOX .* is inside OUTBOX"),
])
def test_layout_refuses_overlaps(tmp_path: Path, outbox: str, recursive: bool,
                                 message: str) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match=message):
        Layout.create(tmp_path / "in", tmp_path / outbox, recursive=recursive)


@pytest.mark.parametrize("outbox", ["in/out", "in/done/out"])
@pytest.mark.parametrize("recursive", [False, True])
def test_outbox_inside_inbox_is_refused_even_when_not_watched(tmp_path: Path, outbox: str,
                                                              recursive: bool) -> None:
    """Its journal (the tasks paid for, the cost guard's counts) would be in reach of
    whoever can write to INBOX."""
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match="could change the daemon's journal"):
        Layout.create(tmp_path / "in", tmp_path / outbox, recursive=recursive)
    # done/ and failed/ moved out of INBOX: OUTBOX may sit in them (not watched, not INBOX's)
    layout = Layout.create(tmp_path / "in", tmp_path / "kept" / "out", tmp_path / "kept",
                           tmp_path / "failed", recursive=recursive)
    assert layout.relative(tmp_path / "kept" / "out" / "x.png") is None


def test_journal_path_outside_inbox_is_taken_as_given(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    layout = Layout.create(tmp_path / "in", tmp_path / "out")
    assert layout.journal_path(None) == tmp_path / "out" / ".bgremove" / "journal.sqlite3"
    assert layout.journal_path(tmp_path / "j" / "x.db") == tmp_path / "j" / "x.db"
    with pytest.raises(ConfigError, match="is inside INBOX"):
        layout.journal_path(tmp_path / "in" / ".." / "in" / "x.db")


def test_move_no_replace_adds_suffixes(tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "x.png").write_text("old")
    moved = []
    for i in range(2):
        src = tmp_path / f"src{i}"
        src.write_text(f"new{i}")
        moved.append(move_no_replace(src, tmp_path / "dst" / "x.png"))
        assert not src.exists()
    assert [p.name for p in moved] == ["x-1.png", "x-2.png"]
    assert (tmp_path / "dst" / "x.png").read_text() == "old"
    assert (tmp_path / "dst" / "x-2.png").read_text() == "new1"
    names = candidate_names(Path("a/x.png"))
    assert [next(names).name for _ in range(3)] == ["x.png", "x-1.png", "x-2.png"]


# -- readiness ---------------------------------------------------------------------


def test_readiness_waits_for_a_stable_file(tmp_path: Path) -> None:
    clock = Clock()
    tracker = ReadinessTracker(0.5, 2.0, clock=clock)
    path = tmp_path / "x.png"
    path.write_bytes(b"a")
    tracker.seen(path)
    assert tracker.check_due() == []
    clock.now += 0.3
    with open(path, "ab") as fh:
        fh.write(b"more")
    os.utime(path, ns=(1, 2))  # size and mtime change
    clock.now += 0.3
    assert tracker.check_due() == []  # changed: the window starts again
    clock.now += 0.4
    assert tracker.check_due() == []
    clock.now += 0.2
    ready = tracker.check_due()
    assert [r.path for r in ready] == [path] and not ready[0].settled
    # did not decode: watched until it settles, then handed out as final
    tracker.not_yet(ready[0])
    clock.now += 1.0
    assert tracker.check_due() == []
    clock.now += 1.5
    again = tracker.check_due()
    assert len(again) == 1 and again[0].settled
    tracker.forget(path)
    assert len(tracker) == 0


def test_readiness_tries_a_whole_file_once_at_once(tmp_path: Path) -> None:
    """Announced whole (moved in, closed): handed out without the wait, marked early; a
    failed early try waits as if just seen (never settled by it), and a second hint for
    the same pending file is not taken."""
    clock = Clock()
    tracker = ReadinessTracker(0.5, 2.0, clock=clock)
    path = tmp_path / "x.png"
    path.write_bytes(b"a")
    tracker.seen(path)
    assert tracker.check_due() == []
    with open(path, "ab") as fh:  # still growing when the hint comes: tried as it is now
        fh.write(b"more")
    tracker.seen(path, whole=True)
    ready = tracker.check_due()
    assert [(r.path, r.size, r.early, r.settled) for r in ready] == [(path, 5, True, False)]
    tracker.not_yet(ready[0])  # did not decode: back to the normal wait
    tracker.seen(path, whole=True)  # closed again after another chunk: no second early try
    assert tracker.check_due() == []
    clock.now += 0.4
    assert tracker.check_due() == []
    clock.now += 0.2
    again = tracker.check_due()
    assert len(again) == 1 and not again[0].early and not again[0].settled
    tracker.forget(path)
    tracker.seen(path, whole=True)  # a new file under the same name: a new early try
    assert [r.early for r in tracker.check_due()] == [True]


def test_readiness_drops_vanished_files(tmp_path: Path) -> None:
    clock = Clock()
    tracker = ReadinessTracker(0.1, 1.0, clock=clock)
    path = tmp_path / "x.png"
    path.write_bytes(b"a")
    tracker.seen(path)
    path.unlink()
    clock.now += 1
    assert tracker.check_due() == []
    assert len(tracker) == 0
    tracker.seen(tmp_path / "never-existed.png")
    assert len(tracker) == 0


# -- limits ------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "concurrency", "per_minute", "expect"), [
    (None, 16, 0, (16, 0)),
    ("bronze", 16, 0, (2, 2)),
    ("bronze", 1, 1, (1, 1)),
    ("silver", 16, 0, (16, 500)),
    ("gold", 1024, 10000, (1024, 3000)),  # no thread cap: a task in flight needs no thread
    ("gold", 5000, 0, (3000, 3000)),
    ("ultra", 8, 0, (8, 5000)),
])
def test_account_levels_cap_the_limits(level: str | None, concurrency: int, per_minute: int,
                                       expect: tuple[int, int]) -> None:
    limits = effective_limits(Config(watch=WatchConfig(
        account_level=level, concurrency=concurrency, images_per_minute=per_minute)))
    assert (limits.concurrency, limits.images_per_minute) == expect


def test_rate_limiter_sliding_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(2, clock=clock, slack=0.0)
    assert limiter.try_acquire() and limiter.try_acquire()
    limiter.commit()
    limiter.commit()
    assert not limiter.try_acquire()
    assert limiter.delay() == pytest.approx(60.0)
    clock.now += 59.9
    assert not limiter.try_acquire()
    clock.now += 0.1
    assert limiter.try_acquire()
    assert RateLimiter(0).try_acquire()


def test_rate_limiter_counts_a_token_from_its_submit() -> None:
    """Tokens taken together whose submits leave later: each counts from its submit (the
    service's count), and a held one counts meanwhile; one given back frees its place."""
    clock = Clock()
    limiter = RateLimiter(2, clock=clock, slack=1.0)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()  # held, not yet sent: still counted
    clock.now += 30.0
    limiter.commit()  # the first submit leaves 30 s after its token was taken
    limiter.release()  # the second job failed before its submit
    assert limiter.try_acquire() and not limiter.try_acquire()
    clock.now += 31.0 - 0.1  # 60 s + slack after the token was taken, but not the submit
    limiter.release()
    assert limiter.try_acquire() and not limiter.try_acquire()
    limiter.commit()
    clock.now += 0.1 + 30.0  # the first submit's 61 s are over: its place is free again
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_rate_limiter_gives_up_on_shutdown() -> None:
    limiter = RateLimiter(1)
    assert limiter.try_acquire()
    assert limiter.acquire(CancelToken(), give_up=lambda: True) is False


def test_cost_guard_counts_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    journal = Journal(tmp_path / "j.sqlite3")
    guard = CostGuard(journal, per_hour=2, per_day=3, clock=clock)
    assert guard.try_acquire("a") == 0 and guard.try_acquire("b") == 0
    wait = guard.try_acquire("c")
    assert wait == pytest.approx(3600.0) and "max_per_hour=2" in (guard.paused or "")
    journal.close()
    journal = Journal(tmp_path / "j.sqlite3")  # a restart: the count comes from the journal
    guard = CostGuard(journal, per_hour=2, per_day=3, clock=clock)
    assert not guard.open_now()
    clock.now += 3600
    assert guard.open_now() and guard.paused is None
    assert guard.try_acquire("c") == 0
    assert guard.try_acquire("d") > 80000  # the day cap now
    assert "max_per_day=3" in (guard.paused or "")
    journal.close()


# -- journal -----------------------------------------------------------------------


def test_journal_begin_decisions(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    alive = {"me": True, "other": True, "dead": False}
    try:
        first = journal.begin("k1", owner="me", input="a.png", claim="/c/1", reprocess=False,
                              is_alive=alive.__getitem__)
        assert first.action == "new"
        journal.update("k1", state="submitted", task_id="t1")
        busy = journal.begin("k1", owner="other", input="b.png", claim="/c/2", reprocess=False,
                             is_alive=alive.__getitem__)
        assert busy.action == "busy"
        alive["me"] = False  # the owner died: another daemon resumes its task
        resumed = journal.begin("k1", owner="other", input="a.png", claim="/c/3",
                                reprocess=False, is_alive=alive.__getitem__)
        assert resumed.action == "resume" and resumed.job is not None
        assert resumed.job.task_id == "t1" and resumed.job.owner == "other"
        output = tmp_path / "a.png"
        output.write_bytes(b"cut-out")
        journal.update("k1", state="done", output=str(output))
        dup = journal.begin("k1", owner="other", input="c.png", claim="/c/4", reprocess=False,
                            is_alive=alive.__getitem__)
        assert dup.action == "duplicate" and dup.job is not None
        assert dup.job.output == str(output)
        again = journal.begin("k1", owner="other", input="c.png", claim="/c/4", reprocess=True,
                              is_alive=alive.__getitem__)
        assert again.action == "new" and again.job is not None and again.job.task_id is None
        noted = journal.note_error("k1", kind="server", code=503, message="boom")
        assert noted is not None and noted.attempts == 1 and noted.first_error
    finally:
        journal.close()


def test_journal_is_safe_across_threads(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")

    def work(n: int) -> None:
        for i in range(50):
            key = f"{n}-{i}"
            journal.begin(key, owner="me", input=key, claim=key, reprocess=False,
                          is_alive=lambda _o: True)
            journal.update(key, state="done")
            journal.add_event("done", input=key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.counts()["done"] == 200
    journal.close()


# -- claims ------------------------------------------------------------------------


def test_only_one_claim_wins(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    a = Claims(inbox / ".c", make_owner_id(started=1))
    b = Claims(inbox / ".c", make_owner_id(pid=os.getpid() + 1, started=2))
    a.start()
    b.start()
    wins = 0
    for i in range(50):
        f = inbox / f"{i}.png"
        f.write_text("x")
        results = [a.claim(f, Path(f.name)), b.claim(f, Path(f.name))]
        wins += sum(r is not None for r in results)
        claimed = next(r for r in results if r is not None)
        assert a.rel_of(claimed) == Path(f.name)
    assert wins == 50
    odd = Path("a%2F/b-c/x%.png")
    (inbox / "x%.png").write_text("y")
    taken = a.claim(inbox / "x%.png", odd)
    assert taken is not None and taken.parent == a.dir and Claims.rel_of(taken) == odd
    assert (taken, odd, None) in a.mine()


def test_dead_owner_detection(tmp_path: Path) -> None:
    mine = make_owner_id()
    claims = Claims(tmp_path, mine, stale_seconds=60)
    host, pid = parse_owner(mine)
    assert pid == os.getpid() and pid_alive(pid)
    assert claims.is_alive(mine)
    dead = f"{host}-{2**22 + 4321}-5"
    assert not claims.is_alive(dead)
    assert not pid_alive(2**22 + 4321)


# -- CLI ---------------------------------------------------------------------------


def test_cli_start_up_stays_light() -> None:
    code = ("import sys, bgremove.cli, bgremove.commands.watch; bgremove.cli.build_parser(); "
            "heavy = [m for m in ('watchdog', 'PIL', 'httpx', 'sqlite3') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_watch_help_and_status_without_journal(tmp_path: Path) -> None:
    from bgremove.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["watch", "--help"])
    assert exc.value.code == 0
    assert main(["status", str(tmp_path)]) == 2
    assert main(["watch"]) == 2  # no INBOX/OUTBOX


def test_config_keys_for_the_watcher() -> None:
    config = Config().with_overrides({"watch.settle_seconds": 1, "watch.stale_claim_seconds": 5})
    assert config.watch.settle_seconds == 1.0 and config.watch.stale_claim_seconds == 5.0


def test_status_line() -> None:
    line = render_line({"queued": 3, "in_flight": 2, "done": 10, "failed": 1, "duplicates": 0,
                        "paused": "cost cap watch.max_per_hour=5 reached"})
    assert line == ("queued 3 | in flight 2 | done 10 | failed 1 | "
                    "paused: cost cap watch.max_per_hour=5 reached")


# -- regressions from the review ---------------------------------------------------


def test_reused_pids_and_silent_heartbeats_mean_dead(tmp_path: Path) -> None:
    import time

    mine = make_owner_id()
    claims = Claims(tmp_path, mine, stale_seconds=60)
    claims.start()
    host, _pid = parse_owner(mine)
    assert not claims.is_alive(f"{host}-{os.getpid()}-1")  # our pid, an earlier run
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not claims.is_alive(f"{host}-{sleeper.pid}-2")  # pid reused since then
        live = f"{host}-{sleeper.pid}-{int(time.time())}"
        (tmp_path / live).mkdir()
        (tmp_path / live / ".heartbeat").touch()
        assert claims.is_alive(live)
        # its heartbeat falls 2 minutes behind ours (file-server times): dead at first sight
        old = (tmp_path / live / ".heartbeat").stat().st_mtime - 120
        os.utime(tmp_path / live / ".heartbeat", (old, old))
        assert not claims.is_alive(live)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_claims_of_names_too_long_keep_their_path(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    claims = Claims(inbox / ".c", make_owner_id())
    claims.start()
    rel = Path("d" * 120) / ("n" * 251 + ".png")
    f = inbox / "x.png"
    f.write_text("x")
    taken = claims.claim(f, rel)
    assert taken is not None and len(taken.name) < 60 and taken.suffix == ".png"
    assert Claims.rel_of(taken) == rel and claims.mine() == [(taken, rel, None)]
    claims.release(taken)
    assert [p.name for p in claims.dir.iterdir() if p.name.endswith(".rel")] == []


def test_release_goes_through_the_claim_folder_opened_at_start(tmp_path: Path) -> None:
    # an INBOX writer swaps the claim folder's path for a link: the release must not follow it
    inbox, victim = tmp_path / "in", tmp_path / "victim"
    inbox.mkdir()
    victim.mkdir()
    claims = Claims(inbox / ".c", make_owner_id())
    claims.start()
    f = inbox / "x.png"
    f.write_text("x")
    taken = claims.claim(f, Path("d" * 120) / ("n" * 251 + ".png"))  # a long name: a sidecar
    assert taken is not None
    sidecar = f".{taken.name}.rel"
    (victim / sidecar).write_text("not the daemon's")
    moved = tmp_path / "moved"
    claims.dir.rename(moved)
    claims.dir.symlink_to(victim)
    claims.release(taken)
    assert (victim / sidecar).read_text() == "not the daemon's"
    assert not (moved / sidecar).exists()


def test_cost_guard_counts_committed_tasks_shared_by_two_daemons(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    first = Journal(tmp_path / "j.sqlite3")
    second = Journal(tmp_path / "j.sqlite3")
    try:
        a = CostGuard(first, per_hour=2, per_day=0, clock=clock)
        b = CostGuard(second, per_hour=2, per_day=0, clock=clock)
        assert a.reserve() == 0
        a.release()  # the upload failed: no task, nothing counted
        assert first.submit_window(0)[0] == 0
        assert a.reserve() == 0 and a.reserve() == 0
        assert a.reserve() > 0  # two reserved: the cap holds while they are in flight
        a.commit("k1")
        a.commit("k2")
        assert b.reserve() == pytest.approx(3600.0)  # the other daemon sees them at once
        assert "max_per_hour=2" in (b.paused or "")
    finally:
        first.close()
        second.close()


def test_settings_fingerprint_covers_what_changes_the_cutout() -> None:
    from bgremove.watcher.fingerprint import settings_fingerprint

    base = Config()
    same = base.with_overrides({"output.suffix": "-cut"})
    assert settings_fingerprint(base, "wavespeed") == settings_fingerprint(same, "wavespeed")
    smaller = base.with_overrides({"wavespeed.max_upload_side": 1024})
    assert settings_fingerprint(base, "wavespeed") != settings_fingerprint(smaller, "wavespeed")
    lighter = base.with_overrides({"wavespeed.max_upload_bytes": 4096})
    assert settings_fingerprint(base, "wavespeed") != settings_fingerprint(lighter, "wavespeed")


def test_status_counts_one_inbox_once(tmp_path: Path) -> None:
    import json

    from bgremove.watcher.status import read_status

    journal = Journal(tmp_path / "j.sqlite3")
    try:
        for n in (1, 2):  # two daemons (alive: this process) on one INBOX
            journal.daemon_heartbeat(f"h-{os.getpid()}-{n}", host="elsewhere", pid=os.getpid(),
                                     started=n, status=json.dumps(
                                         {"queued": 5, "in_flight": 1, "inbox": "/in"}))
    finally:
        journal.close()
    status = read_status(tmp_path / "j.sqlite3")
    assert status["queued"] == 5


def test_journal_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        journal.begin("k", owner="me", input=name, claim=f"/c/1-{name}", reprocess=False,
                      is_alive=lambda _o: True)
        journal.update("k", output=f"/out/{name}")
        journal.add_event("failed", input=name, error=f"cannot read {name}")
        job = journal.get("k")
        assert job is not None and job.input == name and job.output == f"/out/{name}"
        assert journal.last_errors()[0]["input"] == name
    finally:
        journal.close()
