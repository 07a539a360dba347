"""The WaveSpeed API as the pipeline's remote stage: upload + submit, poll, download.

``send`` uploads the prepared bytes and submits once (sync: the submit waits for the
task; poll: it returns with the task's id), calling ``hooks.on_submit`` just before
each submit leaves and ``hooks.on_task`` as soon as the id is known. A resumed task
(``hooks.resume_task``) is neither uploaded nor submitted again; a submit whose answer
was lost in a crash (``hooks.lost_submit``) is first looked up in the service's list.
``poll`` asks once and sets when to ask next (``TaskWait``), so thousands of tasks
wait in the pipeline's poller without a thread each; ``fetch`` downloads the result
within the output limits. Retries, the deadline and the cancel token work per call as
in ``WaveSpeedClient``; ``run`` does the three in a row for one image (``cut_out``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgremove.contract import Result
from bgremove.stages._remote import Call
from bgremove.wavespeed._client import Submitted

if TYPE_CHECKING:
    from bgremove.contract import JobHooks, Prepared
    from bgremove.wavespeed._answers import Prediction
    from bgremove.wavespeed._backend import WaveSpeedBackend
    from bgremove.wavespeed._client import TaskWait
    from bgremove.wavespeed._http import CallContext


@dataclass
class _State:
    """A task's own state at the remote stage."""

    ctx: CallContext
    prediction: Prediction | None = None  # completed: ready to download
    waiting: TaskWait | None = None
    done_at: float = 0.0  # the client's clock when the task was seen completed


class WaveSpeedRemote:
    """The ``Remote`` of a ``WaveSpeedBackend`` (its client, its wait mode). Thread-safe."""

    name = "wavespeed"
    threads: int | None = None

    def __init__(self, backend: WaveSpeedBackend) -> None:
        self.client = backend.client
        self.wants_sync = backend.wait_mode == "sync"

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
        client = self.client
        ctx = client.context(hooks.cancel)
        call = Call(prepared, hooks, state=_State(ctx))
        hooks.check_cancel()
        if hooks.resume_task:
            # judged by the image itself (what was uploaded had at most its pixels)
            ctx.upload_pixels = prepared.size[0] * prepared.size[1]
            hooks.report("wait", 0.3)
            self._waiting(call, client.waiting(hooks.resume_task, ctx=ctx, poll_first=True))
            return call
        upload = prepared.upload
        ctx.upload_pixels = upload.size[0] * upload.size[1]
        hooks.report("upload", 0.0)
        if hooks.lost_submit:
            sent_at, url = hooks.lost_submit
            hooks.report("wait", 0.3)
            found = client.find_lost_task(url, upload.data, sent_at, ctx=ctx,
                                          known=hooks.known_tasks)
            if found is not None:
                self._submitted(call, Submitted(found, None, poll_first=True))
                return call
        url = client.upload(upload.data, upload.filename, upload.content_type, ctx=ctx)
        hooks.report("upload", 0.3)
        hooks.check_cancel()
        hooks.report("wait", 0.3)
        self._submitted(call, client.submit_task(url, sync=sync, ctx=ctx, upload=upload.data,
                                                 on_submit=hooks.on_submit,
                                                 known=hooks.known_tasks))
        return call

    def poll(self, call: Call) -> None:
        state: _State = call.state
        assert state.waiting is not None
        prediction = state.waiting.poll(_scaled(call.hooks, "wait", 0.3, 0.8))
        if prediction is None:
            call.due = state.waiting.delay
        else:
            self._completed(call, prediction)

    def fetch(self, call: Call) -> Result:
        state: _State = call.state
        assert state.prediction is not None
        hooks = call.hooks
        hooks.report("wait", 0.8)
        hooks.check_cancel()
        hooks.report("download", 0.8)
        # How long a result waited for a free finish pool is this machine's time, not the
        # service's: it does not count against the image's deadline (the task is paid for).
        state.ctx.deadline.extend(self.client.requester.clock() - state.done_at)
        data = self.client.download_output(state.prediction, ctx=state.ctx)
        hooks.report("download", 0.95)
        return Result(backend=self.name, data=data,
                      max_pixels=self.client.output_limits(state.ctx).max_pixels,
                      task_id=state.prediction.id, requests=state.ctx.requests)

    def run(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Result:
        """``send``, ``poll`` until done and ``fetch``, on this thread (one image)."""
        call = self.send(prepared, hooks, sync=sync)
        state: _State = call.state
        if state.waiting is not None:
            self._completed(call, state.waiting.until_done(_scaled(hooks, "wait", 0.3, 0.8)))
        return self.fetch(call)

    def _submitted(self, call: Call, submitted: Submitted) -> None:
        state: _State = call.state
        call.task_id = submitted.prediction.id
        waiting = self.client.follow(submitted, ctx=state.ctx, on_task=call.hooks.on_task)
        if waiting is None:
            self._completed(call, submitted.prediction)
        else:
            self._waiting(call, waiting)

    def _completed(self, call: Call, prediction: Prediction) -> None:
        state: _State = call.state
        state.prediction, state.waiting, call.due = prediction, None, None
        state.done_at = self.client.requester.clock()

    def _waiting(self, call: Call, waiting: TaskWait) -> None:
        state: _State = call.state
        call.task_id = waiting.task_id
        state.waiting, call.due = waiting, waiting.delay


def _scaled(hooks: JobHooks, stage: str, start: float, end: float) -> Callable[[float], None]:
    def report(fraction: float) -> None:
        hooks.report(stage, start + (end - start) * min(max(fraction, 0.0), 1.0))

    return report
