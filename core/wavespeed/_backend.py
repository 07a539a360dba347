"""The ``wavespeed`` backend: an image in, the service's alpha mask out.

One ``cut_out`` = encode (no metadata; a JPEG input's own bytes minus its
metadata segments instead when within the limits) -> upload -> submit -> wait
-> download -> decode the alpha (turned upright when the stored pixels went up). The
steps are ``WaveSpeedRemote``'s (``bgremove.wavespeed._remote``), which the pipeline
(``bgremove.stages``) drives a step at a time for many images; ``cut_out`` runs them in
a row on its thread.
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
from typing import TYPE_CHECKING, Any

import httpx

from bgremove.choices import WAIT_MODES
from bgremove.contract import Cutout, JobHooks
from bgremove.errors import ConfigError
from bgremove.wavespeed._client import WaveSpeedClient
from bgremove.wavespeed._http import ClientStats
from bgremove.wavespeed._remote import WaveSpeedRemote

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
        self.remote = WaveSpeedRemote(self)

    def __repr__(self) -> str:
        return f"WaveSpeedBackend(wait_mode={self.wait_mode!r}, client={self.client!r})"

    @property
    def stats(self) -> ClientStats:
        """Counters over every image: requests, retries, bytes sent and received."""
        return self.client.stats

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        """One image on this thread: the remote stage's three steps in a row, then the
        mask decoded (and turned upright when the stored pixels went up)."""
        from bgremove import imaging
        from bgremove.stages import prepare_image

        hooks = hooks or JobHooks()
        hooks.check_cancel()
        if not hooks.resume_task:
            hooks.report("upload", 0.0)
        prepared = prepare_image(image, max_upload_bytes=self.config.wavespeed.max_upload_bytes,
                                 max_upload_side=self.config.wavespeed.max_upload_side,
                                 encode=not hooks.resume_task)
        result = self.remote.run(prepared, hooks, sync=self.wait_mode == "sync")
        alpha = imaging.result_alpha(result, prepared.orientation)
        log.debug("task %s: %d requests", result.task_id, result.requests)
        return Cutout(alpha=alpha, backend=self.name, task_id=result.task_id,
                      requests=result.requests)

    def close(self) -> None:
        self.client.close()

