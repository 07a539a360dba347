"""Reading the service's answers: envelopes, predictions, upload tickets, the balance.

Pure functions of an ``httpx.Response`` (its body is read here). Anything
malformed raises ``ProtocolError``; the request loop decides whether that is
worth another try (an idempotent GET) or means the task may exist (a submit).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from bgremove.errors import ProtocolError
from bgremove.wavespeed._errors import parse_json, protocol_error

log = logging.getLogger(__name__)

#: Statuses after which a task will not change any more.
TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})


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


@dataclass(frozen=True)
class UploadTicket:
    """Step 1 of the direct upload: where to PUT the bytes, and the URL they will have."""

    put_url: str
    headers: dict[str, str]
    download_url: str


def read_json(response: httpx.Response, what: str) -> Any:
    response.read()
    body = parse_json(response)
    if body is None:
        raise protocol_error(what, f"the answer (HTTP {response.status_code}) is not JSON")
    return body


def _data(body: Any) -> Any:
    return body.get("data") if isinstance(body, dict) else None


def parse_prediction(response: httpx.Response, what: str,
                     task_id: str | None = None) -> Prediction:
    """The prediction in an envelope; an error answer naming a task counts as processing."""
    body = read_json(response, what)
    data = _data(body)
    if not isinstance(data, dict):
        raise protocol_error(what, "the answer has no data object", task_id=task_id)
    prediction = prediction_from(data, what, task_id, error_answer=not response.is_success,
                                 envelope=body)
    if prediction.status == "completed" and not prediction.outputs:
        raise protocol_error(what, "the task completed without outputs", task_id=prediction.id)
    return prediction


def prediction_from(data: dict[str, Any], what: str, task_id: str | None = None, *,
                    error_answer: bool = False, envelope: Any = None) -> Prediction:
    """A prediction object (``data`` of an answer, or an item of the list)."""
    pid, status = data.get("id", task_id), data.get("status")
    if not isinstance(pid, str) or not pid:
        raise protocol_error(what, "the answer has no task id", task_id=task_id)
    if error_answer:
        status = status if isinstance(status, str) and status else "processing"
    if not isinstance(status, str) or not status:
        raise protocol_error(what, "the answer has no task status", task_id=pid)
    outputs = data.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise protocol_error(what, "the task's outputs are not a list of strings", task_id=pid)
    code = data.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        # a task code (1xxx/5xxx) may sit in the envelope instead
        top = envelope.get("code") if isinstance(envelope, dict) else None
        code = top if isinstance(top, int) and not isinstance(top, bool) and top >= 1000 else None
    error = data.get("error")
    timings = data.get("timings")
    inference = timings.get("inference") if isinstance(timings, dict) else None
    model = data.get("model")
    return Prediction(
        id=pid, status=status.lower(), outputs=tuple(outputs),
        error=str(error) if error else None, code=code,
        model=model if isinstance(model, str) else None,
        inference_ms=float(inference) if isinstance(inference, (int, float)) else None)


def parse_submit(response: httpx.Response, sync: bool) -> Prediction:
    """A submit's prediction; a sync wait that ended before its task comes back processing.

    The signs of that: code 5004, an error saying it timed out, or an error
    status (a 504) whose body names the task. The caller then polls the id.
    """
    prediction = parse_prediction(response, "submit")
    if sync and prediction.status != "completed" and (
            prediction.code == 5004 or not response.is_success
            or "timed out" in (prediction.error or "").lower()):
        return Prediction(id=prediction.id, status="processing", code=prediction.code,
                          error=prediction.error, model=prediction.model)
    return prediction


@dataclass(frozen=True)
class Listed:
    """One item of the prediction list."""

    prediction: Prediction
    created_at: float | None  # Unix time; None when missing or unreadable
    input_image: str | None  # ``input.image``, when the list carries it


@dataclass(frozen=True)
class ListPage:
    """One page of ``POST /api/v3/predictions``."""

    items: tuple[Listed, ...]
    total: int | None
    server_time: float | None  # the answer's Date header (Unix time), to measure clock skew


def parse_list_page(response: httpx.Response) -> ListPage:
    """A page of the prediction list: ``data {page, total, items}``."""
    data = _data(read_json(response, "list"))
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise protocol_error("list", "the answer has no list of items")
    listed = []
    for item in items:
        if not isinstance(item, dict):
            raise protocol_error("list", "an item of the list is not an object")
        given = item.get("input")
        image = given.get("image") if isinstance(given, dict) else None
        listed.append(Listed(prediction_from(item, "list"),
                             parse_time(item.get("created_at")),
                             image if isinstance(image, str) and image else None))
    total = data.get("total")
    return ListPage(tuple(listed),
                    total if isinstance(total, int) and not isinstance(total, bool) else None,
                    _date_header(response))


def parse_time(value: Any) -> float | None:
    """An ISO 8601 time (``2026-11-30T06:40:00.123Z``; no zone means UTC) as Unix time."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10 reads only 3 or 6 digits of a fraction: pad or cut to 6
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _date_header(response: httpx.Response) -> float | None:
    raw = response.headers.get("date")
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_ticket(response: httpx.Response, base: httpx.URL) -> UploadTicket | None:
    """The direct-upload ticket, or None when it is unusable (then the binary upload)."""
    try:
        body = read_json(response, "upload")
    except ProtocolError:
        log.warning("the upload ticket is not JSON: using the binary upload")
        return None
    data = _data(body)
    instruction = data.get("upload") if isinstance(data, dict) else None
    download_url = data.get("download_url") if isinstance(data, dict) else None
    headers = (instruction.get("headers") or {}) if isinstance(instruction, dict) else None
    if not (isinstance(instruction, dict) and isinstance(download_url, str) and download_url
            and str(instruction.get("method", "")).upper() == "PUT"
            and isinstance(instruction.get("url"), str) and instruction["url"]
            and isinstance(headers, dict)):
        log.warning("malformed upload ticket from the service: using the binary upload")
        return None
    return UploadTicket(str(base.join(instruction["url"])),
                        {str(k): str(v) for k, v in headers.items()}, download_url)


def parse_upload_url(response: httpx.Response) -> str:
    """``data.download_url`` of a binary upload's answer."""
    data = _data(read_json(response, "upload"))
    url = data.get("download_url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise protocol_error("upload", "the upload answer has no download_url")
    return url


def parse_balance(response: httpx.Response) -> float:
    """The balance: ``data.balance``, or ``data`` itself when it is a number."""
    data = _data(read_json(response, "balance"))
    value = data.get("balance") if isinstance(data, dict) else data
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise protocol_error("balance", "the answer has no balance")
    return float(value)


def discard(response: httpx.Response) -> None:
    """Read and drop a body (the upload PUT's answer)."""
    response.read()
