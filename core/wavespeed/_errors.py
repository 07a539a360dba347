"""Turning what the service (or the network) did into ``bgremove.errors`` classes, in one place.

``STATUS_ERRORS`` is the one status table; ``status_error`` builds the error
for a non-2xx answer, ``transport_error`` for an httpx exception,
``task_error`` for a prediction that ended badly. Every message says what
happened and what to do next; the API key is scrubbed from anything the
server or httpx wrote before it goes into a message.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from bgremove.errors import (
    AccountSuspendedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceConnectionError,
    ServiceError,
    ServiceTimeoutError,
    SubmitUncertainError,
    TaskFailedError,
)
from bgremove.logs import redact

#: status -> (error class, what happened, what to do next)
STATUS_ERRORS: dict[int, tuple[type[APIStatusError], str, str]] = {
    400: (BadRequestError, "the service rejected the request as invalid",
          "retrying the same request will not help: check the image and the options"),
    401: (AuthenticationError, "the service refused the API key",
          "check WAVESPEED_API_KEY; a new key needs a top-up before it works"),
    403: (AccountSuspendedError, "the WaveSpeed account is suspended or not allowed this call",
          "check the account on wavespeed.ai or contact WaveSpeed support"),
    404: (APIStatusError, "the service does not know this address",
          "check wavespeed.base_url (or WAVESPEED_BASE_URL)"),
    413: (PayloadTooLargeError, "the upload is too large for the service",
          "lower wavespeed.max_upload_bytes or wavespeed.max_upload_side"),
    429: (RateLimitError, "the service is rate limiting this account",
          "set wavespeed.account_level (or --account-level) and bgremove paces itself to "
          "the account's limits; or try again later"),
}
_SERVER = (ServerError, "the service failed on its side",
           "try again later; if it persists, check status.wavespeed.ai")
_OTHER = (APIStatusError, "the service answered with an unexpected status",
          "try again later; if it persists, report it with the request id")
# a result's own address (a signed storage URL) refusing its GET is about that file, not the
# account: storage answers 403 for an expired or deleted object
_DOWNLOAD_REFUSED = (APIStatusError, "the result's address refused the download",
                     "the result may have expired (results are kept 7 days); "
                     "submit the image again")


def parse_json(response: httpx.Response) -> Any:
    """The decoded body, or None when it is not JSON (or nested too deep to parse)."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def envelope_message(body: Any) -> str | None:
    """The server's own words from an error body: ``message``, ``error``, ``data.error``."""
    if not isinstance(body, dict):
        return None
    for key in ("message", "error", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value.strip() and value.strip().lower() != "success":
            return value.strip()
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"].strip():
        return str(data["error"]).strip()
    return None


def envelope_task_id(body: Any) -> str | None:
    """``data.id`` of an envelope, if it names a task."""
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, dict):
            task_id = data.get("id")
            if isinstance(task_id, str) and task_id.strip():
                return task_id.strip()
    return None


def request_id_of(response: httpx.Response) -> str | None:
    value = response.headers.get("x-request-id") or response.headers.get("request-id")
    return str(value) if value else None


def status_error(response: httpx.Response, *, what: str, secret: str | None,
                 task_id: str | None = None, retry_after: float | None = None,
                 note: str | None = None) -> ServiceError:
    """The error for a non-2xx answer to ``what`` ("submit", "result", ...)."""
    status = response.status_code
    if status == 408:
        return ServiceTimeoutError(
            f"{what}: the service timed out waiting for the request (HTTP 408)",
            hint="check the network, or raise wavespeed.timeouts; then try again",
            task_id=task_id)
    cls, happened, next_step = (
        _DOWNLOAD_REFUSED if what == "download" and status in (401, 403)
        else STATUS_ERRORS.get(status, _SERVER if 500 <= status <= 599 else _OTHER))
    body = parse_json(response)
    server_says = envelope_message(body)
    if server_says is None and body is None and response.content:
        # not JSON (an HTML error page, a storage service's XML): show its start
        server_says = " ".join(response.text[:160].split()) or None
    request_id = request_id_of(response)
    message = f"{what}: {happened} (HTTP {status})"
    if server_says:
        message += f": {server_says}"
    if request_id:
        message += f" [request id {request_id}]"
    if note:
        message += f"; {note}"
    return cls(redact(message, secret), status_code=status, hint=next_step,
               request_id=request_id, task_id=task_id, retry_after=retry_after)


