"""The WaveSpeedAI HTTP client: upload, submit, wait, download, balance.

One pooled ``httpx.Client`` (HTTP/1.1 keep-alive) per ``WaveSpeedClient``,
safe to share between threads. Every call has a named timeout
(``wavespeed.timeouts``) and every call made for one image shares one
``CallContext``: its overall deadline, its cancel token and its request
count. Retries follow ``core.retry``; read its docstring for the submit
policy (a submit whose answer was lost is never resubmitted: it raises
``SubmitUncertainError``). Errors come from ``core.wavespeed_errors``.

The API key goes only to the service's own origin (never to the upload URL a
ticket names, nor to an output URL on another host), and it is scrubbed from
every error message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import platform
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import httpx

from core import __version__, retry
from core.errors import (
    APIStatusError,
    CancelledError,
    MissingKeyError,
    ProtocolError,
    ServiceError,
    ServiceTimeoutError,
)
from core.logs import register_secret
from core.wavespeed_errors import (
    envelope_task_id,
    parse_json,
    protocol_error,
    scrub,
    status_error,
    submit_uncertain,
    task_error,
    transport_error,
)

if TYPE_CHECKING:
    from core.backends import CancelToken
    from core.config import WaveSpeedConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

MODEL_PATH = "/api/v3/wavespeed-ai/image-background-remover"
TICKET_PATH = "/api/v3/media/uploads"
BINARY_UPLOAD_PATH = "/api/v3/media/upload/binary"
RESULT_PATH = "/api/v3/predictions/{id}/result"
BALANCE_PATH = "/api/v3/balance"

#: Statuses after which a task will not change any more.
TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})
#: Answers to the upload ticket request meaning "this server has no direct upload".
_NO_DIRECT_UPLOAD = frozenset({404, 405, 501})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Prediction:
    """A task as the service describes it."""

    id: str
    status: str
    outputs: tuple[str, ...] = ()
    error: str | None = None
    code: int | None = None
    model: str | None = None
    inference_ms: float | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass
class CallContext:
    """What the calls for one image share: the deadline, the cancel token, the request count."""

    deadline: retry.Deadline
    cancel: CancelToken | None = None
    requests: int = 0
    task_id: str | None = None


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


def client_os() -> str:
    return platform.system().lower() or "unknown"


class WaveSpeedClient:
    """A thread-safe client of the WaveSpeedAI background-remover API.

    ``http`` replaces the pooled client (tests pass one built on
    ``httpx.MockTransport``); ``sleep``, ``clock`` and ``rand`` replace
    ``time.sleep``, ``time.monotonic`` and the jitter source so tests do not
    wait. ``max_connections`` sizes the pool (default: enough for 8 threads).
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
        self._key = config.api_key
        register_secret(self._key)
        self._base = httpx.URL(config.base_url.rstrip("/") + "/")
        self._sleep, self._clock, self._wall, self._rand = sleep, clock, wall_clock, rand
        self.stats = ClientStats()
        self._direct_upload = True  # cleared once the server shows it has no direct upload
        self._common = {
            "User-Agent": f"bgremove/{__version__}",
            "X-Client-Name": "bgremove",
            "X-Client-Version": __version__,
            "X-Client-OS": client_os(),
        }
        self._owns_http = http is None
        if http is None:
            size = max(8, max_connections or 8)
            http = httpx.Client(
                verify=True,
                follow_redirects=True,  # httpx drops Authorization on a cross-origin redirect
                limits=httpx.Limits(max_connections=size + 4, max_keepalive_connections=size,
                                    keepalive_expiry=30.0),
                timeout=httpx.Timeout(config.timeouts.result,
                                      connect=config.timeouts.connect),
                headers={"User-Agent": self._common["User-Agent"]},
            )
        self._http = http

    def __repr__(self) -> str:
        return f"WaveSpeedClient(base_url={str(self._base)!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> WaveSpeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def context(self, cancel: CancelToken | None = None) -> CallContext:
        """A fresh context for one image: the overall deadline starts now."""
        return CallContext(retry.Deadline(self.config.timeouts.overall, self._clock), cancel)

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
        """Create a task. See ``core.retry`` for when a submit is sent again (rarely).

        Returns the prediction: completed (sync mode), or not yet done with its
        id (poll mode, or a sync wait the service gave up on): then ``wait``.
        """
        ctx = ctx or self.context()
        body = {"image": image_url, "enable_base64_output": self.config.base64_output,
                "enable_sync_mode": sync}
        timeout = self.config.timeouts.sync_wait if sync else self.config.timeouts.submit
        prediction = self._call(ctx, "submit", "POST", self._url(MODEL_PATH),
                                lambda r: self._submit_answer(r, sync), timeout=timeout,
                                submit_sync=sync, json=body)
        ctx.task_id = prediction.id
        if prediction.done and prediction.status != "completed":
            self._raise_task(prediction)
        return prediction

    def get_result(self, task_id: str, *, ctx: CallContext | None = None) -> Prediction:
        """The task's current state (retried like any idempotent GET)."""
        ctx = ctx or self.context()
        try:
            return self._call(ctx, "result", "GET", self._url(RESULT_PATH.format(id=task_id)),
                              lambda r: self._prediction(r, "result", task_id),
                              timeout=self.config.timeouts.result, task_id=task_id)
        except APIStatusError as exc:
            if exc.status_code not in (404, 410):
                raise
            # unknown or expired (kept 7 days): the caller may submit the image again
            raise task_error(task_id, "not_found", None, None) from exc

    def wait(self, task_id: str, *, ctx: CallContext | None = None, poll_first: bool = True,
             progress: Callable[[float], None] | None = None) -> Prediction:
        """Poll until the task completes; raise ``TaskFailedError`` if it ends otherwise.

        Intervals grow from ``poll.initial`` by ``poll.factor`` up to ``poll.max``.
        ``poll_first`` polls at once (a task that may be done already);
        otherwise the first poll comes after ``poll.initial``. Cancellable
        between polls through the context's cancel token.
        """
        ctx = ctx or self.context()
        ctx.task_id = task_id
        policy = self.config.poll
        interval = policy.initial
        started = self._clock()
        if not poll_first:
            self._pause(interval, ctx, "result", task_id)
            interval = min(policy.max, interval * policy.factor)
        while True:
            self._checkpoint(ctx, "wait", task_id)
            prediction = self.get_result(task_id, ctx=ctx)
            if prediction.status == "completed":
                return prediction
            if prediction.done:
                self._raise_task(prediction)
            if progress is not None:  # an asymptote, the real duration is unknown
                elapsed = self._clock() - started
                progress(elapsed / (elapsed + 10.0))
            self._pause(interval, ctx, "result", task_id)
            interval = min(policy.max, interval * policy.factor)

    def run(self, image_url: str, *, sync: bool, ctx: CallContext | None = None,
            on_task: Callable[[str], None] | None = None,
            progress: Callable[[float], None] | None = None) -> Prediction:
        """Submit and wait until completed; ``on_task(id)`` runs before any waiting."""
        ctx = ctx or self.context()
        prediction = self.submit(image_url, sync=sync, ctx=ctx)
        if on_task is not None:
            on_task(prediction.id)
        if prediction.status == "completed":
            return prediction
        if sync:
            log.info("sync wait for task %s ended before the task (status %s): polling it",
                     prediction.id, prediction.status)
        return self.wait(prediction.id, ctx=ctx, poll_first=sync, progress=progress)

    def download_output(self, prediction: Prediction, *,
                        ctx: CallContext | None = None) -> bytes:
        """The first output's bytes: fetched from its URL, or decoded from base64."""
        ctx = ctx or self.context()
        if not prediction.outputs:
            raise protocol_error("download", "the completed task has no outputs",
                                 task_id=prediction.id)
        output = prediction.outputs[0].strip()
        if output.startswith(("http://", "https://")):
            limit = self.config.timeouts.download
            return self._call(ctx, "download", "GET", output,
                              lambda r: self._read_body(r, ctx, limit, prediction.id),
                              timeout=limit, api=self._same_origin(output),
                              task_id=prediction.id)
        if output.startswith("data:"):
            output = output.partition(",")[2]
        try:
            return base64.b64decode(output, validate=True)
        except (binascii.Error, ValueError):
            raise protocol_error("download", "the output is neither a URL nor valid base64",
                                 task_id=prediction.id) from None

    def balance(self, *, ctx: CallContext | None = None) -> float:
        """The account balance in US dollars."""
        ctx = ctx or self.context()
        return self._call(ctx, "balance", "GET", self._url(BALANCE_PATH), self._balance,
                          timeout=self.config.timeouts.result)

    # -- uploads -----------------------------------------------------------------------

    def _upload_direct(self, data: bytes, filename: str, content_type: str,
                       ctx: CallContext) -> str | None:
        """The SDK's two-step upload; None when this server has no direct upload."""
        try:
            ticket = self._call(
                ctx, "upload", "POST", self._url(TICKET_PATH), self._ticket,
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
        put_url, headers, download_url = ticket
        try:
            self._call(ctx, "upload", "PUT", put_url, _discard,
                       timeout=self.config.timeouts.upload, api=self._same_origin(put_url),
                       headers=headers, bare=True, content=data)
        except APIStatusError as exc:
            if exc.status_code in (408, 413, 429) or exc.status_code >= 500:
                raise
            # the storage refused the signed URL (expired, clock skew): the binary endpoint
            log.warning("direct upload refused (HTTP %d): using the binary upload endpoint",
                        exc.status_code)
            return None
        return download_url

    def _upload_binary(self, data: bytes, filename: str, content_type: str,
                       ctx: CallContext) -> str:
        return self._call(ctx, "upload", "POST", self._url(BINARY_UPLOAD_PATH),
                          self._binary_answer, timeout=self.config.timeouts.upload,
                          files={"file": (filename, data, content_type)})

    def _ticket(self, response: httpx.Response) -> tuple[str, dict[str, str], str] | None:
        try:
            body = self._json(response, "upload")
        except ProtocolError:
            log.warning("the upload ticket is not JSON: using the binary upload")
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return None
        instruction = data.get("upload")
        download_url = data.get("download_url")
        if not (isinstance(instruction, dict) and isinstance(download_url, str) and download_url
                and str(instruction.get("method", "")).upper() == "PUT"
                and isinstance(instruction.get("url"), str) and instruction["url"]):
            log.warning("malformed upload ticket from the service: using the binary upload")
            return None
        headers = instruction.get("headers") or {}
        if not isinstance(headers, dict):
            return None
        return (str(self._base.join(instruction["url"])),
                {str(k): str(v) for k, v in headers.items()}, download_url)

    def _binary_answer(self, response: httpx.Response) -> str:
        body = self._json(response, "upload")
        data = body.get("data") if isinstance(body, dict) else None
        url = data.get("download_url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise protocol_error("upload", "the upload answer has no download_url")
        return url

    # -- answers -----------------------------------------------------------------------

    def _json(self, response: httpx.Response, what: str) -> Any:
        response.read()
        self.stats.add_received(len(response.content))
        body = parse_json(response)
        if body is None:
            raise protocol_error(what, f"the answer (HTTP {response.status_code}) is not JSON")
        return body

    def _prediction(self, response: httpx.Response, what: str,
                    task_id: str | None = None) -> Prediction:
        body = self._json(response, what)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise protocol_error(what, "the answer has no data object", task_id=task_id)
        pid, status = data.get("id", task_id), data.get("status")
        if not isinstance(pid, str) or not pid:
            raise protocol_error(what, "the answer has no task id", task_id=task_id)
        if not response.is_success:
            status = status if isinstance(status, str) and status else "processing"
        if not isinstance(status, str) or not status:
            raise protocol_error(what, "the answer has no task status", task_id=pid)
        outputs = data.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise protocol_error(what, "the task's outputs are not a list of strings",
                                 task_id=pid)
        code = data.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            top = body.get("code")
            code = top if isinstance(top, int) and top not in (0, 200) else None
        error = data.get("error")
        timings = data.get("timings")
        inference = timings.get("inference") if isinstance(timings, dict) else None
        prediction = Prediction(
            id=pid, status=status.lower(), outputs=tuple(outputs),
            error=str(error) if error else None, code=code,
            model=data.get("model") if isinstance(data.get("model"), str) else None,
            inference_ms=float(inference) if isinstance(inference, (int, float)) else None)
        if prediction.status == "completed" and not prediction.outputs:
            raise protocol_error(what, "the task completed without outputs", task_id=pid)
        return prediction

    def _submit_answer(self, response: httpx.Response, sync: bool) -> Prediction:
        prediction = self._prediction(response, "submit")
        if sync and prediction.status != "completed" and (
                prediction.code == 5004 or not response.is_success
                or "timed out" in (prediction.error or "").lower()):
            # the sync wait ended before the task: it may still complete, poll it
            return Prediction(id=prediction.id, status="processing", code=prediction.code,
                              error=prediction.error, model=prediction.model)
        return prediction

    def _balance(self, response: httpx.Response) -> float:
        body = self._json(response, "balance")
        data = body.get("data") if isinstance(body, dict) else None
        value = data.get("balance") if isinstance(data, dict) else data
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                value = None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise protocol_error("balance", "the answer has no balance")
        return float(value)

    def _read_body(self, response: httpx.Response, ctx: CallContext, limit: float,
                   task_id: str) -> bytes:
        """Stream a download; bounded in time, checked against Content-Length."""
        started = self._clock()
        chunks: list[bytes] = []
        try:
            for chunk in response.iter_bytes(_CHUNK):
                chunks.append(chunk)
                if self._clock() - started > limit or ctx.deadline.expired:
                    raise ServiceTimeoutError(
                        f"download: the output took longer than {limit:g} s",
                        hint="check the network, or raise wavespeed.timeouts.download",
                        task_id=task_id)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise protocol_error(
                "download", f"the output was cut short after "
                f"{response.num_bytes_downloaded} bytes ({type(exc).__name__})",
                task_id=task_id) from exc
        finally:
            self.stats.add_received(sum(len(c) for c in chunks))
        data = b"".join(chunks)
        expected = response.headers.get("content-length")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        # Content-Length counts the bytes on the wire: the decoded size unless compressed
        received = len(data) if encoding == "identity" else response.num_bytes_downloaded
        if expected is not None and expected.isdigit() and int(expected) != received:
            raise protocol_error("download", f"the output was cut short: got {received} of "
                                 f"{expected} bytes", task_id=task_id)
        if not data:
            raise protocol_error("download", "the output is empty", task_id=task_id)
        return data

    def _raise_task(self, prediction: Prediction) -> NoReturn:
        raise task_error(prediction.id, prediction.status, prediction.code, prediction.error,
                         secret=self._key)

    # -- the request loop ---------------------------------------------------------------

    def _call(self, ctx: CallContext, what: str, method: str, url: str,
              parse: Callable[[httpx.Response], T], **kwargs: Any) -> T:
        """``_retrying``, with the key scrubbed from every exception it chains."""
        try:
            return self._retrying(ctx, what, method, url, parse, **kwargs)
        except ServiceError as error:
            _scrub_chain(error, self._key)
            raise

    def _retrying(self, ctx: CallContext, what: str, method: str, url: str,
                  parse: Callable[[httpx.Response], T], *, timeout: float,
                  api: bool = True, headers: Mapping[str, str] | None = None,
                  bare: bool = False, submit_sync: bool | None = None,
                  task_id: str | None = None, give_up_on: frozenset[int] = frozenset(),
                  **kwargs: Any) -> T:
        """Send one logical call with retries; return what ``parse`` makes of the answer.

        ``submit_sync`` is not None for a submit: then the submit policy of
        ``core.retry`` applies instead of the idempotent one. ``bare`` sends
        exactly ``headers`` (an upload ticket's PUT).
        """
        submit = submit_sync is not None
        policy = self.config.retry
        attempt = 0
        while True:
            attempt += 1
            self._checkpoint(ctx, what, task_id or ctx.task_id)
            limit = ctx.deadline.clamp(timeout)
            try:
                return self._attempt(ctx, what, method, url, parse, limit=limit, api=api,
                                     headers=headers, bare=bare, submit_sync=submit_sync,
                                     give_up_on=give_up_on, **kwargs)
            except _Retry as failure:
                error, retry_after = failure.error, failure.retry_after
                cause: BaseException | None = None
            except httpx.HTTPError as exc:
                deadline_hit = limit < timeout and isinstance(exc, httpx.TimeoutException)
                if submit and not retry.should_retry_submit(None, exc, has_task_id=False,
                                                            sync=bool(submit_sync)):
                    reason = ("no answer before the time limit" if deadline_hit else
                              f"the answer was lost ({type(exc).__name__})")
                    raise submit_uncertain(reason) from exc
                error = transport_error(exc, what=what, secret=self._key,
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
            log.warning("%s; retrying in %.2f s (attempt %d of %d)", error.message,
                        decision.delay, attempt + 1, policy.max_attempts)
            self._pause(decision.delay, ctx, what, task_id or ctx.task_id)

    def _attempt(self, ctx: CallContext, what: str, method: str, url: str,
                 parse: Callable[[httpx.Response], T], *, limit: float, api: bool,
                 headers: Mapping[str, str] | None, bare: bool, submit_sync: bool | None,
                 give_up_on: frozenset[int], **kwargs: Any) -> T:
        """One HTTP request; raises ``_Retry`` for a failure worth another try."""
        if bare:
            sent_headers = dict(headers or {})
        else:
            sent_headers = dict(self._common)
            if api:
                sent_headers["Authorization"] = f"Bearer {self._key}"
            sent_headers.update(headers or {})
        timeouts = httpx.Timeout(limit, connect=min(self.config.timeouts.connect, limit))
        request = self._http.build_request(method, url, headers=sent_headers, timeout=timeouts,
                                           **kwargs)
        if bare:  # exactly the ticket's headers: drop the pooled client's defaults
            for name in list(request.headers):
                if name.lower() not in {h.lower() for h in sent_headers} | {
                        "host", "content-length", "transfer-encoding"}:
                    del request.headers[name]
        ctx.requests += 1
        length = request.headers.get("content-length", "0")
        self.stats.add(what, sent=int(length) if length.isdigit() else 0)
        response = self._http.send(request, stream=True)
        try:
            if response.is_success:
                try:
                    return parse(response)
                except ProtocolError as exc:
                    if submit_sync is not None:
                        raise submit_uncertain(exc.message.removeprefix("submit: ")) from None
                    raise _Retry(exc) from None
            response.read()
            self.stats.add_received(len(response.content))
            status = response.status_code
            task_id = envelope_task_id(parse_json(response))
            retry_after = retry.parse_retry_after(response.headers, now=self._wall())
            error = status_error(response, what=what, secret=self._key,
                                 task_id=task_id or ctx.task_id, retry_after=retry_after)
            if submit_sync is not None:
                if task_id and retry.is_retryable_status(status):
                    return parse(response)  # the task exists: poll it, never POST again
                if retry.should_retry_submit(status, None, has_task_id=bool(task_id),
                                             sync=submit_sync):
                    raise _Retry(error, retry_after)
                if submit_sync and status == 504:
                    raise submit_uncertain("the service gave up waiting (HTTP 504) without "
                                           "naming the task")
                raise error
            if retry.is_retryable_status(status) and status not in give_up_on:
                raise _Retry(error, retry_after)
            raise error
        finally:
            response.close()

    # -- helpers ----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return str(self._base.join(path.lstrip("/")))

    def _same_origin(self, url: str) -> bool:
        target = self._base.join(url)
        return (target.scheme, target.host, target.port) == (
            self._base.scheme, self._base.host, self._base.port)

    def _checkpoint(self, ctx: CallContext, what: str, task_id: str | None) -> None:
        if ctx.cancel is not None:
            ctx.cancel.raise_if_cancelled()
        if ctx.deadline.expired:
            raise ServiceTimeoutError(
                f"{what}: the overall time limit for this image "
                f"({ctx.deadline.seconds:g} s) ran out",
                hint="raise wavespeed.timeouts.overall, or try again later"
                + (f"; the task {task_id} may still finish" if task_id else ""),
                task_id=task_id)

    def _pause(self, seconds: float, ctx: CallContext, what: str, task_id: str | None) -> None:
        """Sleep (cancellable), never past the deadline."""
        seconds = max(0.0, min(seconds, ctx.deadline.remaining()))
        if ctx.cancel is not None:
            if ctx.cancel.wait(seconds):
                raise CancelledError("cancelled while waiting for the service")
        elif seconds > 0:
            self._sleep(seconds)
        self._checkpoint(ctx, what, task_id)


def _discard(response: httpx.Response) -> None:
    response.read()


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
            exc.args = tuple(scrub(a, secret) if isinstance(a, str) else a for a in exc.args)
        todo += [exc.__cause__, exc.__context__]


__all__ = ["CallContext", "ClientStats", "Prediction", "WaveSpeedClient", "scrub"]
