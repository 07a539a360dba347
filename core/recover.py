"""The account's recent tasks, and their results fetched again (``bgremove tasks``/``fetch``).

The service keeps tasks and their outputs 7 days. ``recent_tasks`` joins its
list with this machine's task log (``bgremove.tasklog``): which input a task was
for, and whether its result was saved here. ``fetch_result`` downloads a
finished task's output again (after a crash that lost a journal, or for a
task run in the web playground) and, given the original image, applies it
the way ``bgremove remove`` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgremove.errors import APIStatusError, InputError, ServiceError

if TYPE_CHECKING:
    from bgremove.config import Config
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
    from bgremove.imaging import (
        alpha_from_bytes,
        apply_orientation,
        compose,
        decode_image,
        fit_alpha,
        load_image,
        save_image,
        sendable_original,
    )
    from bgremove.jobs import output_path_for
    from bgremove.wavespeed._errors import task_error

    ctx = client.context()
    source = load_image(input, max_pixels=config.input.max_pixels) if input else None
    prediction = client.get_result(task_id, ctx=ctx)
    if prediction.status != "completed":
        if prediction.done:
            raise task_error(task_id, prediction.status, prediction.code, prediction.error)
        raise ServiceError(f"task {task_id} is still {prediction.status}: it has no result yet",
                           hint="try again when it has finished", task_id=task_id)
    if source is not None:  # the result is judged by the original's size
        ctx.upload_pixels = source.image.width * source.image.height
    data = client.download_output(prediction, ctx=ctx)
    max_pixels = client.output_limits(ctx).max_pixels
    alpha = alpha_from_bytes(data, max_pixels=max_pixels)
    if source is not None:
        # Made from the file's own stored pixels when ``remove`` would send them: turned the
        # same way here.
        sent = sendable_original(source.original, source.image.size,
                                 max_bytes=config.wavespeed.max_upload_bytes,
                                 max_side=config.wavespeed.max_upload_side)
        if sent is not None:
            alpha = apply_orientation(alpha, sent.orientation)
    if source is None or input is None:
        dst = (out_dir or Path.cwd()) / f"{task_id}.png"
        save_image(decode_image(data, max_pixels=max_pixels), dst, fmt="png")
    else:
        width, height = source.image.size
        if abs(alpha.width / alpha.height - width / height) > 0.01 * width / height:
            raise InputError(f"{input} is {width}x{height} but the result of task {task_id} is "
                             f"{alpha.width}x{alpha.height}: it is not that task's input",
                             hint="give the image the task was run on, or leave out --input")
        dst = output_path_for(input, out_dir, config.output)
        save_image(compose(source, fit_alpha(alpha, source.image.size), config.output), dst,
                   fmt=config.output.format, icc_profile=source.icc_profile)
    tasklog.record(task_id, output=dst)
    return dst


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
