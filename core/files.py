"""Files written whole or not at all, and the check that a folder takes writes.

    atomic_writer(path)        a context manager yielding a binary file; on a clean exit the
                               file replaces ``path`` in one rename, else it is removed
    atomic_write(path, data)   the same for bytes or text in hand
    probe_writable(folder)     create ``folder`` if needed and write (and remove) a test file

The temp file is hidden (``.bgremove-<random>.tmp``) and beside the destination, so the
rename is atomic and its short name is legal even when the destination's name uses all
255 bytes. A reader (or the hot-folder daemon) never sees half a file, an existing file
stays untouched until the new one is complete, and nothing is left behind on failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

TEMP_PREFIX = ".bgremove-"
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int | None = None,
                  durable: bool = True, dir_fd: int | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file beside it, renamed over ``path`` at the end.

    ``mode`` sets the permissions (default: a new file's, from the umask). ``durable``
    fsyncs the file before the rename and the folder after it, so the result survives
    a power cut. ``dir_fd``: ``path`` is a name in that open folder (one reached without
    following links). ``OSError`` propagates; the temp file is removed on any failure.
    """
    fd, temp_path = _create_temp(Path(path), dir_fd)
    # with dir_fd, both are names in that folder
    dest = Path(path).name if dir_fd is not None else Path(path)
    temp = temp_path.name if dir_fd is not None else temp_path
    try:
        with os.fdopen(fd, "w+b") as fh:  # readable too: a caller may check what it wrote
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(temp, mode, dir_fd=dir_fd)
        os.replace(temp, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    if durable:
        fsync_folder(Path(path).parent if dir_fd is None else dir_fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None,
                 durable: bool = True, dir_fd: int | None = None) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` whole or not at all; see ``atomic_writer``."""
    with atomic_writer(path, mode=mode, durable=durable, dir_fd=dir_fd) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def probe_writable(folder: str | os.PathLike[str], *, size: int = 0) -> None:
    """Create ``folder`` if needed, write ``size`` bytes to a test file in it and remove it.

    Raises ``OSError`` (permissions, read-only or full filesystem) for the caller to word.
    A non-zero ``size`` with an fsync finds a full disk that still creates empty files.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    fd, temp = _create_temp(target / "probe")
    try:
        with os.fdopen(fd, "wb") as fh:
            if size:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def fsync_folder(folder: Path | int) -> None:
    """Make a rename in ``folder`` (a path or an open descriptor) durable (POSIX); not
    possible or needed on Windows."""
    if os.name != "posix":
        return
    if isinstance(folder, int):
        with contextlib.suppress(OSError):
            os.fsync(folder)
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(dest: Path, dir_fd: int | None = None) -> tuple[int, Path]:
    """Create a new hidden temp file beside ``dest`` (mode from the umask, like a normal file);
    with ``dir_fd``, in that open folder."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = dest.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(temp if dir_fd is None else temp.name, flags, 0o666,
                           dir_fd=dir_fd), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot pick a free temp file name", str(dest.parent))


#: Bytes read at a time by ``sha256_of``.
HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at ``path``, read a chunk at a time (OSError as
    ``open`` raises it)."""
    with open(path, "rb") as fh:
        return sha256_of(fh)


def sha256_of(fh: IO[bytes]) -> str:
    """The sha256 of what is left to read in ``fh``."""
    digest = hashlib.sha256()
    while chunk := fh.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
