"""The account's recent tasks, and their results fetched again (``bgremove tasks``/``fetch``).

The service keeps tasks and their outputs 7 days. ``recent_tasks`` joins its
list with this machine's task log (``bgremove.tasklog``): which input a task was
for, and whether its result was saved here. ``fetch_result`` downloads a
finished task's output again (after a crash that lost a journal, or for a
task run in the web playground) and, given the original image, applies it
the way ``bgremove remove`` does.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgremove.errors import APIStatusError, InputError, ProtocolError, ServiceError

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Prepared
    from bgremove.wavespeed import WaveSpeedClient

#: How far back the service keeps tasks.
KEPT_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class TaskRow:
    """One of the account's tasks, with what this machine knows of it."""

    id: str
    created_at: float | None
    status: str
    input: str | None  # the input file, when this machine ran the task
    output: str | None  # where its result was saved here, when it still is

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": _iso(self.created_at), "status": self.status,
                "input": self.input, "saved": self.output is not None, "output": self.output}


def recent_tasks(client: WaveSpeedClient) -> list[TaskRow]:
    """The background-removal tasks of the last 7 days, newest first."""
    from bgremove import tasklog
    from bgremove.wavespeed._reconcile import NO_LIST

    try:
        listing = client.list_predictions(created_after=client.wall_clock() - KEPT_SECONDS)
    except APIStatusError as exc:
        if exc.status_code not in NO_LIST:
            raise
        raise ServiceError(f"the service offers no task list (HTTP {exc.status_code})",
                           hint="check wavespeed.base_url points at the WaveSpeed API") from None
    known = tasklog.read()
    rows = []
    for item in listing.items:
        record = known.get(item.prediction.id)
        output = record.output if record and record.output else None
        rows.append(TaskRow(item.prediction.id, item.created_at, item.prediction.status,
                            record.input if record else None,
                            output if output and os.path.exists(output) else None))
    return rows


def fetch_result(client: WaveSpeedClient, config: Config, task_id: str, *,
                 out_dir: Path | None, input: Path | None) -> Path:
    """Download the result of ``task_id`` again; return the file written.

    Without ``input``: the service's cut-out as ``<task id>.png`` in ``out_dir``
    (default: the current folder). With it: the mask applied to that original
    as ``remove`` would (same output name and settings).
    """
    from bgremove import tasklog
    from bgremove.contract import Result
    from bgremove.imaging import decode_image, finish_file, prepare_file, save_image
    from bgremove.jobs import output_path_for
    from bgremove.wavespeed._errors import task_error

    ctx = client.context()
    # Prepared as ``remove`` prepares it: the same choice of upload, so a mask made from the
    # file's own stored pixels is turned the same way here.
    prepared = prepare_file(input, max_pixels=config.input.max_pixels,
                            max_upload_bytes=config.wavespeed.max_upload_bytes,
                            max_upload_side=config.wavespeed.max_upload_side) if input else None
    if input is not None and prepared is not None:
        _check_recorded_input(input, prepared, task_id)
    prediction = client.get_result(task_id, ctx=ctx)
    if prediction.status != "completed":
        if prediction.done:
            raise task_error(task_id, prediction.status, prediction.code, prediction.error)
        raise ServiceError(f"task {task_id} is still {prediction.status}: it has no result yet",
                           hint="try again when it has finished", task_id=task_id)
    if prepared is not None:  # the result is judged by the original's size
        ctx.upload_pixels = prepared.size[0] * prepared.size[1]
    data = client.download_output(prediction, ctx=ctx)
    max_pixels = client.output_limits(ctx).max_pixels
    if prepared is None or input is None:
        dst = (out_dir or Path.cwd()) / f"{task_id}.png"
        try:
            image = decode_image(data, max_pixels=max_pixels)
        except ValueError as exc:  # the result is untrusted input: one line, no traceback
            detail = str(exc).removeprefix("cannot decode the image: ")
            raise ProtocolError(f"task {task_id}: its result cannot be decoded: {detail}",
                                hint="try again later; if it persists, report the task id",
                                task_id=task_id) from None
        save_image(image, dst, fmt="png")
    else:
        _check_shape(input, prepared, data, task_id)
        dst = output_path_for(input, out_dir, config.output)
        finish_file(prepared, Result("wavespeed", data=data, max_pixels=max_pixels,
                                     task_id=task_id), input, dst, config.output)
    tasklog.record(task_id, output=dst)
    return dst


def _check_recorded_input(input: Path, prepared: Prepared, task_id: str) -> None:
    """Refuse ``input`` when the task log holds the sha256 of the file the task was made
    from and it is not this file's (another photo of the same shape, or an edited one)."""
    from bgremove import tasklog

    known = tasklog.read().get(task_id)
    if known is None or known.sha256 is None or known.sha256 == prepared.digest:
        return
    made_from = f" ({known.input})" if known.input else ""
    raise InputError(f"{input} is not the file task {task_id} was made from{made_from}: "
                     "its content differs",
                     hint="give that file as it was, or leave out --input for the cut-out alone")


def _check_shape(input: Path, prepared: Prepared, data: bytes, task_id: str) -> None:
    """Refuse a result whose shape (turned upright) is not the input's: another image's.
    The only check left for a task this machine did not record (or recorded without its
    input's sha256)."""
    from PIL import Image

    from bgremove.imaging import pillow_scope

    try:
        with pillow_scope(), Image.open(io.BytesIO(data), formats=("PNG", "WEBP")) as result:
            width, height = result.size  # the header only: finish_file decodes it
    except Exception:
        return  # not an image we read: finish_file says so
    if prepared.orientation >= 5:
        width, height = height, width
    want_w, want_h = prepared.size
    if abs(width / height - want_w / want_h) > 0.01 * want_w / want_h:
        raise InputError(f"{input} is {want_w}x{want_h} but the result of task {task_id} is "
                         f"{width}x{height}: it is not that task's input",
                         hint="give the image the task was run on, or leave out --input")


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
