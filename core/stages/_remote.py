"""The remote stage's contract: what the pipeline asks of a backend, a step at a time.

A ``Remote`` turns a ``Prepared`` upload into a ``Result`` in three calls, each made
on one of the pipeline's IO threads and none of them waiting for the service:

    send(prepared, hooks, sync=)  upload and submit -> a ``Call`` (``due``: poll it then)
    poll(call)                    one short question; sets ``call.due`` again, or None: done
    fetch(call)                   download -> ``Result``

``CutoutRemote`` wraps any ``Backend`` whose mask is made here (the offline model, a
test's fake): ``send`` makes the mask from the upload's pixels and nothing is polled.
The WaveSpeed remote is ``bgremove.wavespeed.WaveSpeedRemote``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from bgremove.contract import Result

if TYPE_CHECKING:
    from bgremove.contract import Backend, JobHooks, Prepared


@dataclass
class Call:
    """One job at the remote stage."""

    prepared: Prepared
    hooks: JobHooks
    #: Seconds until the next ``poll`` is due; None: the result is ready to ``fetch``.
    due: float | None = None
    task_id: str | None = None
    state: Any = None  # the remote's own: its context, the task's wait, a mask


class Remote(Protocol):
    """A backend as the pipeline drives it (see the module docstring)."""

    name: str
    #: Whether it would rather wait in one blocking submit (the pipeline allows it only
    #: when every task in flight can have an IO thread to itself).
    wants_sync: bool
    #: The most IO threads worth giving it (None: as many as the pipeline has).
    threads: int | None

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call: ...

    def poll(self, call: Call) -> None: ...

    def fetch(self, call: Call) -> Result: ...


class CutoutRemote:
    """A ``Backend`` that makes the mask itself, no task and nothing to poll. The model sees
    the upload's pixels turned upright (a model is trained on upright photos); its mask is
    handed on as the pixels are stored, which the finish stage turns by the orientation."""

    wants_sync = False

    def __init__(self, backend: Backend, threads: int | None = None) -> None:
        self.backend = backend
        self.name = backend.name
        self.threads = threads

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
        from bgremove.imaging import apply_orientation, decode_image, undo_orientation

        hooks.check_cancel()
        upload = prepared.upload
        image = decode_image(upload.data, formats=("PNG", "JPEG"),
                             max_pixels=upload.size[0] * upload.size[1])
        if image.mode not in ("RGB", "RGBA"):  # a PNG's own bytes: grey, palette, with alpha
            alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
        cutout = self.backend.cut_out(apply_orientation(image, prepared.orientation), hooks)
        cutout = dataclasses.replace(
            cutout, alpha=undo_orientation(cutout.alpha, prepared.orientation))
        return Call(prepared, hooks, due=None, task_id=cutout.task_id, state=cutout)

    def poll(self, call: Call) -> None:  # never called: ``send`` leaves nothing to wait for
        call.due = None

    def fetch(self, call: Call) -> Result:
        cutout = call.state
        return Result(backend=cutout.backend, alpha=cutout.alpha, task_id=cutout.task_id,
                      requests=cutout.requests)


def remote_for(backend: Backend) -> Remote:
    """The remote stage of ``backend``: its own when it has one (``backend.remote``: the
    WaveSpeed API's, task by task), else its ``cut_out`` wrapped in a ``CutoutRemote``."""
    own = getattr(backend, "remote", None)
    if own is not None:
        return cast("Remote", own)
    # A mask made on this machine is CPU work: no more at once than there are cores.
    import os

    return CutoutRemote(backend, threads=os.cpu_count() or 1)
