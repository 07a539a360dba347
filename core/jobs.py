"""One image's outcome (``JobResult``) and its output name. The job itself runs through
the stages (``bgremove.stages``; one file: ``bgremove.stages.remove_file``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import BgremoveError

if TYPE_CHECKING:
    from bgremove.config import OutputConfig


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
