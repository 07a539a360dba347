"""One input file to one output file, as a pipeline job.

``FileJob.prepare`` reads and checks the file and makes its upload
(``imaging.prepare_file``); ``finish`` re-reads it, applies the result and writes
``dst`` atomically (``imaging.finish_file``, which refuses a file changed meanwhile).
The job's one outcome, a ``JobResult``, goes to ``done``: the batch and the daemon
decide what to do with it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgremove.contract import JobHooks, Prepared, Result
from bgremove.errors import BgremoveError, CancelledError

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from bgremove.config import Config, OutputConfig
    from bgremove.jobs import JobResult

log = logging.getLogger(__name__)


class FileJob:
    """``src`` cut out into ``dst`` (see the module docstring)."""

    def __init__(self, src: Path, dst: Path, config: Config, *,
                 done: Callable[[JobResult], None], hooks: JobHooks | None = None) -> None:
        self.src = src
        self.dst = dst
        self.config = config
        self.hooks = hooks or JobHooks()
        self._done = done
        self._started = time.monotonic()

    def prepare(self) -> Prepared:
        self._started = time.monotonic()
        return prepare_file(self.src, max_pixels=self.config.input.max_pixels,
                            max_upload_bytes=self.config.wavespeed.max_upload_bytes,
                            max_upload_side=self.config.wavespeed.max_upload_side)

    def finish(self, prepared: Prepared, result: Result) -> None:
        from bgremove.jobs import JobResult

        warning = finish_file(prepared, result, self.src, self.dst, self.config.output)
        self._done(JobResult(self.src, self.dst, "ok", None, time.monotonic() - self._started,
                             result.task_id, result.requests, warning))

    def failed(self, error: BaseException) -> None:
        from bgremove.jobs import JobResult

        problem = job_error(self.src, error)
        self._done(JobResult(self.src, None, "failed", problem, time.monotonic() - self._started,
                             getattr(problem, "task_id", None)))


def job_error(src: Path, error: BaseException) -> BgremoveError:
    """``error`` as the one ``BgremoveError`` a file's result reports; a bug is one line too
    (it must cost one file, not the batch), its traceback in the debug log."""
    if isinstance(error, BgremoveError):
        return error
    if isinstance(error, KeyboardInterrupt):
        return CancelledError("cancelled")
    from bgremove.logs import redact

    log.debug("unexpected error on %s", src, exc_info=error)
    # any library's text, printed and put in --json output: never with the key in it
    return BgremoveError(redact(f"{src}: internal error: {type(error).__name__}: {error}"),
                         hint="please report it with --log-level debug output")


# -- stand-ins for imaging.prepare_file / finish_file (being written; same signatures) --------

def prepare_file(path: Path, *, max_pixels: int, max_upload_bytes: int, max_upload_side: int,
                 data: bytes | None = None) -> Prepared:
    import dataclasses

    from bgremove.imaging import load_image
    from bgremove.stages._image import prepare_image

    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            data = None  # load_image says what is wrong, in its words
    source = load_image(path, max_pixels=max_pixels, data=data)
    prepared = prepare_image(source.image, max_upload_bytes=max_upload_bytes,
                             max_upload_side=max_upload_side, original=source.original)
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    return dataclasses.replace(prepared, digest=digest)


def finish_file(prepared: Prepared, result: Result, src: Path, dst: Path,
                output: OutputConfig, *, data: bytes | None = None) -> str | None:
    from bgremove.imaging import (
        compose_output,
        estimate_foreground,
        fit_alpha,
        has_subject,
        load_image,
        save_image,
    )
    from bgremove.jobs import NO_SUBJECT_WARNING

    source = load_image(src, max_pixels=max(1, prepared.size[0] * prepared.size[1]), data=data)
    alpha = fit_alpha(result_alpha(result, prepared.orientation), source.image.size)
    if output.foreground and not output.mask_only:
        source.image = estimate_foreground(source.image, alpha, inplace=True)
        source.deep = None
    composed = compose_output(source, alpha, output)
    exif = None if output.strip_metadata else source.exif
    save_image(composed, dst, fmt=output.format, icc_profile=source.icc_profile, exif=exif)
    return None if has_subject(alpha) else NO_SUBJECT_WARNING


def result_alpha(result: Result, orientation: int) -> Image.Image:
    """The result's mask ("L"), upright: the service's file decoded within its limits, or
    the mask made here; turned by the input's EXIF ``orientation``."""
    from bgremove.imaging import alpha_from_bytes, apply_orientation

    if result.alpha is not None:
        alpha = result.alpha
    else:
        assert result.data is not None
        alpha = alpha_from_bytes(result.data, max_pixels=result.max_pixels)
    return apply_orientation(alpha, orientation)
