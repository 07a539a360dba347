"""The ``wavespeed`` backend: an image in, the service's alpha mask out.

One ``cut_out`` = encode (no metadata; a JPEG input's own bytes minus its
metadata segments instead when within the limits) -> upload -> submit -> wait
-> download -> decode the alpha (turned upright when the stored pixels went up).
``wavespeed.wait`` picks how the result is awaited:

``sync`` (the CLI's default)
    one blocking submit (``enable_sync_mode``): 4 requests per image (upload
    ticket, PUT, submit, download). If the service's sync wait ends before
    the task (a 504 naming the task, or code 5004 / "timed out"), the task
    is polled by id instead of failing.
``poll`` (what the hot-folder daemon asks for)
    an async submit, ``hooks.on_task(id)`` so a journal can record the task
    before any waiting, then polling ``poll.initial`` x ``poll.factor`` up
    to ``poll.max``: 5+ requests per image.

``on_task`` runs in both modes as soon as the task id is known (in sync mode
that is when the submit answers). A sync submit cannot be interrupted by the
cancel token; cancelling takes effect at the next step.

``hooks.resume_task`` skips upload and submit and waits on that task; a task
the service no longer knows raises ``TaskFailedError`` (status
``not_found``) so the caller can submit again. ``hooks.on_submit`` runs
just before each submit leaves (a journal records it); ``hooks.lost_submit``
(such a record whose answer never came: a crash) makes the backend look that
task up in the service's list before uploading anything, then go on with it,
or submit once when the service surely has none.

The submit policy (never resubmit when a task may already exist and be
billed) is written down in ``bgremove.retry``. The client lives in
``bgremove.wavespeed._client`` (API calls), ``bgremove.wavespeed._http`` (the retry
loop), ``bgremove.wavespeed._answers`` (reading answers) and
``bgremove.wavespeed._errors`` (the status table); a lost submit answer is
resolved in ``bgremove.wavespeed._reconcile``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from bgremove.choices import WAIT_MODES
from bgremove.contract import Cutout, JobHooks
from bgremove.errors import ConfigError
from bgremove.wavespeed._answers import Prediction
from bgremove.wavespeed._client import WaveSpeedClient
from bgremove.wavespeed._http import CallContext, ClientStats

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.config import Config

log = logging.getLogger(__name__)



class WaveSpeedBackend:
    """The Backend protocol on the WaveSpeedAI API. Thread-safe: one instance serves N threads."""

    name = "wavespeed"

    def __init__(self, config: Config, wait_mode: str | None = None, *,
                 http: httpx.Client | None = None, **client_options: Any) -> None:
        mode = wait_mode or config.wavespeed.wait
        if mode not in WAIT_MODES:
            raise ConfigError(f"unknown wait mode {mode!r}", hint="use sync or poll")
        self.config = config
        self.wait_mode = mode
        client_options.setdefault("max_connections",
                                  max(config.concurrency, config.watch.concurrency))
        self.client = WaveSpeedClient(config.wavespeed, http=http, **client_options)

    def __repr__(self) -> str:
        return f"WaveSpeedBackend(wait_mode={self.wait_mode!r}, client={self.client!r})"

    @property
    def stats(self) -> ClientStats:
        """Counters over every image: requests, retries, bytes sent and received."""
        return self.client.stats

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        from bgremove import imaging

        hooks = hooks or JobHooks()
        ctx = self.client.context(hooks.cancel)
        hooks.check_cancel()
        # The file's own bytes when they fit: the mask then comes back as the pixels are
        # stored and is turned upright below. The same choice on a resume (same file, same
        # limits), so a resumed task's mask is turned the same way.
        original = imaging.sendable_original(
            hooks.original, image.size, max_bytes=self.config.wavespeed.max_upload_bytes,
            max_side=self.config.wavespeed.max_upload_side)
        orientation = original.orientation if original is not None else 1
        if hooks.resume_task:
            # judged by the image itself (what was uploaded had at most its pixels)
            ctx.upload_pixels = image.width * image.height
            prediction = self._resume(hooks.resume_task, ctx, hooks)
        else:
            hooks.report("upload", 0.0)
            if original is not None:
                upload = original.as_upload()
            else:
                upload = imaging.encode_for_upload(
                    image, max_bytes=self.config.wavespeed.max_upload_bytes,
                    max_side=self.config.wavespeed.max_upload_side)
            ctx.upload_pixels = upload.size[0] * upload.size[1]
            hooks.check_cancel()
            found = self._find_lost(upload.data, ctx, hooks) if hooks.lost_submit else None
            if found is not None:
                prediction = found
            else:
                url = self.client.upload(upload.data, upload.filename, upload.content_type,
                                         ctx=ctx)
                hooks.report("upload", 0.3)
                hooks.check_cancel()
                hooks.report("wait", 0.3)
                prediction = self.client.run(url, sync=self.wait_mode == "sync", ctx=ctx,
                                             on_task=hooks.on_task,
                                             progress=_scaled(hooks, "wait", 0.3, 0.8),
                                             upload=upload.data, on_submit=hooks.on_submit,
                                             known=hooks.known_tasks)
        hooks.report("wait", 0.8)
        hooks.check_cancel()
        hooks.report("download", 0.8)
        data = self.client.download_output(prediction, ctx=ctx)
        hooks.report("download", 0.95)
        alpha = imaging.alpha_from_bytes(
            data, max_pixels=self.client.output_limits(ctx).max_pixels)
        alpha = imaging.apply_orientation(alpha, orientation)
        log.debug("task %s: %d requests", prediction.id, ctx.requests)
        return Cutout(alpha=alpha, backend=self.name, task_id=prediction.id,
                      requests=ctx.requests)

    def _find_lost(self, data: bytes, ctx: CallContext, hooks: JobHooks) -> Prediction | None:
        """A crash during a submit: its task (waited on), or None when none was created."""
        assert hooks.lost_submit is not None
        sent_at, url = hooks.lost_submit
        hooks.report("wait", 0.3)
        found = self.client.find_lost_task(url, data, sent_at, ctx=ctx, known=hooks.known_tasks)
        if found is None:
            return None
        if hooks.on_task is not None:
            hooks.on_task(found.id)
        if found.status == "completed":
            return found
        return self.client.wait(found.id, ctx=ctx, poll_first=True,
                                progress=_scaled(hooks, "wait", 0.3, 0.8))

    def _resume(self, task_id: str, ctx: CallContext, hooks: JobHooks) -> Prediction:
        """Wait on a task submitted before (a restart); unknown -> TaskFailedError not_found."""
        hooks.report("wait", 0.3)
        return self.client.wait(task_id, ctx=ctx, poll_first=True,
                                progress=_scaled(hooks, "wait", 0.3, 0.8))

    def close(self) -> None:
        self.client.close()


def _scaled(hooks: JobHooks, stage: str, start: float, end: float) -> Callable[[float], None]:
    def report(fraction: float) -> None:
        hooks.report(stage, start + (end - start) * min(max(fraction, 0.0), 1.0))

    return report

