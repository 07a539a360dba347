"""Cross-process claims: a file is worked on by one daemon only, even on a shared drive.

Each daemon owns ``INBOX/.bgremove-claims/<host>-<pid>-<start>/``. To claim a
file it renames it to ``<that folder>/<n>-<path relative to INBOX>`` (``/`` and ``%``
percent-encoded: no folders are created per file, which keeps a recursive
native watch of INBOX from adding and dropping a watch for each claim). A
rename is atomic on local disks, NFS and SMB alike: when two daemons race for
one file exactly one rename succeeds and the other gets ``FileNotFoundError``.
(``flock`` is not used: it is advisory, and unreliable over network shares.)

A name that would not fit (over ``NAME_MAX`` once prefixed and encoded: a 255-byte
name, a deep ``--recursive`` path) is claimed as ``<n>-#<hash><suffix>`` and its
real relative path written first to the sidecar ``.<claimed name>.rel`` (raw bytes),
so it is never lost.

A daemon touches ``.heartbeat`` in its folder every few seconds. A folder is
stale when its owner runs on this host and its process is gone, or when its
heartbeat has not changed for ``stale_seconds`` as seen by *this* daemon's
clock (file-server clocks may be skewed, so the mtime is compared with its
own earlier value, not with the local time), or when it is older than this
daemon's own freshly touched heartbeat by more than ``stale_seconds`` (both are
the file server's times). A pid reused by another process is detected from the
process start time (``/proc``). Files in a stale folder are
claimed again, by rename, by whichever live daemon gets there first; the
journal then resumes their task instead of paying for them twice.

Everything here is writable by every INBOX writer, so nothing read back is trusted
(see ``bgremove.watcher.untrusted``): the claims folder and a daemon's folder must be real
folders (never a symbolic link), a stale folder is opened without following a link
and its entries moved through that folder's descriptor, symbolic links among them are
moved as links (never read), and a recorded name that is not a plain relative path
comes back as the entry's own name with an ``UnsafeInputError`` (the daemon moves
such entries to failed/ with that reason).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

from bgremove.errors import ConfigError, UnsafeInputError
from bgremove.watcher.naming import DIR_FLAGS, READ_FLAGS, folder_fd, shown
from bgremove.watcher.untrusted import CREATE_NEW, safe_rel

log = logging.getLogger(__name__)

HEARTBEAT = ".heartbeat"
OWNER_FILE = "owner.json"
#: Longest claimed name kept readable (bytes); NAME_MAX is 255 on common file systems.
MAX_CLAIM_NAME = 200
#: Longest ``.rel`` sidecar read back (a relative path; PATH_MAX is 4096).
MAX_SIDECAR = 4096

#: A claimed file: its path in a claim folder, the INBOX-relative path it came from, and
#: why it must not be opened (a recorded name that leads out of INBOX), if so.
Claimed = tuple[Path, Path, UnsafeInputError | None]


def make_owner_id(pid: int | None = None, started: float | None = None) -> str:
    host = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"
    return f"{host}-{pid or os.getpid()}-{int(started or time.time())}"


def parse_owner(owner: str) -> tuple[str, int]:
    """(host, pid) of an owner id."""
    host, pid, _started = owner.rsplit("-", 2)
    return host, int(pid)


def owner_started(owner: str) -> float | None:
    try:
        return float(owner.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> float | None:
    """Wall-clock start time of a process (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii", errors="replace") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` runs on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Claims:
    """The claim folder of one daemon, and recovery of dead daemons' folders."""

    def __init__(self, root: Path, owner: str, *, stale_seconds: float = 60.0) -> None:
        self.root = root
        self.owner = owner
        self.dir = root / owner
        self.stale_seconds = stale_seconds
        self._host = parse_owner(owner)[0]
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        # owner folder -> (heartbeat mtime last seen, monotonic time it was first seen)
        self._seen: dict[str, tuple[float, float]] = {}
        self._dir_fd: int | None = None  # this daemon's folder, opened without following links

    def start(self) -> None:
        """Create this daemon's folder; ``ConfigError`` if a link or a file is in the way."""
        try:
            self._open_dir()
        except OSError as exc:
            what = {errno.ELOOP: "a symbolic link", errno.ENOTDIR: "not a folder"}.get(
                exc.errno or 0)
            if what is None:  # read-only, no permission, disk full: INBOX itself is the cause
                raise ConfigError(f"INBOX {shown(self.root.parent)} cannot be written: "
                                  f"{exc.strerror or exc}",
                                  hint="the daemon moves each file it takes into "
                                  f"{self.root.name}/ there: check its permissions and free "
                                  "space; nothing was taken from INBOX") from None
            raise ConfigError(f"{shown(exc.filename)} is {what}: the daemon keeps its claims "
                              "in a folder there and follows no link",
                              hint="remove it, then start again") from None
        host, pid = parse_owner(self.owner)
        _unlink_at(OWNER_FILE, self._fd())
        fd = os.open(OWNER_FILE, CREATE_NEW, 0o644, dir_fd=self._fd())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"owner": self.owner, "host": host, "pid": pid,
                                 "started": time.time()}))
        self.heartbeat()

    def _open_dir(self) -> None:
        """(Re)create and open this daemon's folder, every component checked to be a real
        folder; ``OSError`` (``ELOOP``, ``ENOTDIR``) if one is not."""
        self.root.parent.mkdir(parents=True, exist_ok=True)  # INBOX: trusted
        fd = folder_fd(self.dir, self.root.parent)
        old, self._dir_fd = self._dir_fd, fd
        if old is not None:
            os.close(old)

    def dir_fd(self) -> int:
        """This daemon's folder, as opened (and checked) at start: claimed files are read
        and moved out through it, never through its path (which INBOX writers can swap)."""
        return self._fd()

    def _fd(self) -> int:
        if self._dir_fd is None:
            self._open_dir()
        assert self._dir_fd is not None
        return self._dir_fd

    def _dir_moved(self) -> bool:
        """True when this daemon's folder is gone or was replaced under its path."""
        try:
            st, own = os.lstat(self.dir), os.fstat(self._fd())
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino) or own.st_nlink == 0

    def heartbeat(self) -> None:
        path = self.dir / HEARTBEAT
        try:
            fd = self._fd()
            try:  # a planted link is touched itself, never its target
                os.utime(HEARTBEAT, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.close(os.open(HEARTBEAT, CREATE_NEW, 0o644, dir_fd=fd))
        except OSError as exc:
            log.warning("cannot update the claim heartbeat %s: %s", path, exc)

    def claim(self, path: Path, rel: Path, *, src_dir_fd: int | None = None) -> Path | None:
        """Move ``path`` into this daemon's folder; None if another process was first.

        ``path`` is a name inside the folder ``src_dir_fd`` when that is given. Other
        ``OSError``s (the file cannot be moved at all) are raised."""
        with self._lock:
            n = next(self._seq)
        encoded = _encode(rel)
        fd = self._fd()
        sidecar: str | None = None
        if len(os.fsencode(encoded)) > MAX_CLAIM_NAME:
            digest = hashlib.sha256(os.fsencode(rel.as_posix())).hexdigest()[:24]
            suffix = rel.suffix if len(os.fsencode(rel.suffix)) <= 16 else ""
            name = f"{n}-#{digest}{suffix}"
            sidecar = _sidecar(Path(name)).name
            _unlink_at(sidecar, fd)
            with os.fdopen(os.open(sidecar, CREATE_NEW, 0o644, dir_fd=fd), "wb") as fh:
                fh.write(os.fsencode(rel.as_posix()))  # before the rename: never lost
        else:
            name = f"{n}-{encoded}"
        try:  # into the folder opened at start, even if its path was swapped for a link
            os.rename(path, name, src_dir_fd=src_dir_fd, dst_dir_fd=fd)
        except FileNotFoundError:
            self._drop(sidecar, fd)
            if self._dir_moved():  # removed under us: recreate and let the caller retry
                self._open_dir()
            return None
        except PermissionError:  # Windows: the writer still has it open
            self._drop(sidecar, fd)
            return None
        except OSError:
            self._drop(sidecar, fd)
            raise
        return self.dir / name

    @staticmethod
    def _drop(sidecar: str | None, fd: int) -> None:
        if sidecar is not None:
            _unlink_at(sidecar, fd)

    @staticmethod
    def rel_of(claimed: Path, *, dir_fd: int | None = None) -> Path:
        """The INBOX-relative path a claimed file came from; ``UnsafeInputError`` when the
        recorded name is not a plain relative path (a planted claim), or its sidecar is not
        a plain file."""
        recorded = _read_sidecar(_sidecar(claimed), dir_fd)
        if recorded is None:
            recorded = _decode(claimed.name.split("-", 1)[1])
        rel = safe_rel(recorded)
        if rel is None:
            raise UnsafeInputError(f"{shown(claimed.name)}: its recorded INBOX path "
                                   f"{shown(recorded)!r} leads out of INBOX; not opened")
        return rel

    @classmethod
    def _claimed(cls, path: Path, dir_fd: int | None = None) -> Claimed:
        try:
            return path, cls.rel_of(path, dir_fd=dir_fd), None
        except UnsafeInputError as exc:
            return path, Path(path.name), exc

    def release(self, claimed: Path) -> None:
        """The claimed file has left the claim folder: drop its sidecar, if any (through the
        folder as opened at start, like every other claim-folder change)."""
        _unlink_at(_sidecar(claimed).name, self._fd())

    def is_alive(self, owner: str) -> bool:
        """Whether the daemon ``owner`` is still running (see the module docstring)."""
        if owner == self.owner:
            return True
        try:
            host, pid = parse_owner(owner)
        except ValueError:
            return False
        if host == self._host:
            if pid == os.getpid() or not pid_alive(pid):
                return False  # our own pid under another id: an earlier run of it
            started, proc_started = owner_started(owner), process_start_time(pid)
            if started is not None and proc_started is not None and proc_started > started + 3:
                return False  # the pid now belongs to a process started after that daemon
        try:
            mtime = (self.root / owner / HEARTBEAT).lstat().st_mtime
        except OSError:
            # No claim folder here: a daemon on another INBOX sharing the journal. Its
            # process check passed (this host) or cannot be made: consider it alive.
            return True
        try:
            own = (self.dir / HEARTBEAT).lstat().st_mtime  # touched moments ago: server time
        except OSError:
            own = None
        if own is not None and own - mtime > self.stale_seconds:
            return False
        now = time.monotonic()
        seen = self._seen.get(owner)
        if seen is None or seen[0] != mtime:
            self._seen[owner] = (mtime, now)
            return True
        return now - seen[1] < self.stale_seconds

    def stale_owners(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        return [e.name for e in entries
                if _is_folder(e) and e.name != self.owner and not self.is_alive(e.name)]

    def recover(self) -> list[Claimed]:
        """Claim the files of dead daemons (see ``Claimed``)."""
        taken: list[Claimed] = []
        owners = self.stale_owners()
        if not owners:
            return taken
        try:
            root_fd = os.open(self.root, DIR_FLAGS)
        except OSError as exc:
            log.warning("cannot open the claims folder %s: %s", shown(self.root), exc)
            return taken
        try:
            for owner in owners:
                self._recover_owner(owner, root_fd, taken)
        finally:
            os.close(root_fd)
        return taken

    def _recover_owner(self, owner: str, root_fd: int, taken: list[Claimed]) -> None:
        try:  # never through a link, even one swapped in since the listing
            fd = os.open(owner, DIR_FLAGS, dir_fd=root_fd)
        except OSError as exc:
            log.warning("cannot open the claim folder %s: %s", shown(owner), exc)
            return
        try:
            self._recover_from(owner, fd, taken)
            empty = not _claimed_in(fd)
        finally:
            os.close(fd)
        if empty:
            shutil.rmtree(self.root / owner, ignore_errors=True)  # never follows a link
            self._seen.pop(owner, None)

    def _recover_from(self, owner: str, fd: int, taken: list[Claimed]) -> None:
        folder = self.root / owner
        for name in _claimed_in(fd):
            path, rel, unsafe = self._claimed(folder / name, fd)
            try:
                claimed = self.claim(Path(name), rel, src_dir_fd=fd)
            except OSError as exc:
                log.warning("cannot recover %s from %s: %s", shown(name), shown(owner), exc)
                continue
            _unlink_at(_sidecar(path).name, fd)
            if claimed is not None:
                log.info("recovered %s from stopped daemon %s", shown(rel), shown(owner))
                taken.append((claimed, rel, unsafe))

    def claimed_by_others(self) -> dict[str, int]:
        """Files in other (live) daemons' claim folders, by owner."""
        try:
            entries = [e.name for e in os.scandir(self.root)
                       if _is_folder(e) and e.name != self.owner]
        except OSError:
            return {}
        counts = {name: len(_claimed_in(self.root / name)) for name in entries}
        return {name: n for name, n in counts.items() if n}

    def mine(self) -> list[Claimed]:
        """Files already in this daemon's folder (normally none at start)."""
        return [self._claimed(p) for p in _claimed_in(self.dir)]

    def stop(self) -> None:
        """Remove this daemon's folder if nothing is left in it."""
        if not self.mine():
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def _claimed_in(folder: Path | int) -> list[Path]:
    """Claimed entries (regular files and links, never followed) of a folder given by its
    path or an open descriptor (then as bare names)."""
    try:
        if isinstance(folder, int):
            return [Path(e.name) for e in os.scandir(folder) if _is_entry(e)]
        return [Path(e.path) for e in os.scandir(folder) if _is_entry(e)]
    except OSError:
        return []


def _is_entry(entry: os.DirEntry[str]) -> bool:
    try:
        return bool(_CLAIMED.match(entry.name)) and (
            entry.is_symlink() or entry.is_file(follow_symlinks=False))
    except OSError:
        return False


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _read_sidecar(path: Path, dir_fd: int | None) -> str | None:
    """A sidecar's recorded path (never through a link); None when there is none."""
    try:
        fd = os.open(path.name if dir_fd is not None else path, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else \
            f"cannot be read ({exc.strerror or exc})"
        raise UnsafeInputError(f"{shown(path.name)}, the record of its INBOX path, {why}; "
                               "not followed") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeInputError(f"{shown(path.name)}: not a regular file; not read")
        return os.fsdecode(fh.read(MAX_SIDECAR))


_CLAIMED = re.compile(r"^\d+-.")


def _sidecar(claimed: Path) -> Path:
    return claimed.with_name(f".{claimed.name}.rel")


def _unlink_at(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _encode(rel: Path) -> str:
    return rel.as_posix().replace("%", "%25").replace("/", "%2F")


def _decode(name: str) -> str:
    return re.sub(r"%(25|2F)", lambda m: "%" if m.group(1) == "25" else "/", name)
