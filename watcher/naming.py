"""Where files go: the folder layout, ignored names, and moves that never overwrite.

Layout (``--recursive`` mirrors sub-folders in OUTBOX, done and failed)::

    INBOX/a/x.jpg  ->  OUTBOX/a/x.png         the cut-out
                   ->  DONE/a/x.jpg           the original, once the output is in place
                   or  FAILED/a/x.jpg + FAILED/a/x.jpg.error.json

Two inputs never share an output: a name that is taken gets ``-1``, ``-2``...
(``x.jpg`` and ``x.png`` in one folder give ``x.png`` and ``x-1.png``). The
final step of every move is ``os.link`` (fails if the name exists) or, where
hard links are not supported, a rename after an existence check, so an
existing file is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from bgremove.errors import ConfigError
from bgremove.files import TEMP_PREFIX, TEMP_SUFFIX

#: Longest file name (bytes) on common file systems.
NAME_MAX = 255

#: Folder inside INBOX where daemons move the files they work on (see ``claims``).
CLAIMS_DIR = ".bgremove-claims"
#: Folder inside OUTBOX for the journal, staged outputs and daemon state files.
STATE_DIR = ".bgremove"

_TEMP_SUFFIXES = (".part", ".crdownload", ".tmp", ".partial", ".download", ".swp", ".temp", "~")
def is_ignored_name(name: str) -> bool:
    """True for temp, partial, hidden and lock files (``.part``, ``~$x``, ``.x``...)."""
    lower = name.lower()
    return (
        name.startswith((".", "~$"))
        or lower.endswith(_TEMP_SUFFIXES)
        or lower.endswith(".error.json")
        or lower in ("thumbs.db", "desktop.ini")
    )


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


@dataclass(frozen=True)
class Layout:
    """The daemon's folders, absolute and checked."""

    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    recursive: bool

    @classmethod
    def create(cls, inbox: str | os.PathLike[str], outbox: str | os.PathLike[str],
               done: str | os.PathLike[str] | None = None,
               failed: str | os.PathLike[str] | None = None,
               recursive: bool = False) -> Layout:
        """Resolve and check the folders; ``ConfigError`` with one clear line if they clash."""
        inbox_p = Path(inbox).expanduser().resolve()
        outbox_p = Path(outbox).expanduser().resolve()
        done_p = Path(done).expanduser().resolve() if done else inbox_p / "done"
        failed_p = Path(failed).expanduser().resolve() if failed else inbox_p / "failed"
        if not inbox_p.is_dir():
            raise ConfigError(f"INBOX {inbox_p} is not a folder", hint="create it first")
        if outbox_p == inbox_p:
            raise ConfigError(f"OUTBOX {outbox_p} is the INBOX: outputs would be taken as inputs",
                              hint="use a separate folder")
        if _inside(outbox_p, inbox_p):  # watched or not: its journal is the daemon's memory
            raise ConfigError(f"OUTBOX {outbox_p} is inside the watched INBOX {inbox_p}: "
                              "whoever can drop files there could change the daemon's journal",
                              hint="use a folder outside INBOX")
        if recursive and _inside(inbox_p, outbox_p):
            raise ConfigError(f"INBOX {inbox_p} is inside OUTBOX {outbox_p}: mirrored outputs "
                              "could land in the INBOX", hint="use folders that do not nest")
        for name, path in (("done", done_p), ("failed", failed_p)):
            if path in (outbox_p, inbox_p):
                raise ConfigError(f"the {name} folder {path} must differ from INBOX and OUTBOX")
        if done_p == failed_p:
            raise ConfigError(f"the done and failed folders are the same ({done_p})")
        return cls(inbox_p, outbox_p, done_p, failed_p, recursive)

    def journal_path(self, configured: str | os.PathLike[str] | None) -> Path:
        """The journal's path (default ``OUTBOX/.bgremove/journal.sqlite3``); one reached
        through INBOX is refused, as OUTBOX inside it is (its writers could plant a link at
        the name, or change the tasks paid for and the cost guard's counts)."""
        if not configured:
            return self.state_dir / "journal.sqlite3"
        path = Path(configured).expanduser().absolute()
        if any(_inside(p, self.inbox) for p in (Path(os.path.normpath(path)),
                                                path.parent.resolve() / path.name)):
            raise ConfigError(f"the journal {path} is inside INBOX {self.inbox}: whoever can "
                              "drop files there could change it", hint="use a path outside INBOX")
        return path

    @property
    def claims(self) -> Path:
        return self.inbox / CLAIMS_DIR

    @property
    def state_dir(self) -> Path:
        return self.outbox / STATE_DIR

    def trusted_base(self, folder: Path) -> Path:
        """The deepest folder above (or at) ``folder`` that INBOX writers cannot replace:
        INBOX for anything inside it (done/, failed/ by default), else ``folder`` itself."""
        return self.inbox if _inside(folder, self.inbox) else folder

    def excluded(self) -> tuple[Path, ...]:
        """Folders never taken as input."""
        return (self.done, self.failed, self.outbox, self.claims)

    def relative(self, path: Path) -> Path | None:
        """``path`` relative to INBOX if the daemon should consider it, else None."""
        try:
            rel = path.relative_to(self.inbox)
        except ValueError:
            return None
        parts = rel.parts
        if not parts or any(is_ignored_name(p) for p in parts):
            return None
        if len(parts) > 1 and not self.recursive:
            return None
        if any(_inside(path, ex) for ex in self.excluded()):
            return None
        return rel

    def output_for(self, rel: Path, ext: str) -> Path:
        """The preferred output path (the real one may get a suffix)."""
        return self.outbox / rel.parent / f"{rel.stem}{ext}"


