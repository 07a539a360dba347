"""Placing a staged cut-out in OUTBOX: a free name, never replacing a file, safe to repeat
after a crash (the chosen name is journaled before the link)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import OutputError
from bgremove.watcher.naming import (
    READ_FLAGS,
    candidate_names,
    ensure_folder,
    folder_fd,
    lexists_at,
    link_no_replace,
    shown,
)

if TYPE_CHECKING:
    from bgremove.watcher.journal import Job, Journal


def check_output_dir(folder: Path, below: Path) -> None:
    """Create ``folder`` (an OUTBOX sub-folder, inside the trusted ``below``) now: an
    OutputError before anything is sent. No symbolic link on the way is followed."""
    try:
        ensure_folder(folder, below)
    except OSError as exc:
        raise OutputError(f"cannot create {shown(folder)}: {exc.strerror or exc}") from None


def place_staged(journal: Journal, job: Job, staged: Path, preferred: Path, rel: Path, *,
                 below: Path) -> Path:
    """Give the staged cut-out a free name in OUTBOX (never replacing a file); ``below`` is
    the trusted folder above ``preferred`` (see ``check_output_dir``)."""
    if job.state == "placing" and job.output:
        chosen = Path(job.output)
        if chosen.exists() and (not staged.exists() or os.path.samefile(chosen, staged)):
            if staged.exists():
                os.unlink(staged)
            return chosen
    if not staged.exists():
        # staged output lost (should not happen): fetch the result again
        journal.update(job.key, state="submitted" if job.task_id else "claimed")
        raise OutputError(f"the staged result of {shown(rel)} is missing; fetching it again")
    try:
        fd = folder_fd(preferred.parent, below)
    except OSError as exc:
        raise OutputError(f"cannot create {shown(preferred.parent)}: "
                          f"{exc.strerror or exc}") from None
    try:
        for candidate in candidate_names(preferred):
            if lexists_at(candidate.name, fd):
                continue
            journal.update(job.key, state="placing", output=str(candidate))
            if link_no_replace(staged, candidate, dir_fd=fd):
                if staged.exists():
                    os.unlink(staged)
                return candidate
    finally:
        os.close(fd)
    raise OutputError(f"no free output name for {shown(rel)} in {shown(preferred.parent)}")


def place_duplicate(result: Path, preferred: Path, temp_dir: Path, *, below: Path) -> Path:
    """Give an input whose content was already cut out its own output: a hard link to
    ``result`` (a copy where links are not possible) at a free name near ``preferred``.

    Safe to repeat: a name that already holds that result is reused, so a re-dropped file
    or a restart after a crash adds no second copy. ``below`` is the trusted folder above
    ``preferred`` (see ``check_output_dir``): no link on the way, nor one at a candidate
    name, is followed. OSError when OUTBOX cannot take it.
    """
    fd = folder_fd(preferred.parent, below)
    try:
        for candidate in candidate_names(preferred):
            if lexists_at(candidate.name, fd):
                if _holds(candidate.name, fd, result):
                    return candidate
                continue
            try:
                os.link(result, candidate.name, dst_dir_fd=fd)
                return candidate
            except FileExistsError:
                continue
            except OSError:  # no hard links here (FAT, some SMB mounts): a copy, placed safely
                temp_dir.mkdir(parents=True, exist_ok=True)
                temp = temp_dir / f"dup-{os.getpid()}-{candidate.name}"
                shutil.copy2(result, temp)
                try:
                    if link_no_replace(temp, candidate, dir_fd=fd):
                        return candidate
                finally:
                    if temp.exists():
                        os.unlink(temp)
    finally:
        os.close(fd)
    raise OutputError(f"no free output name in {shown(preferred.parent)}")


def _holds(name: str, dir_fd: int, result: Path) -> bool:
    """Whether the entry ``name`` of the open folder is ``result`` or a copy of it; a
    symbolic link or anything but a regular file never is (and is not read)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        ref = os.stat(result)
        if (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino):
            return True
        if st.st_size != ref.st_size:
            return False
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as a, open(result, "rb") as b:
            while chunk := a.read(1 << 20):
                if chunk != b.read(len(chunk)):
                    return False
            return not b.read(1)
    except OSError:
        return False
