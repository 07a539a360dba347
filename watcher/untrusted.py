"""Everything below INBOX is written by people the daemon does not trust.

Whoever can drop a file into INBOX can also plant entries in ``.bgremove-claims/`` and,
when they sit inside INBOX, in ``done/`` and ``failed/``: symbolic links, hard links,
FIFOs, names that climb out (``../``). So:

* a name read back from there (a claimed file's name, a ``.rel`` sidecar) must be a plain
  relative path (``safe_rel``);
* a folder the daemon writes into is checked to be a real folder, component by component
  below the last trusted one (``naming.ensure_folder``: ``lstat``, never following a link);
* a file is opened only when it is a regular file with one name, without following a
  link (``O_NOFOLLOW``), and read once (``read_file``): the bytes hashed for the journal
  are the bytes decoded and uploaded.

What is left is a race against a writer who swaps a checked folder for a link in the
moment between the check and the use; the claim folders themselves are read through
folder descriptors (``bgremove.watcher.claims``), where that matters most.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from bgremove.errors import UnsafeInputError
from bgremove.watcher.naming import READ_FLAGS, shown

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: ``os.open`` flags for a new file that must not exist yet (a planted link makes it fail).
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def safe_rel(text: str) -> Path | None:
    """``text`` as an INBOX-relative path, or None when it could lead anywhere else
    (absolute, empty, ``.``/``..`` parts, a NUL)."""
    if not text or "\0" in text or text.startswith("/"):
        return None
    parts = text.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return Path(PurePosixPath(*parts))


def check_entry(path: Path, st: os.stat_result) -> None:
    """``UnsafeInputError`` unless ``st`` (an ``lstat``) is a regular file with one name."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeInputError(f"{shown(path)}: is a symbolic link; links are not followed",
                               hint="drop the file itself, not a link to it")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeInputError(f"{shown(path)}: not a regular file ({_kind(st.st_mode)})")
    if st.st_nlink > 1:
        raise UnsafeInputError(f"{shown(path)}: has {st.st_nlink} names (hard links); such "
                               "files are not opened", hint="drop a copy instead")


def read_file(path: Path, *, limit: int, dir_fd: int | None = None
              ) -> tuple[bytes, os.stat_result]:
    """The whole content of ``path`` and its ``fstat``, read once through one descriptor.

    With ``dir_fd`` (see ``naming.folder_fd``) the file is ``path.name`` in that folder.
    ``UnsafeInputError`` for a link, a FIFO, a device or a file with several names (checked
    before opening and again on the open descriptor); ``OSError`` as ``open`` raises it
    (``FileNotFoundError`` when it is gone); ``UnsafeInputError`` too when it holds more
    than ``limit`` bytes (nothing that big is an image the daemon may decode)."""
    where = path.name if dir_fd is not None else path
    check_entry(path, os.lstat(where, dir_fd=dir_fd))
    try:
        fd = os.open(where, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since the lstat
            raise UnsafeInputError(f"{shown(path)}: is a symbolic link; links are not "
                                   "followed") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        check_entry(path, st)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeInputError(f"{shown(path)}: over {limit:,} bytes, more than an image "
                               "within input.max_pixels can need; not read",
                               hint="raise input.max_pixels if you trust this file")
    return data, st


def input_limit(max_pixels: int) -> int:
    """Largest input file read: 8 bytes a pixel (16-bit RGBA, uncompressed) plus 64 MiB."""
    return max_pixels * 8 + 64 * 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a file"