def candidate_names(preferred: Path, limit: int = 100_000) -> Iterator[Path]:
    """``x.png``, ``x-1.png``, ``x-2.png``... (long but finite; each within NAME_MAX)."""
    stem, suffix = preferred.stem, preferred.suffix
    yield preferred.with_name(fit_name(stem, suffix))
    for i in range(1, limit):
        yield preferred.with_name(fit_name(stem, f"-{i}{suffix}"))


def fit_name(base: str, tail: str, limit: int = NAME_MAX) -> str:
    """``base + tail``, with ``base`` shortened (by bytes) so the name fits in ``limit``."""
    raw_tail = os.fsencode(tail)
    raw = os.fsencode(base)
    if len(raw) + len(raw_tail) <= limit:
        return base + tail
    return os.fsdecode(raw[:max(limit - len(raw_tail), 1)]) + tail


@overload
def shown(value: None) -> None: ...
@overload
def shown(value: object) -> str: ...
def shown(value: object) -> str | None:
    """Text for logs, the journal's event texts and ``.error.json``: a file name that is
    not valid UTF-8 (read with ``surrogateescape``) shows its odd bytes as ``\\xe9``."""
    if value is None:
        return None
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def link_no_replace(src: Path, dst: Path, *, dir_fd: int | None = None,
                    src_dir_fd: int | None = None) -> bool:
    """Give ``src`` the name ``dst`` unless ``dst`` exists; True if it was taken.

    Leaves ``src`` in place when a hard link was made (the caller removes it),
    so a crash in between leaves two names for one file, never zero. A symbolic link
    ``src`` is moved as the link itself: its target is never read, linked or copied.
    With ``dir_fd`` (see ``folder_fd``) ``dst`` is ``dst.name`` in that open folder, and
    with ``src_dir_fd`` ``src`` is ``src.name`` in that one.
    """
    name: Path | str = dst.name if dir_fd is not None else dst
    src_name: Path | str = src.name if src_dir_fd is not None else src
    try:
        os.link(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd,
                follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK, errno.EACCES, errno.ENOSYS):
            raise
    # No hard links here (FAT, some SMB mounts) or another device.
    if lexists_at(name, dir_fd):
        return False
    if _same_device(src_name, src_dir_fd, dst.parent if dir_fd is None else dir_fd):
        os.rename(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd)
        return True
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}"
    tmp_name: Path | str = tmp if dir_fd is not None else dst.with_name(tmp)
    placed = False
    try:
        _copy_new(src_name, src_dir_fd, tmp_name, dir_fd)
        if lexists_at(name, dir_fd):
            return False
        os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        placed = True
    finally:
        if not placed:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name, dir_fd=dir_fd)
    os.unlink(src_name, dir_fd=src_dir_fd)
    return True


