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
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT = ".heartbeat"
OWNER_FILE = "owner.json"
#: Longest claimed name kept readable (bytes); NAME_MAX is 255 on common file systems.
MAX_CLAIM_NAME = 200


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

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        host, pid = parse_owner(self.owner)
        (self.dir / OWNER_FILE).write_text(
            json.dumps({"owner": self.owner, "host": host, "pid": pid, "started": time.time()}),
            encoding="utf-8")
        self.heartbeat()

    def heartbeat(self) -> None:
        path = self.dir / HEARTBEAT
        try:
            path.touch()
            os.utime(path)
        except OSError as exc:
            log.warning("cannot update the claim heartbeat %s: %s", path, exc)

    def claim(self, path: Path, rel: Path) -> Path | None:
        """Move ``path`` into this daemon's folder; None if another process was first.

        Other ``OSError``s (the file cannot be moved at all) are raised."""
        with self._lock:
            n = next(self._seq)
        encoded = _encode(rel)
        sidecar: Path | None = None
        if len(os.fsencode(encoded)) > MAX_CLAIM_NAME:
            digest = hashlib.sha256(os.fsencode(rel.as_posix())).hexdigest()[:24]
            suffix = rel.suffix if len(os.fsencode(rel.suffix)) <= 16 else ""
            dest = self.dir / f"{n}-#{digest}{suffix}"
            sidecar = _sidecar(dest)
            sidecar.write_bytes(os.fsencode(rel.as_posix()))  # before the rename: never lost
        else:
            dest = self.dir / f"{n}-{encoded}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            _unlink(sidecar)
            if not self.dir.is_dir():  # removed under us: recreate and let the caller retry
                self.dir.mkdir(parents=True, exist_ok=True)
            return None
        except PermissionError:  # Windows: the writer still has it open
            _unlink(sidecar)
            return None
        except OSError:
            _unlink(sidecar)
            raise
        return dest

    @staticmethod
    def rel_of(claimed: Path) -> Path:
        """The INBOX-relative path a claimed file came from."""
        try:
            return Path(os.fsdecode(_sidecar(claimed).read_bytes()))
        except FileNotFoundError:
            return Path(_decode(claimed.name.split("-", 1)[1]))

    @staticmethod
    def release(claimed: Path) -> None:
        """The claimed file has left the claim folder: drop its sidecar, if any."""
        _unlink(_sidecar(claimed))

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
            mtime = (self.root / owner / HEARTBEAT).stat().st_mtime
        except OSError:
            # No claim folder here: a daemon on another INBOX sharing the journal. Its
            # process check passed (this host) or cannot be made: consider it alive.
            return True
        try:
            own = (self.dir / HEARTBEAT).stat().st_mtime  # touched moments ago: server time
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
                if e.is_dir() and e.name != self.owner and not self.is_alive(e.name)]

    def recover(self) -> list[tuple[Path, Path]]:
        """Claim the files of dead daemons; returns (claimed path, INBOX-relative path)."""
        taken: list[tuple[Path, Path]] = []
        for owner in self.stale_owners():
            folder = self.root / owner
            for path in _claimed_in(folder):
                rel = self.rel_of(path)
                try:
                    claimed = self.claim(path, rel)
                except OSError as exc:
                    log.warning("cannot recover %s from %s: %s", path, owner, exc)
                    continue
                self.release(path)
                if claimed is not None:
                    log.info("recovered %s from stopped daemon %s", rel, owner)
                    taken.append((claimed, rel))
            if not _claimed_in(folder):
                shutil.rmtree(folder, ignore_errors=True)
                self._seen.pop(owner, None)
        return taken

    def claimed_by_others(self) -> dict[str, int]:
        """Files in other (live) daemons' claim folders, by owner."""
        try:
            entries = [e.name for e in os.scandir(self.root)
                       if e.is_dir() and e.name != self.owner]
        except OSError:
            return {}
        counts = {name: len(_claimed_in(self.root / name)) for name in entries}
        return {name: n for name, n in counts.items() if n}

    def mine(self) -> list[tuple[Path, Path]]:
        """Files already in this daemon's folder (normally none at start)."""
        return [(p, self.rel_of(p)) for p in _claimed_in(self.dir)]

    def stop(self) -> None:
        """Remove this daemon's folder if nothing is left in it."""
        if not self.mine():
            shutil.rmtree(self.dir, ignore_errors=True)


def _claimed_in(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder)
                if e.is_file() and _CLAIMED.match(e.name)]
    except OSError:
        return []


_CLAIMED = re.compile(r"^\d+-.")


def _sidecar(claimed: Path) -> Path:
    return claimed.with_name(f".{claimed.name}.rel")


def _unlink(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _encode(rel: Path) -> str:
    return rel.as_posix().replace("%", "%25").replace("/", "%2F")


def _decode(name: str) -> str:
    return re.sub(r"%(25|2F)", lambda m: "%" if m.group(1) == "25" else "/", name)
