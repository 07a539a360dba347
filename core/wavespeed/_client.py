"""The WaveSpeedAI HTTP client: upload, submit, wait, download, balance.

One pooled ``httpx.Client`` (HTTP/1.1 keep-alive) per ``WaveSpeedClient``,
safe to share between threads. Every call has a named timeout
(``wavespeed.timeouts``) and the calls made for one image share one
``CallContext``: its overall deadline, its cancel token and its request
count.

Retries follow ``bgremove.retry``, whose docstring holds the submit policy: a
submit is sent again only when no task can exist. A submit whose answer was
lost is looked up in the service's prediction list (``_reconcile``): its
task adopted, or the image submitted again once the service surely has
none, or ``SubmitUncertainError`` with the reason. Any error answer that
names a task, and a sync wait the service gave up on (504 with the id, code
5004), are followed by polling that task.

Layers: ``bgremove.wavespeed._http`` (headers, timeouts, the retry loop, the key
kept to the service's origin and out of every message),
``bgremove.wavespeed._answers`` (reading envelopes), ``bgremove.wavespeed._errors``
(the status table).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NoReturn

import httpx

from bgremove.errors import (
    APIStatusError,
    MissingKeyError,
    SubmitUncertainError,
)
from bgremove.logs import register_secret
from bgremove.version import __version__
from bgremove.wavespeed._answers import (
    Listed,
    ListPage,
    Prediction,
    discard,
    parse_balance,
    parse_list_page,
    parse_prediction,
    parse_submit,
    parse_ticket,
    parse_upload_url,
)
from bgremove.wavespeed._body import ACCEPT_ENCODING, OutputLimits, guard_redirect, too_large
from bgremove.wavespeed._errors import protocol_error, task_error
from bgremove.wavespeed._http import CallContext, ClientStats, Requester
from bgremove.wavespeed._reconcile import Reconciler, SentSubmit
from bgremove.wavespeed._transport import PENDING, bound_sockets, preload_tls

if TYPE_CHECKING:
    from bgremove.config import WaveSpeedConfig
    from bgremove.contract import CancelToken

log = logging.getLogger(__name__)

MODEL_PATH = "/api/v3/wavespeed-ai/image-background-remover"
TICKET_PATH = "/api/v3/media/uploads"
BINARY_UPLOAD_PATH = "/api/v3/media/upload/binary"
RESULT_PATH = "/api/v3/predictions/{id}/result"
LIST_PATH = "/api/v3/predictions"
BALANCE_PATH = "/api/v3/balance"
MODEL_ID = MODEL_PATH.removeprefix("/api/v3/")
#: Items asked for per page of the prediction list, and the most pages read.
LIST_PAGE_SIZE = 100
LIST_MAX_PAGES = 100

#: Answers to the upload ticket request meaning "this server has no direct upload".
_NO_DIRECT_UPLOAD = frozenset({404, 405, 501})


def client_os() -> str:
    if hasattr(os, "uname"):  # POSIX: what platform.system() reads, without its ~1 ms import
        return os.uname().sysname.lower() or "unknown"
    import platform

    return platform.system().lower() or "unknown"


class WaveSpeedClient:
    """A thread-safe client of the WaveSpeedAI background-remover API.

    ``http`` replaces the pooled client (tests pass one built on
    ``httpx.MockTransport``; the caller then closes it); ``sleep``, ``clock``,
    ``wall_clock`` and ``rand`` replace ``time.sleep``, ``time.monotonic``,
    ``time.time`` and the jitter source so tests do not wait.
    ``max_connections`` sizes the pool for that many threads (default 8).
    """

    def __init__(self, config: WaveSpeedConfig, *, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 max_connections: int | None = None) -> None:
        if not config.api_key:
            raise MissingKeyError()
        self.config = config
        register_secret(config.api_key)
        common = {
            "User-Agent": f"bgremove/{__version__}",
            "X-Client-Name": "bgremove",
            "X-Client-Version": __version__,
            "X-Client-OS": client_os(),
        }
        self._owns_http = http is None
        if http is None:
            size = max(8, max_connections or 8)
            limits = httpx.Limits(max_connections=size + 4, max_keepalive_connections=size,
                                  keepalive_expiry=30.0)
            http = httpx.Client(
                verify=PENDING,  # httpx's own context, made when first needed (_transport)
                follow_redirects=True,  # httpx drops Authorization on a cross-origin redirect
                limits=limits,
                timeout=httpx.Timeout(config.timeouts.result, connect=config.timeouts.connect),
                headers={"User-Agent": common["User-Agent"],
                         "Accept-Encoding": ACCEPT_ENCODING},
                event_hooks={"response": [guard_redirect]},
            )
            bound_sockets(http)  # direct and proxied: every socket wait within the deadline
            if config.base_url.lower().startswith("https:"):
                preload_tls()
        self._http = http
        self._requests = Requester(config, http, key=config.api_key, common_headers=common,
                                   sleep=sleep, clock=clock, wall_clock=wall_clock, rand=rand)
        self._call = self._requests.call
        self._url = self._requests.url
        self._clock = clock
        self._wall = wall_clock
        self._reconciler = Reconciler(self)
        self._direct_upload = True  # cleared once the server shows it has no direct upload
        self._typical_task: float | None = None  # learned task duration, seconds

    @property
    def stats(self) -> ClientStats:
        """Requests, retries and bytes over the client's life."""
        return self._requests.stats

    def __repr__(self) -> str:
        return f"WaveSpeedClient(base_url={str(self._requests.base)!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> WaveSpeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def context(self, cancel: CancelToken | None = None) -> CallContext:
        """A fresh context for one image: the overall deadline starts now."""
        return self._requests.context(cancel)

    def output_limits(self, ctx: CallContext) -> OutputLimits:
        """What a result may be for the image of ``ctx`` (its ``upload_pixels``)."""
        return self._requests.output_limits(ctx)

    @property
    def requester(self) -> Requester:
        return self._requests

    @property
    def model_id(self) -> str:
        return MODEL_ID

    def wall_clock(self) -> float:
        return self._wall()

    # -- the API calls ---------------------------------------------------------------

    def upload(self, data: bytes, filename: str, content_type: str, *,
               ctx: CallContext | None = None) -> str:
        """Upload an image; return the URL to pass as ``image`` to submit."""
        ctx = ctx or self.context()
        if self._direct_upload:
            url = self._upload_direct(data, filename, content_type, ctx)
            if url is not None:
                return url
        return self._upload_binary(data, filename, content_type, ctx)

    def submit(self, image_url: str, *, sync: bool, ctx: CallContext | None = None) -> Prediction:
        """Create a task. See ``bgremove.retry`` for when a submit is sent again (rarely).

        Returns the prediction: completed (sync mode), or not yet done with its
        id (poll mode, or a sync wait the service gave up on): then ``wait``.
        """
        ctx = ctx or self.context()
        body = {"image": image_url, "enable_base64_output": self.config.base64_output,
                "enable_sync_mode": sync}
        timeout = self.config.timeouts.sync_wait if sync else self.config.timeouts.submit
        prediction = self._call(ctx, "submit", "POST", self._url(MODEL_PATH),
                                lambda r: parse_submit(r, sync), timeout=timeout,
                                submit_sync=sync, json=body)
        ctx.task_id = prediction.id
        self._reconciler.remember(prediction.id)
        if prediction.done and prediction.status != "completed":
            self.raise_task(prediction)
        return prediction

    def get_result(self, task_id: str, *, ctx: CallContext | None = None) -> Prediction:
        """The task's current state (retried like any idempotent GET)."""
        ctx = ctx or self.context()
        try:
            return self._call(ctx, "result", "GET", self._url(RESULT_PATH.format(id=task_id)),
                              lambda r: parse_prediction(r, "result", task_id),
                              timeout=self.config.timeouts.result, task_id=task_id)
        except APIStatusError as exc:
            if exc.status_code not in (404, 410):
                raise
            # unknown or expired (kept 7 days): the caller may submit the image again
            raise task_error(task_id, "not_found", None, None) from exc

    def wait(self, task_id: str, *, ctx: CallContext | None = None, poll_first: bool = True,
             progress: Callable[[float], None] | None = None,
             submitted_at: float | None = None) -> Prediction:
        """Poll until the task completes; raise ``TaskFailedError`` if it ends otherwise.

        The schedule is ``TaskWait``'s. Cancellable between polls through the
        context's cancel token.
        """
        ctx = ctx or self.context()
        return self.waiting(task_id, ctx=ctx, poll_first=poll_first,
                            submitted_at=submitted_at).until_done(progress)

    def waiting(self, task_id: str, *, ctx: CallContext, poll_first: bool = True,
                submitted_at: float | None = None) -> TaskWait:
        """The polling of one task, a step at a time (``wait`` loops over it; a poller
        thread can keep thousands of them without a thread each)."""
        return TaskWait(self, task_id, ctx, poll_first=poll_first, submitted_at=submitted_at)

    def poll_schedule(self) -> Iterator[float]:
        """``poll.initial``, then each wait ``poll.factor`` times longer, up to ``poll.max``."""
        policy = self.config.poll
        interval = policy.initial
        while True:
            yield interval
            interval = min(policy.max, interval * policy.factor)

    def first_poll_delay(self, submitted_at: float | None = None) -> float:
        """How long to wait before asking for a new task's result the first time.

        ``poll.initial`` until a task has completed; then the moment tasks have
        typically ended, counted from when the submit was sent, plus 3% and 10 ms
        (at least 0.05 s, at most ``poll.max``). A short task is fetched about when it is done
        instead of after a fixed guess; a miss costs one extra short poll.
        """
        typical = self._typical_task
        if typical is None:
            return self.config.poll.initial
        elapsed = 0.0 if submitted_at is None else max(0.0, self._clock() - submitted_at)
        # The margin: the task starts a moment after the submit was sent.
        return min(self.config.poll.max, max(0.05, typical * 1.03 + 0.01 - elapsed))

    @property
    def typical_task(self) -> float | None:
        """How long tasks have typically taken (seconds), once one has completed."""
        return self._typical_task

    def learn_task_time(self, prediction: Prediction, waited: float) -> None:
        # The service's own inference time when it reports one; our wait overshoots it.
        seconds = prediction.inference_ms / 1000 if prediction.inference_ms else waited
        previous = self._typical_task
        self._typical_task = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    def run(self, image_url: str, *, sync: bool, ctx: CallContext | None = None,
            on_task: Callable[[str], None] | None = None,
            progress: Callable[[float], None] | None = None,
            upload: bytes | None = None,
            on_submit: Callable[[float, str], None] | None = None,
            known: Collection[str] = ()) -> Prediction:
        """Submit and wait until completed; ``on_task(id)`` runs before any waiting.

        ``submit_task`` then ``wait``: see there for ``upload``, ``on_submit`` and ``known``.
        """
        ctx = ctx or self.context()
        submitted = self.submit_task(image_url, sync=sync, ctx=ctx, upload=upload,
                                     on_submit=on_submit, known=known)
        waiting = self.follow(submitted, ctx=ctx, on_task=on_task)
        return submitted.prediction if waiting is None else waiting.until_done(progress)

    def follow(self, submitted: Submitted, *, ctx: CallContext,
               on_task: Callable[[str], None] | None = None) -> TaskWait | None:
        """After a task was created (or adopted): ``on_task(id)``, then None when it is
        completed already, else its ``TaskWait`` (looped over by ``run``, or polled a step
        at a time by the pipeline's remote stage)."""
        prediction = submitted.prediction
        ctx.task_id = prediction.id
        if on_task is not None:
            on_task(prediction.id)
        if prediction.status == "completed":
            return None
        return self.waiting(prediction.id, ctx=ctx, poll_first=submitted.poll_first,
                            submitted_at=submitted.sent_at)

    def submit_task(self, image_url: str, *, sync: bool, ctx: CallContext,
                    upload: bytes | None = None,
                    on_submit: Callable[[float, str], None] | None = None,
                    known: Collection[str] = ()) -> Submitted:
        """Create the task of an uploaded image, once; do not wait for it.

        ``upload`` (the uploaded file) lets a submit whose answer was lost be
        reconciled (``bgremove.wavespeed._reconcile``): its task adopted, or the
        image submitted again once the service surely has no task for it.
        ``on_submit(sent_at, image_url)`` runs just before each submit leaves
        (a journal records it); ``known`` names tasks that are surely not this
        image's (a journal's).
        """
        adopted = False
        while True:
            sent_at = self._clock()
            sent = SentSubmit(image_url, upload or b"", self._wall())
            if on_submit is not None:
                on_submit(sent.sent_at, image_url)
            try:
                with self._reconciler.sending(sent.digest):
                    prediction = self.submit(image_url, sync=sync, ctx=ctx)
            except SubmitUncertainError as lost:
                if upload is None:
                    raise
                found = self._reconciler.find(sent, lost, ctx=ctx, known=known)
                if found is None:
                    continue  # the service surely has no task for it: the one safe resend
                prediction, adopted = self._adopt(found, ctx), True
            break
        if sync and not adopted and prediction.status != "completed":
            log.info("sync wait for task %s ended before the task (status %s): polling it",
                     prediction.id, prediction.status)
        return Submitted(prediction, sent_at, poll_first=sync or adopted)

    def find_lost_task(self, image_url: str, upload: bytes, sent_at: float, *,
                       ctx: CallContext | None = None,
                       known: Collection[str] = ()) -> Prediction | None:
        """After a crash during a submit sent at ``sent_at`` (wall clock): its task, or
        None when the service surely has none. ``SubmitUncertainError`` when unsure."""
        ctx = ctx or self.context()
        lost = SubmitUncertainError(
            "submit: the program stopped before the answer arrived; the task may have been "
            "created and billed")
        found = self._reconciler.find(SentSubmit(image_url, upload, sent_at), lost, ctx=ctx,
                                      known=known)
        return None if found is None else self._adopt(found, ctx)

    def _adopt(self, found: Prediction, ctx: CallContext) -> Prediction:
        ctx.task_id = found.id
        if found.done and found.status != "completed":
            self.raise_task(found)
        if found.status == "completed" and not found.outputs:
            return Prediction(found.id, "processing", model=found.model)  # poll it for them
        return found

    def list_predictions(self, *, created_after: float | None = None,
                         created_before: float | None = None, status: str | None = None,
                         ctx: CallContext | None = None) -> ListPage:
        """This model's predictions of the last 7 days (newest first), every page read.

        Times are Unix times; ``server_time`` is the first page's Date header.
        """
        ctx = ctx or self.context()
        body: dict[str, object] = {"page": 1, "page_size": LIST_PAGE_SIZE, "model": MODEL_ID}
        if created_after is not None:
            body["created_after"] = _iso(created_after)
        if created_before is not None:
            body["created_before"] = _iso(created_before)
        if status is not None:
            body["status"] = status
        items: list[Listed] = []
        server_time: float | None = None
        total: int | None = None
        for page in range(1, LIST_MAX_PAGES + 1):
            body["page"] = page
            answer = self._call(ctx, "list", "POST", self._url(LIST_PATH), parse_list_page,
                                timeout=self.config.timeouts.result, json=dict(body))
            server_time = answer.server_time if server_time is None else server_time
            total = answer.total if total is None else total
            items.extend(answer.items)
            if len(answer.items) < LIST_PAGE_SIZE or (
                    answer.total is not None and len(items) >= answer.total):
                break
        unique = {i.prediction.id: i for i in reversed(items)}  # a task may move pages
        return ListPage(tuple(reversed(unique.values())), total, server_time)

    def download_output(self, prediction: Prediction, *,
                        ctx: CallContext | None = None) -> bytes:
        """The first output's bytes: fetched from its URL, or decoded from base64."""
        ctx = ctx or self.context()
        if not prediction.outputs:
            raise protocol_error("download", "the completed task has no outputs",
                                 task_id=prediction.id)
        kept = self._reconciler.take_output(prediction.id)
        if kept is not None:  # downloaded already, to match it with a lost submit
            return kept
        output = prediction.outputs[0].strip()
        limits = self._requests.output_limits(ctx)
        if output.startswith(("http://", "https://")):
            return self._call(ctx, "download", "GET", output,
                              lambda r: _nonempty(r.content, prediction.id),
                              timeout=self.config.timeouts.download,
                              api=self._requests.same_origin(output), task_id=prediction.id,
                              max_bytes=limits.max_bytes)
        if output.startswith("data:"):
            output = output.partition(",")[2]
        if len(output) > limits.max_bytes * 4 // 3 + 4:
            raise too_large("download", limits.max_bytes, prediction.id, "base64 output")
        try:
            return _nonempty(base64.b64decode(output, validate=True), prediction.id)
        except (binascii.Error, ValueError):
            raise protocol_error("download", "the output is neither a URL nor valid base64",
                                 task_id=prediction.id) from None

    def balance(self, *, ctx: CallContext | None = None) -> float:
        """The account balance in US dollars."""
        ctx = ctx or self.context()
        return self._call(ctx, "balance", "GET", self._url(BALANCE_PATH), parse_balance,
                          timeout=self.config.timeouts.result)

    # -- uploads -----------------------------------------------------------------------

    def _upload_direct(self, data: bytes, filename: str, content_type: str,
                       ctx: CallContext) -> str | None:
        """The SDK's two-step upload; None when this server has no direct upload."""
        try:
            ticket = self._call(
                ctx, "upload", "POST", self._url(TICKET_PATH),
                lambda r: parse_ticket(r, self._requests.base),
                timeout=self.config.timeouts.upload, give_up_on=_NO_DIRECT_UPLOAD,
                json={"filename": filename, "size": len(data), "content_type": content_type})
        except APIStatusError as exc:
            if exc.status_code not in _NO_DIRECT_UPLOAD:
                raise
            ticket = None
        if ticket is None:
            log.info("the service has no direct upload: using the binary upload endpoint")
            self._direct_upload = False
            return None
        try:
            self._call(ctx, "upload", "PUT", ticket.put_url, discard,
                       timeout=self.config.timeouts.upload, headers=ticket.headers, bare=True,
                       content=data)
        except APIStatusError as exc:
            if exc.status_code in (408, 413, 429) or exc.status_code >= 500:
                raise
            # the storage refused the signed URL (expired, clock skew): the binary endpoint
            log.warning("direct upload refused (HTTP %d): using the binary upload endpoint",
                        exc.status_code)
            return None
        return ticket.download_url

    def _upload_binary(self, data: bytes, filename: str, content_type: str,
                       ctx: CallContext) -> str:
        return self._call(ctx, "upload", "POST", self._url(BINARY_UPLOAD_PATH),
                          parse_upload_url, timeout=self.config.timeouts.upload,
                          files={"file": (filename, data, content_type)})

    # -- helpers ----------------------------------------------------------------------

    def raise_task(self, prediction: Prediction) -> NoReturn:
        """``TaskFailedError`` for a task that ended other than completed."""
        raise task_error(prediction.id, prediction.status, prediction.code, prediction.error,
                         secret=self.config.api_key)