def _copy_new(src: Path | str, src_dir_fd: int | None, tmp: Path | str,
              dir_fd: int | None) -> None:
    """Copy ``src`` (a link as a link) to the new name ``tmp``; neither end follows a link."""
    if stat.S_ISLNK(os.lstat(src, dir_fd=src_dir_fd).st_mode):
        os.symlink(os.readlink(src, dir_fd=src_dir_fd), tmp, dir_fd=dir_fd)
        return
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(src, flags, dir_fd=src_dir_fd), "rb") as fin, \
            os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666,
                              dir_fd=dir_fd), "wb") as fout:
        shutil.copyfileobj(fin, fout)
        st = os.fstat(fin.fileno())
        os.fchmod(fout.fileno(), stat.S_IMODE(st.st_mode))
        os.utime(fout.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))


def lexists_at(name: Path | str, dir_fd: int | None) -> bool:
    """``os.path.lexists`` for a name in an open folder (``dir_fd``) or a path (None)."""
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _same_device(a: Path | str, a_dir_fd: int | None, b: Path | int) -> bool:
    try:
        return os.lstat(a, dir_fd=a_dir_fd).st_dev == os.stat(b).st_dev
    except OSError:
        return False


#: ``os.open`` flags for a folder reached without following a link.
DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
#: ``os.open`` flags for reading a file that may have been planted: no link followed, and a
#: FIFO or terminal never blocks the reader nor becomes its terminal.
READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))


def folder_fd(folder: Path, below: Path, *, create: bool = True) -> int:
    """An open descriptor of ``folder`` (inside the trusted folder ``below``), reached one
    component at a time without following a link; missing ones are made when ``create``.

    ``OSError`` (``ELOOP``, ``ENOTDIR``, naming the component) when one is a symbolic
    link or a file: it is never followed, even if swapped in a moment ago. Writes through
    the descriptor (``dir_fd=``) land in the folder that was checked."""
    fd = os.open(below, DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))  # trusted: as configured
    current = below
    try:
        for part in folder.relative_to(below).parts:
            current = current / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                new = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _in_the_way(part, fd, current) or exc from None
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


def _in_the_way(part: str, fd: int, path: Path) -> OSError | None:
    try:
        st = os.lstat(part, dir_fd=fd)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return OSError(errno.ELOOP, "a symbolic link is in the way (not followed)", str(path))
    if not stat.S_ISDIR(st.st_mode):
        return NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", str(path))
    return None


def ensure_folder(folder: Path, below: Path) -> None:
    """Create ``folder`` (inside the trusted folder ``below``) one component at a time;
    ``OSError`` if a component is a symbolic link or not a folder (none is followed)."""
    os.close(folder_fd(folder, below))


def move_no_replace(src: Path, preferred: Path, *, below: Path | None = None,
                    src_dir_fd: int | None = None) -> Path:
    """Move ``src`` to ``preferred`` or the first free ``-N`` variant; return the new path.

    ``below``: a trusted folder above ``preferred``; the folders between are created and
    checked one by one and the move goes through the checked folder's descriptor (a
    symbolic link among them raises ``OSError``, never followed). ``src_dir_fd``: the
    open folder ``src`` is in (then ``src.name`` there), as ``link_no_replace`` takes it.
    """
    fd = None
    if below is None:
        preferred.parent.mkdir(parents=True, exist_ok=True)
    else:
        fd = folder_fd(preferred.parent, below)
    try:
        for dst in candidate_names(preferred):
            if link_no_replace(src, dst, dir_fd=fd, src_dir_fd=src_dir_fd):
                src_name = src.name if src_dir_fd is not None else src
                if lexists_at(src_name, src_dir_fd):  # a hard link was made: drop the old name
                    os.unlink(src_name, dir_fd=src_dir_fd)
                return dst
    finally:
        if fd is not None:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, "no free name", str(preferred))

