"""The one atomic write and the one writability probe (``bgremove.files``), on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bgremove.files import atomic_write, atomic_writer, probe_writable


def test_a_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / ("n" * 250 + ".png")  # the temp name stays legal beside a long name
    dest.write_bytes(b"old")
    atomic_write(dest, b"new")
    assert dest.read_bytes() == b"new"
    atomic_write(dest, "text é", mode=0o640)
    assert dest.read_text(encoding="utf-8") == "text é"
    assert dest.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(dest, durable=False) as fh:
        fh.write(b"half")
        assert len(list(tmp_path.iterdir())) == 2  # the temp file is there meanwhile
        raise RuntimeError("the encoder failed")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_new_file_gets_the_umask_mode_not_0600(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write(tmp_path / "a", b"x")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_probe_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    probe_writable(folder, size=65536)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_the_probe_raises_oserror_where_nothing_can_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        probe_writable(tmp_path / "file" / "sub")  # under a file: works even as root


def test_a_link_planted_at_the_temp_name_is_never_written_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    private = tmp_path / "private.txt"
    private.write_text("mine\n")
    folder = tmp_path / "failed"
    folder.mkdir()
    (folder / ".bgremove-aaaa.tmp").symlink_to(private)  # someone guessed the temp name
    names = iter(["aaaa", "bbbb", "aaaa", "cccc"])  # each writer tries the planted name first
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    atomic_write(folder / "report.json", "{}\n", durable=False)
    probe_writable(folder, size=16)
    assert private.read_text() == "mine\n"
    assert (folder / "report.json").read_text() == "{}\n"
    assert sorted(p.name for p in folder.iterdir()) == [".bgremove-aaaa.tmp", "report.json"]