@dataclass(frozen=True)
class Submitted:
    """A task just created (or adopted), and how to wait for it."""

    prediction: Prediction
    sent_at: float | None  # the client's clock when the submit was sent (None: unknown)
    poll_first: bool  # ask at once (a sync wait given up on, an adopted task)


class TaskWait:
    """The polling of one task: when to ask next, and what an answer means.

    ``delay`` is how long to wait before the next ``poll``: 0 with ``poll_first`` (a
    task that may be done already); otherwise first when tasks typically end (see
    ``WaveSpeedClient.first_poll_delay``), then intervals growing from ``poll.initial``
    by ``poll.factor`` up to ``poll.max``; never past the context's deadline.
    """

    def __init__(self, client: WaveSpeedClient, task_id: str, ctx: CallContext, *,
                 poll_first: bool, submitted_at: float | None) -> None:
        self.client = client
        self.task_id = task_id
        self.ctx = ctx
        ctx.task_id = task_id
        self.started = client.requester.clock() if submitted_at is None else submitted_at
        self._intervals = client.poll_schedule()
        self._delay = 0.0
        if not poll_first:
            typical = client.typical_task
            if typical is None:
                self._delay = next(self._intervals)
            else:
                self._delay = client.first_poll_delay(self.started)
                # Aimed at the typical end; after a miss the task is probably just finishing.
                self._intervals = itertools.chain([max(0.05, 0.1 * typical)], self._intervals)

    @property
    def delay(self) -> float:
        """Seconds until the next poll is due, within the deadline."""
        return max(0.0, min(self._delay, self.ctx.deadline.remaining()))

    def until_done(self, progress: Callable[[float], None] | None = None) -> Prediction:
        """Poll on this thread, each ``delay`` apart, until the task completed."""
        while True:
            self.client.requester.pause(self.delay, self.ctx, "result", self.task_id)
            prediction = self.poll(progress)
            if prediction is not None:
                return prediction

    def poll(self, progress: Callable[[float], None] | None = None) -> Prediction | None:
        """Ask once: the completed prediction, or None (not yet; ``delay`` is set again).

        Raises ``TaskFailedError`` when the task ended otherwise, ``CancelledError`` or
        the deadline's error first when those came.
        """
        client, ctx = self.client, self.ctx
        client.requester.checkpoint(ctx, "wait", self.task_id)
        prediction = client.get_result(self.task_id, ctx=ctx)
        if prediction.status == "completed":
            client.learn_task_time(prediction, client.requester.clock() - self.started)
            return prediction
        if prediction.done:
            client.raise_task(prediction)
        if progress is not None:  # an asymptote, the real duration is unknown
            elapsed = client.requester.clock() - self.started
            progress(elapsed / (elapsed + 10.0))
        self._delay = next(self._intervals)
        return None


def _nonempty(data: bytes, task_id: str) -> bytes:
    if not data:
        raise protocol_error("download", "the output is empty", task_id=task_id)
    return data


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
