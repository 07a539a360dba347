"""The request loop under the WaveSpeed client: headers, timeouts, retries, the deadline.

``Requester.call`` sends one logical call (with retries per ``bgremove.retry``)
and hands the answer to a ``parse`` function. ``CallContext`` is what the
calls for one image share (deadline, cancel token, request count, the size
of the upload its answers are judged by); ``ClientStats`` counts over the
client's life. The API key goes only to the service's own origin, and is
scrubbed from every exception chained to an error this module raises.

Every answer is untrusted: its whole body (headers included, on the client's
own transport) must arrive within the call's time limit, is capped in decoded
bytes (``json_limit``, or the caller's ``max_bytes`` for a download), and is
read here by ``bgremove.wavespeed._body`` before any parser sees it. A submit whose
answer cannot be read or understood raises ``SubmitUncertainError``, whatever
went wrong: the request was sent, so the task may exist.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from bgremove import retry
from bgremove.config import is_loopback
from bgremove.errors import CancelledError, ProtocolError, ServiceError, TransportError
from bgremove.logs import redact
from bgremove.wavespeed._body import JSON_MAX_BYTES, OutputLimits, permanent, read_body, with_body
from bgremove.wavespeed._errors import (
    deadline_error,
    envelope_task_id,
    parse_json,
    protocol_error,
    status_error,
    submit_uncertain,
    transport_error,
)
from bgremove.wavespeed._transport import budget

if TYPE_CHECKING:
    from bgremove.config import WaveSpeedConfig
    from bgremove.contract import CancelToken

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class CallContext:
    """What the calls for one image share: the deadline, the cancel token, the request count."""

    deadline: retry.Deadline
    cancel: CancelToken | None = None
    requests: int = 0
    task_id: str | None = None
    #: Pixels of the uploaded image: what the result may weigh is judged by it.
    upload_pixels: int | None = None


@dataclass
class ClientStats:
    """Counters over the client's life (for benchmarks and ``doctor``). Thread-safe."""

    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    by_call: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str, *, sent: int = 0) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_sent += sent
            self.by_call[what] = self.by_call.get(what, 0) + 1

    def add_received(self, count: int) -> None:
        with self._lock:
            self.bytes_received += count

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "retries": self.retries,
                    "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                    "by_call": dict(self.by_call)}


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, error: ServiceError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class Requester:
    """Sends calls to the service on one shared ``httpx.Client``. Thread-safe."""

    def __init__(self, config: WaveSpeedConfig, http: httpx.Client, *, key: str,
                 common_headers: Mapping[str, str], sleep: Callable[[float], None],
                 clock: Callable[[], float], wall_clock: Callable[[], float],
                 rand: Callable[[], float]) -> None:
        self.config = config
        self.http = http
        self.key = key
        self.base = httpx.URL(config.base_url.rstrip("/") + "/")
        self.common = dict(common_headers)
        self.stats = ClientStats()
        self.clock = clock
        self._sleep, self._wall, self._rand = sleep, wall_clock, rand

    def context(self, cancel: CancelToken | None = None) -> CallContext:
        """A fresh context for one image: the overall deadline starts now."""
        return CallContext(retry.Deadline(self.config.timeouts.overall, self.clock), cancel)

    def url(self, path: str) -> str:
        return str(self.base.join(path.lstrip("/")))

    def output_limits(self, ctx: CallContext) -> OutputLimits:
        """What a result may be for this image (for no known upload: the largest upload)."""
        side = self.config.max_upload_side
        return OutputLimits(ctx.upload_pixels or side * side)

    def json_limit(self, ctx: CallContext) -> int:
        """Decoded bytes allowed to a JSON answer: room for a base64 output when asked for."""
        if not self.config.base64_output:
            return JSON_MAX_BYTES
        return JSON_MAX_BYTES + self.output_limits(ctx).max_bytes * 4 // 3 + 4

    def same_origin(self, url: str) -> bool:
        target = self.base.join(url)
        return (target.scheme, target.host, target.port) == (
            self.base.scheme, self.base.host, self.base.port)

    def call(self, ctx: CallContext, what: str, method: str, url: str,
             parse: Callable[[httpx.Response], T], **kwargs: Any) -> T:
        """``_retrying``, with the key scrubbed from every exception it chains.

        A plain-http address the service handed out (an output, an upload ticket) to
        another machine is refused like a plain-http ``base_url``: whoever sits on that
        path could swap the mask or read the image.
        """
        with contextlib.suppress(httpx.InvalidURL):  # the request loop reports a bad URL
            target = httpx.URL(url)
            if (target.scheme == "http" and not self.config.allow_insecure_http
                    and not is_loopback(target.netloc.decode("ascii", "replace"))):
                raise permanent(protocol_error(
                    what, f"the service handed out a plain-http address on {target.host}: "
                    "refused (set wavespeed.allow_insecure_http: true if that path is trusted)",
                    task_id=kwargs.get("task_id") or ctx.task_id))
        try:
            return self._retrying(ctx, what, method, url, parse, **kwargs)
        except ServiceError as error:
            _scrub_chain(error, self.key)
            raise

    def checkpoint(self, ctx: CallContext, what: str, task_id: str | None) -> None:
        """Raise if the caller cancelled or the image's overall deadline ran out."""
        if ctx.cancel is not None:
            ctx.cancel.raise_if_cancelled()
        if ctx.deadline.expired:
            raise deadline_error(what, task_id, ctx.deadline.seconds)

    def pause(self, seconds: float, ctx: CallContext, what: str, task_id: str | None) -> None:
        """Sleep (cancellable through the context's token), never past the deadline."""
        seconds = max(0.0, min(seconds, ctx.deadline.remaining()))
        if ctx.cancel is not None:
            if ctx.cancel.wait(seconds):
                raise CancelledError("cancelled while waiting for the service")
        elif seconds > 0:
            self._sleep(seconds)
        self.checkpoint(ctx, what, task_id)

    def _retrying(self, ctx: CallContext, what: str, method: str, url: str,
                  parse: Callable[[httpx.Response], T], *, timeout: float,
                  api: bool = True, headers: Mapping[str, str] | None = None,
                  bare: bool = False, submit_sync: bool | None = None,
                  task_id: str | None = None, give_up_on: frozenset[int] = frozenset(),
                  max_bytes: int | None = None, **kwargs: Any) -> T:
        """Send one logical call with retries; return what ``parse`` makes of the answer.

        ``submit_sync`` is not None for a submit: then the submit policy of
        ``bgremove.retry`` applies instead of the idempotent one. ``bare`` sends
        exactly ``headers`` (an upload ticket's PUT). ``give_up_on`` lists
        retryable statuses to raise at once (the caller handles them).
        ``max_bytes`` caps the decoded body (default: ``json_limit``).
        """
        submit = submit_sync is not None
        policy = self.config.retry
        attempt = 0
        while True:
            attempt += 1
            self.checkpoint(ctx, what, task_id or ctx.task_id)
            limit = ctx.deadline.clamp(timeout)
            try:
                return self._attempt(ctx, what, method, url, parse, limit=limit, api=api,
                                     headers=headers, bare=bare, submit_sync=submit_sync,
                                     give_up_on=give_up_on, task_id=task_id or ctx.task_id,
                                     max_bytes=max_bytes or self.json_limit(ctx), **kwargs)
            except _Retry as failure:
                error, retry_after = failure.error, failure.retry_after
                cause: BaseException | None = None
            except httpx.InvalidURL as exc:  # a URL from the service (or config) httpx refuses
                raise protocol_error(what, f"the URL {redact(str(url), self.key)!r} is not valid "
                                     f"({redact(str(exc), self.key)})",
                                     task_id=task_id or ctx.task_id) from None
            except httpx.HTTPError as exc:
                deadline_hit = limit < timeout and isinstance(exc, httpx.TimeoutException)
                if submit and not retry.should_retry_submit(None, exc, has_task_id=False,
                                                            sync=bool(submit_sync)):
                    reason = ("no answer before the time limit" if deadline_hit else
                              f"the answer was lost ({type(exc).__name__})")
                    raise submit_uncertain(reason) from exc
                error = transport_error(exc, what=what, secret=self.key,
                                        task_id=task_id or ctx.task_id,
                                        deadline_hit=deadline_hit, timeout=limit)
                if deadline_hit or not retry.is_retryable_exception(exc):
                    raise error from exc
                retry_after, cause = None, exc
            decision = retry.decide(
                attempt, max_attempts=policy.max_attempts, retry_after=retry_after,
                retry_after_max=policy.retry_after_max, backoff_initial=policy.backoff_initial,
                backoff_max=policy.backoff_max, remaining=ctx.deadline.remaining(),
                rand=self._rand)
            if not decision.retry:
                if attempt > 1 or retry_after is not None:
                    error.message = f"{error.message}; {decision.reason}"
                raise error from cause
            self.stats.add_retry()
            # A dead connection is reported once by the caller (the batch's breaker, the
            # daemon's intake pause), not once per attempt per image.
            log.log(logging.DEBUG if isinstance(error, TransportError) else logging.WARNING,
                    "%s; retrying in %.2f s (attempt %d of %d)", error.message,
                    decision.delay, attempt + 1, policy.max_attempts)
            self.pause(decision.delay, ctx, what, task_id or ctx.task_id)

    def _attempt(self, ctx: CallContext, what: str, method: str, url: str,
                 parse: Callable[[httpx.Response], T], *, limit: float, api: bool,
                 headers: Mapping[str, str] | None, bare: bool, submit_sync: bool | None,
                 give_up_on: frozenset[int], max_bytes: int, task_id: str | None,
                 **kwargs: Any) -> T:
        """One HTTP request; raises ``_Retry`` for a failure worth another try."""
        if bare:
            sent_headers = dict(headers or {})
        else:
            sent_headers = dict(self.common)
            if api:
                sent_headers["Authorization"] = f"Bearer {self.key}"
            sent_headers.update(headers or {})
        timeouts = httpx.Timeout(limit, connect=min(self.config.timeouts.connect, limit))
        request = self.http.build_request(method, url, headers=sent_headers, timeout=timeouts,
                                          **kwargs)
        if bare:  # exactly the ticket's headers: drop the pooled client's defaults
            keep = {h.lower() for h in sent_headers} | {"host", "content-length",
                                                        "transfer-encoding"}
            for name in [n for n in request.headers if n.lower() not in keep]:
                del request.headers[name]
        ctx.requests += 1
        length = request.headers.get("content-length", "0")
        self.stats.add(what, sent=int(length) if length.isdigit() else 0)
        submit = submit_sync is not None
        # A submit, once sent, is waited for: cancelling it would not cancel the task.
        cancel = None if submit else ctx.cancel
        ends_at = self.clock() + limit
        body = b""
        with budget(time.monotonic() + limit, cancel):
            try:
                response = self.http.send(request, stream=True)
            except ServiceError as exc:  # a redirect's body refused (``guard_redirect``)
                if submit:
                    raise submit_uncertain(exc.message) from None
                raise
            try:
                body = read_body(response, what=what, max_bytes=max_bytes, ends_at=ends_at,
                                 clock=self.clock, cancel=cancel, task_id=task_id)
            except ServiceError as exc:
                # a submit's answer that could have named a task, unread: the task may exist
                if submit and (response.is_success
                               or retry.is_retryable_status(response.status_code)):
                    raise submit_uncertain(exc.message.removeprefix(f"{what}: ")) from None
                if response.is_success:
                    raise _Retry(exc) if exc.transient else exc from None
                # an error status whose body is unusable: the status decides
            finally:
                # bytes on the wire (an answer built in memory counts its content)
                self.stats.add_received(response.num_bytes_downloaded or len(body))
                response.close()
        answer = with_body(response, body)
        if answer.is_success:
            try:
                return parse(answer)
            except ProtocolError as exc:
                if submit:
                    raise submit_uncertain(exc.message.removeprefix("submit: ")) from None
                raise _Retry(exc) if exc.transient else exc from None
            except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
                if not submit:
                    raise
                # an answer no parser foresaw: the request went out, the task may exist
                raise submit_uncertain(f"the answer could not be read ({type(exc).__name__})"
                                       ) from None
        status = answer.status_code
        named = envelope_task_id(parse_json(answer))
        retry_after = retry.parse_retry_after(answer.headers, now=self._wall())
        error = status_error(answer, what=what, secret=self.key,
                             task_id=named or task_id, retry_after=retry_after)
        if submit_sync is not None:
            if named and retry.is_retryable_status(status):
                return parse(answer)  # the task exists: poll it, never POST again
            if retry.should_retry_submit(status, None, has_task_id=bool(named),
                                         sync=submit_sync):
                raise _Retry(error, retry_after)
            if status in retry.GATEWAY_STATUSES:
                raise submit_uncertain(f"the gateway gave up (HTTP {status}) without "
                                       "naming the task")
            raise error
        if retry.is_retryable_status(status) and status not in give_up_on:
            raise _Retry(error, retry_after)
        raise error


def _scrub_chain(error: BaseException, secret: str) -> None:
    """Scrub the key from the text of every exception chained to ``error`` (httpx's too)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if secret in str(exc) or secret in repr(exc.args):
            exc.args = tuple(redact(a, secret) if isinstance(a, str) else a for a in exc.args)
        todo += [exc.__cause__, exc.__context__]
