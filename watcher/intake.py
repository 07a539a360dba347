"""Intake: a file the readiness tracker calls stable (or whole) -> read once -> checked -> claimed.

The file is read once through its folder's descriptor (no link followed), hashed, and
prepared (``imaging.prepare_file``: checked to decode as cheaply as can be, its upload
made; no decoded pixels are kept: a 24 MP photo's are some 220 MB). A file that
does not decode yet is handed back to the tracker (a writer may have paused mid-file)
until it has settled; one that changed since it was found stable is handed back too, and
so is one tried early (moved in: ``readiness``) that fails either check.
Then it is claimed (``claims``) and handed to ``FileJobs``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import (
    BgremoveError,
    ImageTooLargeError,
    InputError,
    UnreadableImageError,
    UnsafeInputError,
)
from bgremove.watcher.naming import folder_fd, shown
from bgremove.watcher.untrusted import input_limit, read_file

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Prepared
    from bgremove.watcher.context import Context
    from bgremove.watcher.filejob import FileJobs
    from bgremove.watcher.readiness import Ready

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Content:
    """A file as read once: the sha256 of its bytes, and what the prepare stage made of
    them (``imaging.prepare_file``: its upload, no decoded pixels); None when they are not
    a usable image (the reason travels as the input error)."""

    digest: str
    prepared: Prepared | None


def read_content(path: Path, config: Config, dir_fd: int | None = None
                 ) -> tuple[Content, InputError | None, os.stat_result]:
    """Read ``path`` once (no link followed), hash it and prepare those same bytes.

    Raises ``UnsafeInputError`` (a link, a FIFO...: not read) and ``OSError``."""
    from bgremove.imaging import prepare_file

    max_pixels = config.input.max_pixels
    data, st = read_file(path, limit=input_limit(max_pixels), dir_fd=dir_fd)
    try:
        prepared = prepare_file(path, max_pixels=max_pixels, data=data,
                                max_upload_bytes=config.wavespeed.max_upload_bytes,
                                max_upload_side=config.wavespeed.max_upload_side)
    except InputError as exc:
        return Content(hashlib.sha256(data).hexdigest(), None), exc, st
    assert prepared.digest is not None  # prepare_file hashes the bytes it is given
    return Content(prepared.digest, prepared), None, st


class Intake:
    def __init__(self, ctx: Context, jobs: FileJobs) -> None:
        self.ctx = ctx
        self.jobs = jobs
        #: files that could not be moved into the claim folder (said once each)
        self.unclaimable: set[Path] = set()

    def take_ready(self, ready: Ready) -> None:
        handed_back = False
        try:
            handed_back = self._take_ready(ready)
        finally:
            if not handed_back:  # claimed, vanished, failed to claim: never left handed out
                self.ctx.tracker.forget(ready.path)

    def _take_ready(self, ready: Ready) -> bool:
        """Returns True when the file was handed back to the tracker (``not_yet``)."""
        layout = self.ctx.layout
        rel = layout.relative(ready.path)
        if rel is None or self.ctx.stopping():
            return False
        try:  # its folder, reached without following a link (a sub-folder swapped for one)
            folder = folder_fd(layout.inbox / rel.parent, layout.inbox, create=False)
        except OSError as exc:
            log.debug("not taking %s: %s", shown(rel), exc)
            return False
        try:
            return self._take_from(ready, rel, folder)
        finally:
            os.close(folder)

    def _take_from(self, ready: Ready, rel: Path, folder: int) -> bool:
        ctx, path = self.ctx, ready.path
        input_error: BgremoveError | None = None
        content: Content | None = None
        st: os.stat_result | None = None
        try:
            content, input_error, st = read_content(path, ctx.config, folder)
        except UnsafeInputError as exc:
            input_error = exc
        except FileNotFoundError:
            return False
        except OSError as exc:
            input_error = UnreadableImageError(f"{shown(path)}: cannot read: "
                                               f"{exc.strerror or exc}",
                                               hint="check the file's permissions")
        if input_error is not None and not ready.settled \
                and not isinstance(input_error, (ImageTooLargeError, UnsafeInputError)):
            self._not_yet(ready, rel)
            return True
        try:
            st = st or os.lstat(path.name, dir_fd=folder)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (ready.size, ready.mtime_ns):
            self._not_yet(ready, rel, decode_failed=False)
            return True
        try:
            claimed = ctx.claims.claim(Path(path.name), rel, src_dir_fd=folder)
        except OSError as exc:
            if path not in self.unclaimable:  # a rescan finds it again: say so once
                log.error("cannot take %s (moving it into the claim folder failed: %s); it "
                          "stays in INBOX", shown(rel), exc.strerror or exc,
                          extra={"event": "warning", "input": shown(rel)})
            self.unclaimable.add(path)
            return False
        self.unclaimable.discard(path)
        ctx.tracker.forget(path)
        if claimed is None:
            log.debug("%s was taken by another daemon", shown(rel))
            return False
        if content is not None and not _same_file(claimed, st):
            content = None  # swapped since it was read: read what was claimed
        self.jobs.process(claimed, rel, input_error, content)
        return False

    def _not_yet(self, ready: Ready, rel: Path, *, decode_failed: bool = True) -> None:
        if ready.early:
            log.debug("%s arrived incomplete (still being written): waiting until it stays "
                      "unchanged", shown(rel))
        self.ctx.tracker.not_yet(ready, decode_failed=decode_failed)


def _same_file(path: Path, st: os.stat_result | None) -> bool:
    """Whether ``path`` (not followed) is the file ``st`` was taken from."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return st is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
