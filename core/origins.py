"""Which input each result was made from, so a re-run skips or replaces only its own.

``bgremove remove`` appends one JSON line per result it writes, ``{"name", "input",
"sha256", "at"}``, to a file per output folder in the user state folder (Linux
``~/.local/state/bgremove/results/``), never into the output folder itself: results
are often deliverables. A result is an input's own when it was recorded for that
input's path, or for the same bytes (the photo moved or renamed). A result with no
record (made before this was kept, by hand, or in a folder since moved) is judged by
its name alone, as it always was. Failing to write the record never fails an image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bgremove.files import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """The input a result was made from, as recorded when it was written."""

    input: str  # the input's real path
    sha256: str | None  # of the input's bytes


class Origins:
    """The records of the output folders one command writes into. Thread-safe."""

    def __init__(self, root: Path | None = None) -> None:
        self._root = root  # found on first use: a run with no result there never needs it
        self._folders: dict[str, dict[str, Origin]] = {}
        self._digests: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def of(self, dst: Path) -> Origin | None:
        """The input the file ``dst`` was made from; None if not recorded or not there."""
        try:
            if not dst.is_file():
                return None
        except OSError:
            return None
        with self._lock:
            return self._records(dst.parent).get(dst.name.casefold())

    def is_anothers(self, dst: Path, src: Path) -> bool:
        """Whether ``dst`` exists and is recorded as the result of another input than ``src``."""
        origin = self.of(dst)
        if origin is None or origin.input == _real(src):
            return False
        return origin.sha256 is None or origin.sha256 != self._digest(src)

    def record(self, dst: Path, src: Path, sha256: str | None) -> None:
        """Remember that ``dst`` was just written from ``src``; a failure is only logged."""
        origin = Origin(_real(src), sha256)
        entry = {"name": dst.name, "input": origin.input, "sha256": sha256,
                 "at": round(time.time(), 3)}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            self._records(dst.parent)[dst.name.casefold()] = origin
            path = self._file(dst.parent)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)  # one write in append mode: processes can share it
                finally:
                    os.close(fd)
            except OSError as exc:
                log.debug("cannot record the input of %s in %s: %s", dst, path, exc)

    def _file(self, folder: Path) -> Path:
        from bgremove.batch import path_key

        if self._root is None:
            from platformdirs import user_state_dir

            self._root = Path(user_state_dir("bgremove")) / "results"
        name = hashlib.sha256(path_key(folder).encode("utf-8", "surrogateescape")).hexdigest()
        return self._root / f"{name[:32]}.jsonl"

    def _records(self, folder: Path) -> dict[str, Origin]:
        """The folder's records (later lines win), read once; the caller holds the lock."""
        from bgremove.batch import path_key

        key = path_key(folder)
        records = self._folders.get(key)
        if records is None:
            records = self._folders[key] = {}
            try:
                text = self._file(folder).read_bytes().decode("utf-8", "surrogateescape")
            except OSError:
                text = ""
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                name, source, digest = entry.get("name"), entry.get("input"), entry.get("sha256")
                if isinstance(name, str) and isinstance(source, str):
                    records[name.casefold()] = Origin(
                        source, digest if isinstance(digest, str) else None)
        return records

    def _digest(self, src: Path) -> str | None:
        key = _real(src)
        if key not in self._digests:
            try:
                self._digests[key] = sha256_file(src)
            except OSError:
                self._digests[key] = None
        return self._digests[key]


def _real(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return str(path.absolute())
