"""One image in, one cut-out out: the job the CLI, the daemon and the plug-in share.

``remove_file`` loads and orients the input, asks a backend for the alpha
mask, applies it to the original pixels and writes the result atomically, so
an interrupted job never leaves a truncated output.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import BgremoveError

if TYPE_CHECKING:

    from bgremove.config import Config, OutputConfig
    from bgremove.contract import Backend, JobHooks
    from bgremove.imaging import SourceImage


@dataclass(frozen=True)
class JobResult:
    """The outcome of one file, as ``--json`` and the daemon's log report it."""

    input: Path
    output: Path | None
    status: str  # "ok", "skipped" (its result was already there) or "failed"
    error: BgremoveError | None
    seconds: float
    task_id: str | None = None
    requests: int = 0
    warning: str | None = None  # e.g. imaging.NO_SUBJECT_WARNING: written, but worth a look

    def as_dict(self) -> dict[str, object]:
        return {
            "input": str(self.input),
            "output": str(self.output) if self.output else None,
            "status": self.status,
            "error": str(self.error) if self.error else None,
            "error_kind": self.error.kind if self.error else None,
            "seconds": round(self.seconds, 3),
            "task_id": self.task_id,
            "warning": self.warning,
        }


def output_path_for(src: Path, out_dir: Path | None, output: OutputConfig) -> Path:
    """``DIR/<stem>.<ext>``, or ``<stem><suffix>.<ext>`` beside the input without a folder."""
    from bgremove.imaging import extension_for

    ext = extension_for(output.format)
    if out_dir is None:
        return src.with_name(f"{src.stem}{output.suffix}{ext}")
    return out_dir / f"{src.stem}{ext}"


def remove_file(
    src: Path,
    dst: Path,
    backend: Backend,
    config: Config,
    hooks: JobHooks | None = None,
    *,
    source: SourceImage | None = None,
) -> JobResult:
    """Cut out ``src`` into ``dst``; raises ``BgremoveError`` on failure.

    ``source`` is ``src`` already decoded by the caller (the daemon decodes each
    file to know it is complete), so it is not decoded a second time.
    """
    from bgremove.contract import JobHooks
    from bgremove.imaging import (
        NO_SUBJECT_WARNING,
        compose_output,
        estimate_foreground,
        fit_alpha,
        has_subject,
        load_image,
        save_image,
    )

    hooks = hooks or JobHooks()
    started = time.monotonic()
    hooks.report("prepare", 0.0)
    if source is None:
        source = load_image(src, max_pixels=config.input.max_pixels)
    hooks.check_cancel()
    if source.original is not None:
        hooks = dataclasses.replace(hooks, original=source.original)
    cutout = backend.cut_out(source.image, hooks)
    # No cancel check from here on: the cut-out is done (and maybe paid for), so keep it.
    hooks.report("compose", 0.95)
    alpha = fit_alpha(cutout.alpha, source.image.size)
    if config.output.foreground and not config.output.mask_only:
        source.image = estimate_foreground(source.image, alpha, inplace=True)
        source.deep = None  # the estimate is made on the 8-bit pixels: the output is 8-bit
    result = compose_output(source, alpha, config.output)
    exif = None if config.output.strip_metadata else source.exif
    save_image(result, dst, fmt=config.output.format, icc_profile=source.icc_profile, exif=exif)
    hooks.report("compose", 1.0)
    # Written all the same (it was paid for), but said: an empty cut-out is rarely wanted.
    warning = None if has_subject(alpha) else NO_SUBJECT_WARNING
    return JobResult(
        input=src,
        output=dst,
        status="ok",
        error=None,
        seconds=time.monotonic() - started,
        task_id=cutout.task_id,
        requests=cutout.requests,
        warning=warning,
    )
