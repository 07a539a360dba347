"""One job on the calling thread: ``remove`` of one image, the library's ``remove_file``
and the GIMP bridge.

A ``Pipeline`` hands a job from thread to thread (prepare on a CPU worker, upload and
submit on an IO thread, its polls through the poller, the finish on a CPU worker, the
outcome back to the caller); each hand-off waits for a thread to be woken, which a loaded
machine makes slow. ``Alone`` runs the same steps (``_steps``) in a row on the caller's
thread: prepare, send (a sync submit when the backend waits that way), poll each ``due``
apart, fetch, finish. Only ``warm`` (decoding the input while the task waits) runs on a
thread of its own, as the pipeline runs it on another CPU worker.

The same rules as the pipeline's, as they live in the steps and the remote: the journal
and task-log records before a submit, the one resend and the reconcile (the remote's),
each job ends exactly once (``finish``, or ``failed``). A cancel of its token ends a job
at its next step or while it waits for its next poll (a sync submit already sent is waited
for: cancelling it would not cancel the task). A Ctrl-C, on the caller's own thread here,
ends it at once wherever it is, a sync submit's wait too: the job ends as cancelled and
``KeyboardInterrupt`` goes on up (``at_service`` says whether its task may be billed).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from bgremove.contract import CancelToken
from bgremove.errors import CancelledError
from bgremove.stages import _steps

if TYPE_CHECKING:
    from bgremove.contract import Backend
    from bgremove.stages._pipeline import Job
    from bgremove.stages._remote import Remote


class Alone:
    """Runs each job it is given to its end on the calling thread (see the module
    docstring); what ``run_batch`` asks of a ``Pipeline``, for one image.

    ``backend`` as for a ``Pipeline`` (or ``remote`` given); ``cancel`` (default: a new
    token) cancels the job running, as a job's own token does.
    """

    in_flight = 1

    def __init__(self, backend: Backend | None, *, cancel: CancelToken | None = None,
                 remote: Remote | None = None) -> None:
        if remote is None:
            if backend is None:
                raise ValueError("Alone needs a backend or a remote")
            from bgremove.stages._remote import remote_for

            remote = remote_for(backend)
        self.remote = remote
        self.cancel_token = cancel or CancelToken()
        self._stage = "ended"  # of the job running, or where a Ctrl-C stopped the last one

    def start(self, job: Job) -> None:
        """Run ``job``; return once it ended (its ``finish`` returned or ``failed`` was
        called). A Ctrl-C ends it with ``failed(CancelledError)`` and is raised."""
        hooks = _steps.job_hooks(job, self.cancel_token)
        token = hooks.cancel
        assert token is not None
        remote = self.remote
        self._stage = "preparing"
        try:
            prepared = _steps.prepare(job, hooks)
            self._stage = "sending"
            if getattr(job, "warm", None) is not None:
                threading.Thread(target=_steps.warm, args=(job, prepared), name="bgremove-warm",
                                 daemon=True).start()
            call = _steps.send(job, remote, prepared, hooks, sync=remote.wants_sync)
            self._stage = "waiting"
            while call.due is not None:
                _pause(token, call.due)
                _steps.poll(remote, call)
            self._stage = "fetching"
            result = remote.fetch(call)
            self._stage = "finishing"
            _steps.finish(job, call.prepared, result, hooks)
        except Exception as exc:
            self._stage = "ended"
            _steps.fail(job, exc)
        except BaseException:  # a Ctrl-C: the job ends now, and the caller is told
            _steps.fail(job, CancelledError("cancelled"))
            raise
        else:
            self._stage = "ended"

    def at_service(self) -> int:
        """1 when a Ctrl-C stopped the last job between the start of its upload and the end
        of its finish (its task may be billed), else 0."""
        return int(self._stage in _steps.AT_SERVICE)

    def close(self, *, wait: bool = True) -> None:
        """No job runs once ``start`` returned; ``wait=False`` cancels the token anyway."""
        if not wait:
            self.cancel_token.cancel()


def run_one(job: Job, backend: Backend) -> None:
    """Run ``job`` alone on this thread; return once it ended (``finish`` or ``failed``).
    Its own cancel token cancels it."""
    Alone(backend, cancel=job.hooks.cancel).start(job)


def _pause(token: CancelToken, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``token`` is cancelled; a flagged Ctrl-C is raised
    within ``WAKE_SECONDS``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if token.wait(min(left, _steps.WAKE_SECONDS)):
            return
