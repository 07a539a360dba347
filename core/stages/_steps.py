"""A job's steps, one call each: what ``Pipeline`` runs on its pools and ``Alone`` runs on
the calling thread, so both do exactly the same (cancel checks, progress, ``before_send``,
the upload's bytes dropped once sent, a failing ``failed`` logged).

    job_hooks    the hooks its steps get (the runner's cancel and the job's own)
    prepare      job.prepare()                     CPU
    send         job.before_send(), remote.send()  IO: upload and submit
    warm         job.warm(), if it has one         CPU, while the task waits
    poll         remote.poll()                     IO: one short question
    remote.fetch                                   IO: the download
    finish       job.finish()                      CPU
    fail         job.failed(error)                 the job's one end when a step failed
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from bgremove.contract import CancelToken, Upload

if TYPE_CHECKING:
    from bgremove.contract import JobHooks, Prepared, Result
    from bgremove.stages._pipeline import Job
    from bgremove.stages._remote import Call, Remote

log = logging.getLogger(__name__)

#: The stages of a job the service has (or may have) taken: it may be billed. From the
#: start of its upload (``sending``) to the end of its ``finishing``.
AT_SERVICE = ("sending", "waiting", "ready", "fetching", "finishing")
#: The longest a waiting caller goes without looking at its flags: a Ctrl-C that lands just
#: before a blocking wait begins does not wake it (Python only flags it).
WAKE_SECONDS = 0.25


def job_hooks(job: Job, cancel: CancelToken) -> JobHooks:
    """The job's hooks as its steps get them: cancelled by ``cancel`` (the runner's) or by
    the job's own token, whichever comes first."""
    own = job.hooks.cancel
    token = cancel if own is None or own is cancel else CancelToken.either(cancel, own)
    return dataclasses.replace(job.hooks, cancel=token)


def prepare(job: Job, hooks: JobHooks) -> Prepared:
    hooks.check_cancel()
    hooks.report("prepare", 0.0)
    prepared = job.prepare()
    hooks.check_cancel()
    return prepared


def send(job: Job, remote: Remote, prepared: Prepared, hooks: JobHooks, *,
              sync: bool) -> Call:
    """Upload and submit. The call's ``prepared`` has no upload bytes left: they are needed
    no more once sent (the finish re-reads the input)."""
    hooks.check_cancel()
    before_send = getattr(job, "before_send", None)
    if before_send is not None:
        before_send()
    call = remote.send(prepared, hooks, sync=sync)
    upload = prepared.upload
    call.prepared = dataclasses.replace(
        prepared, upload=Upload(b"", upload.content_type, upload.filename, upload.size))
    return call


def poll(remote: Remote, call: Call) -> None:
    call.hooks.check_cancel()
    remote.poll(call)


def warm(job: Job, prepared: Prepared) -> None:
    """``job.warm(prepared)``: work its finish needs that does not need the result."""
    try:
        job.warm(prepared)  # type: ignore[attr-defined]
    except Exception:  # the finish does the same work again and reports what fails
        log.debug("warming a job failed", exc_info=True)


def finish(job: Job, prepared: Prepared, result: Result, hooks: JobHooks) -> None:
    # No cancel check from here on: the result is paid for and downloaded, so keep it.
    hooks.report("compose", 0.95)
    job.finish(prepared, result)


def fail(job: Job, error: BaseException) -> None:
    """``job.failed(error)``; a bug in that callback is logged, never raised to the runner."""
    try:
        job.failed(error)
    except Exception:
        log.exception("a job's failed() raised")