def deadline_error(what: str, task_id: str | None,
                   seconds: float | None = None) -> ServiceTimeoutError:
    """The overall time limit for one image (``wavespeed.timeouts.overall``) ran out."""
    limit = f" ({seconds:g} s)" if seconds else ""
    return ServiceTimeoutError(
        f"{what}: the overall time limit for this image{limit} ran out",
        hint="raise wavespeed.timeouts.overall, or try again later"
        + (f"; the task {task_id} may still finish" if task_id else ""),
        task_id=task_id)


def transport_error(exc: httpx.HTTPError, *, what: str, secret: str | None,
                    task_id: str | None = None, deadline_hit: bool = False,
                    timeout: float | None = None) -> ServiceError:
    """The error for an httpx exception raised by a call to ``what``."""
    detail = redact(str(exc) or type(exc).__name__, secret)
    if deadline_hit:
        return deadline_error(what, task_id)
    if isinstance(exc, httpx.TimeoutException):
        limit = f" after {timeout:g} s" if timeout else ""
        return ServiceTimeoutError(
            f"{what}: no answer from the service{limit} ({type(exc).__name__})",
            hint="check the network, or raise the matching wavespeed.timeouts value",
            task_id=task_id)
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
        return ServiceConnectionError(
            f"{what}: cannot reach the service or the connection dropped: {detail}",
            hint="check the network and wavespeed.base_url, then try again",
            task_id=task_id)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return ServiceConnectionError(
            f"{what}: bad service address: {detail}",
            hint="check wavespeed.base_url (or WAVESPEED_BASE_URL)", task_id=task_id)
    return ProtocolError(f"{what}: unusable answer from the service: {detail}",
                         hint="try again later; if it persists, report it", task_id=task_id)


def submit_uncertain(reason: str, *, task_id: str | None = None) -> SubmitUncertainError:
    """A submit whose answer was lost: the task may exist and be billed."""
    return SubmitUncertainError(
        f"submit: {reason}; the task may have been created and billed",
        hint="look for the task in the WaveSpeed dashboard before submitting this image "
        "again, or run it again and accept a possible second charge",
        task_id=task_id)


def protocol_error(what: str, problem: str, *, task_id: str | None = None) -> ProtocolError:
    return ProtocolError(f"{what}: {problem}",
                         hint="try again; if it persists, check wavespeed.base_url points at "
                         "the WaveSpeed API", task_id=task_id)


#: Task codes the docs name (``data.code`` of a failed prediction).
TASK_CODES: dict[int, str] = {
    1200: "the image was flagged by content moderation",
    1400: "a required parameter was missing",
    1401: "a parameter was invalid",
    1402: "the service could not fetch the uploaded image (the URL expired or is unreachable)",
    1403: "the task failed",
    1405: "the task failed",
    5000: "the service had an internal error",
    5003: "the service is temporarily unavailable",
    5004: "the task timed out on the service",
}


def task_error(task_id: str, status: str, code: int | None, error: str | None,
               *, secret: str | None = None) -> TaskFailedError:
    """The error for a prediction that ended ``failed``/``cancelled``/``timeout``/``deleted``."""
    parts = [f"task {task_id} is unknown to the service (expired or never created)"
             if status == "not_found" else f"task {task_id} ended {status}"]
    if code is not None:
        parts.append(f"code {code}: {TASK_CODES.get(code, 'no description')}")
    if error:
        parts.append(redact(error.strip(), secret))
    if status in ("deleted", "not_found"):
        hint = "results are kept 7 days; submit the image again"
    elif (code is not None and 5000 <= code < 6000) or status == "timeout":
        hint = "a service-side problem: try again later"
    elif code == 1200:
        hint = "this image will not be processed; use another image or the local backend"
    elif code is not None and 1000 <= code < 2000:
        hint = "the request must change before it can succeed; retrying it will not help"
    else:
        hint = "try again; if it fails the same way, the image cannot be processed"
    return TaskFailedError(": ".join(parts), code=code, status=status, hint=hint,
                           task_id=task_id)
