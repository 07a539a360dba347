"""``bgremove watch`` as a real process: kill -9 and restart, signals, two daemons, refusals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgremove.emulator import Emulator, Fault
from tests.test_watch_support import files, wait_until, write_image

# Every test here fails if it leaves a thread behind (fixtures in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("no_leaked_threads")


class Proc:
    """One ``python -m bgremove watch`` process with its stderr and stdout collected in files."""

    def __init__(self, tmp: Path, emu: Emulator, *args: str, name: str = "daemon",
                 mode: str = "native", concurrency: int = 4,
                 env: dict[str, str] | None = None) -> None:
        config = tmp / "config.yaml"
        if not config.exists():
            config.write_text(
                "backend: wavespeed\n"
                "wavespeed:\n  poll:\n    initial: 0.05\n    max: 0.2\n"
                "  retry:\n    backoff_initial: 0.01\n    backoff_max: 0.1\n"
                "watch:\n  stable_seconds: 0.2\n  settle_seconds: 0.6\n"
                "  poll_seconds: 0.1\n  shutdown_grace: 20\n", encoding="utf-8")
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.out_path = tmp / f"{name}.out"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in wait()
        # XDG_STATE_HOME: this machine's task log stays with the test (no adoption of a
        # task an earlier test's emulator created for the same image)
        env = dict(os.environ, WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url,
                   PYTHONUNBUFFERED="1", XDG_STATE_HOME=str(tmp / "state"), **(env or {}))
        cmd = [sys.executable, "-m", "bgremove", "watch", *args, "--config", str(config),
               "--concurrency", str(concurrency)]
        if mode == "polling":
            cmd.append("--polling")
        self.popen = subprocess.Popen(cmd, stdout=self._out, stderr=self._log,
                                      cwd=Path(__file__).resolve().parents[1], env=env)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self._log.close()
            self._out.close()

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)
        self._log.close()
        self._out.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def out(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")


def journal_rows(outbox: Path) -> list[tuple[str, str | None]]:
    path = outbox / ".bgremove" / "journal.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(str(path), timeout=10)
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT state, task_id FROM jobs")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_kill_9_mid_batch_then_restart(tmp_path: Path, emulator_factory, mode: str) -> None:
    """kill -9 with tasks waiting, then a restart: nothing lost, duplicated or paid twice.

    The kill lands at a chosen moment, not a lucky one: once a file is done, every
    result request is held by the emulator (a long ``delay`` fault, released only when the
    emulator stops). Each of the 4 places then ends what it had, sends a new file, journals
    its task id and waits on a held poll. Only when 4 polls are held is that state final:
    a job still finishing (journaled "submitted" too) has given its place to the next
    upload, whose submit may still come. A kill in the gap between the service creating a
    task and the journal recording its id is ``test_reconcile_emulator``'s
    ``test_kill_9_during_a_submit_then_a_restart_adopts_the_task``, not this test.
    """
    emu = emulator_factory(delay=1.0)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(16):
        write_image(inbox / f"k{i:02d}.png", 200 + i)
    first = Proc(tmp_path, emu, str(inbox), str(outbox), name="first", mode=mode)

    def settled() -> bool:
        stats = emu.stats()
        submits = stats["requests"].get("submit", {}).get("POST", 0)
        rows = journal_rows(outbox)
        ids = {t for _s, t in rows if t}
        waiting = [t for s, t in rows if s == "submitted" and t]
        held = stats["faults"].get("delay", 0)  # polls held: each a job holding its place
        # all 4 places parked on a held poll (so no upload can start); every task journaled
        return (held == len(waiting) == 4 and submits == stats["tasks_submitted"] == len(ids))

    try:
        wait_until(lambda: files(inbox / "done"), 30, what="a file done")
        emu.set_faults(Fault("delay", route="result", first=10**9, seconds=600))
        wait_until(settled, 30, what="every worker waiting on a journaled task")
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind
    emu.set_faults()  # the restarted daemon's polls are answered
    rows = journal_rows(outbox)
    known = {t for _s, t in rows if t}
    waiting = {t for s, t in rows if s == "submitted" and t}
    done_before = len(files(inbox / "done"))
    assert 1 <= done_before <= 12 and len(waiting) == 4
    assert emu.stats()["tasks_submitted"] == len(known)  # no task the journal does not know

    second = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="second", mode=mode)
    assert second.wait(60) == 0, second.log()
    assert files(outbox) == [f"k{i:02d}.png" for i in range(16)]  # each once, no -1 copies
    assert files(inbox) == [f"done/k{i:02d}.png" for i in range(16)]
    stats = emu.stats()
    assert stats["tasks_submitted"] == 16, second.log()  # 16 files, 16 tasks: none paid twice
    assert stats["duplicate_submits"] == 0
    log = second.log()
    for task_id in waiting:  # each task waiting at the kill was resumed, not submitted again
        assert f"resuming task {task_id} instead of submitting again" in log, log
    final = journal_rows(outbox)
    assert all(s == "done" for s, _t in final) and len(final) == 16
    assert known <= {t for _s, t in final}
    assert not list((inbox / ".bgremove-claims").rglob("*.png"))


def test_two_daemons_one_inbox(tmp_path: Path, emulator_factory) -> None:
    emu = emulator_factory(delay=0.2)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(40):
        write_image(inbox / f"t{i:02d}.png", 300 + i)
    a = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="a", concurrency=2)
    b = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="b", concurrency=2)
    for proc in (a, b):
        # A --once daemon that starts while the other already holds claims leaves those to
        # it and says so (exit 1); which one starts first is up to the scheduler.
        code = proc.wait(60)
        assert code == 0 or (code == 1 and "which still seems to run" in proc.log()), proc.log()
    assert files(outbox) == [f"t{i:02d}.png" for i in range(40)]
    assert len(files(inbox / "done")) == 40
    assert emu.stats()["tasks_submitted"] == 40
    done_lines = a.log().count(" done ") + b.log().count(" done ")
    assert done_lines == 40


def test_sigterm_finishes_in_flight_then_restart_finishes_the_rest(tmp_path: Path,
                                                                   emulator_factory) -> None:
    emu = emulator_factory(delay=1.0)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        write_image(inbox / f"s{i}.png", 400 + i)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), name="term", concurrency=2)
    wait_until(lambda: emu.stats()["tasks_submitted"] >= 2, 30, what="two in flight")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.log()
    in_flight = emu.stats()["tasks_submitted"]
    assert len(files(inbox / "done")) == in_flight  # every started job was finished
    assert "finishing the jobs in flight" in proc.log()
    again = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="again")
    assert again.wait(60) == 0, again.log()
    assert len(files(outbox)) == 6
    assert emu.stats()["tasks_submitted"] == 6


def test_second_sigint_exits_at_once_and_nothing_is_lost(tmp_path: Path,
                                                         emulator_factory) -> None:
    emu = emulator_factory(delay=10.0)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        write_image(inbox / f"i{i}.png", 500 + i)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), name="int", concurrency=2)
    wait_until(lambda: emu.stats()["tasks_submitted"] == 2
               and len([1 for s, _ in journal_rows(outbox) if s == "submitted"]) == 2,
               30, what="two tasks journaled")
    proc.popen.send_signal(signal.SIGINT)
    time.sleep(0.2)  # let the first signal be handled before the second arrives
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    # at once: the daemon did not wait for its two tasks to end
    assert emu.stats()["tasks_completed"] == 0
    assert files(outbox) == []
    again = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="again")
    assert again.wait(60) == 0, again.log()
    assert files(outbox) == ["i0.png", "i1.png"]
    assert emu.stats()["tasks_submitted"] == 2  # resumed, not paid twice


@pytest.mark.parametrize(("outbox", "flags", "message"), [
    ("in", [], "is the INBOX"),
    ("in/out", ["--recursive"], "inside the watched INBOX"),
    ("in/out", [], "could change the daemon's journal"),
])
def test_outbox_in_inbox_is_refused(tmp_path: Path, outbox: str, flags: list[str],
                                    message: str) -> None:
    (tmp_path / "in").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "bgremove", "watch", str(tmp_path / "in"), str(tmp_path / outbox),
         *flags], capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, WAVESPEED_API_KEY="k-1234"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / outbox / ".bgremove").exists()


def test_a_journal_link_planted_in_an_outbox_inside_inbox_is_never_written(
        tmp_path: Path) -> None:
    """Whoever can write to INBOX could plant a link where the journal of an OUTBOX inside
    it goes: the daemon would write its database through it, outside its folders."""
    inbox, outside = tmp_path / "in", tmp_path / "outside"
    (inbox / "out" / ".bgremove").mkdir(parents=True)
    outside.mkdir()
    (inbox / "out" / ".bgremove" / "journal.sqlite3").symlink_to(outside / "victim.db")
    result = subprocess.run(
        [sys.executable, "-m", "bgremove", "watch", str(inbox), str(inbox / "out"), "--once"],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, WAVESPEED_API_KEY="k-1234"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("journal", ["in/state.sqlite3", "in/done/j.sqlite3", "in/link/j.sqlite3",
                                     "alias/j.sqlite3"])
def test_a_journal_inside_inbox_is_refused_and_never_written(tmp_path: Path,
                                                             journal: str) -> None:
    """watch.journal inside INBOX (directly, in done/, through a folder link planted there, or
    through a link to INBOX) is in reach of its writers, as OUTBOX inside it is: refused in
    one line, and a link planted at its name is never written through."""
    inbox, outside = tmp_path / "in", tmp_path / "outside"
    (inbox / "done").mkdir(parents=True)
    outside.mkdir()
    (inbox / "link").symlink_to(outside)
    (tmp_path / "alias").symlink_to(inbox)
    (inbox / "state.sqlite3").symlink_to(outside / "victim.db")
    config = tmp_path / "config.yaml"
    config.write_text(f"watch:\n  journal: {tmp_path / journal}\n")
    result = subprocess.run(
        [sys.executable, "-m", "bgremove", "watch", str(inbox), str(tmp_path / "out"), "--once",
         "--config", str(config)], capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, WAVESPEED_API_KEY="k-1234"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is inside INBOX" in lines[0], result.stderr
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "link", "state.sqlite3"]


def test_json_lines_one_per_file_and_never_the_key(tmp_path: Path, emulator_factory) -> None:
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "ok.png", 600)
    (inbox / "bad.jpg").write_text("junk")
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--json", name="json")
    assert proc.wait(60) == 1
    text = proc.out()  # on stdout, as `remove --json`
    assert emu.api_key not in text and emu.api_key not in proc.log()
    assert proc.log().strip() == ""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    done = [r for r in records if r.get("event") == "done"]
    failed = [r for r in records if r.get("event") == "failed"]
    assert len(done) == 1 and len(failed) == 1
    assert done[0]["input"] == "ok.png" and done[0]["output"].endswith("ok.png")
    assert done[0]["task_id"] and done[0]["seconds"] >= 0
    assert failed[0]["input"] == "bad.jpg" and failed[0]["error_kind"] == "unreadable"


def test_status_command(tmp_path: Path, emulator_factory) -> None:
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "ok.png", 700)
    assert Proc(tmp_path, emu, str(inbox), str(outbox), "--once", name="st").wait(60) == 0
    result = subprocess.run([sys.executable, "-m", "bgremove", "status", str(outbox), "--json"],
                            capture_output=True, text=True, timeout=30,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["done"] == 1 and status["failed"] == 0 and status["queued"] == 0
    assert status["daemons"][0]["state"] == "stopped"
