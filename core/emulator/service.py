"""The emulated service's behaviour, without HTTP: keys, uploads, tasks, the list, limits.

The HTTP side (``bgremove.emulator.http``) parses requests, calls these methods and turns their
results, or an ``ApiError``/``StorageError``, into answers. Tasks run on threads of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from bgremove.emulator.faults import Fault, FaultPlan, task_error
from bgremove.emulator.model import AlphaFn, cutout_png, decode_image, load_model
from bgremove.emulator.options import LOOPBACK_HOSTS, MODEL_ID, EmulatorOptions
from bgremove.emulator.stats import Stats
from bgremove.emulator.store import TERMINAL, BoundedStore, Media, Store, Task, Ticket

log = logging.getLogger(__name__)

#: The list route's status filter values; "processing" also matches tasks not yet started.
LIST_STATUSES = ("completed", "failed", "processing")


class ApiError(Exception):
    """An API answer other than success: the status, the envelope's message and data."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 data: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.data = status, message, headers or {}, data


class StorageError(Exception):
    """A storage bucket's refusal of a presigned PUT (answered as XML, like S3)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message


class Service:
    """The fake WaveSpeed service. ``start()`` loads the model; ``stop()`` ends every task."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.plan = FaultPlan(tuple(options.faults), seed=options.seed)
        self.stats = Stats(options.max_stored)
        self.store = Store(options, self.now)
        self._own_netlocs: set[str] = set()
        self._cond = threading.Condition()  # guards _running, _stopping, _task_threads
        self._running = 0
        self._stopping = False
        # Sleepers wait on events, not on _cond: a task's end must not wake hundreds of them.
        self._stopped = threading.Event()
        self._delays_over = threading.Event()  # replaced by each end_delays()
        # Outputs by the sha256 of the input: the model is deterministic, so the same upload
        # costs its decode, mask and PNG encode once (on 24 MP photos about 1.5 s of CPU).
        self._made: BoundedStore[str, bytes] = BoundedStore(
            options.max_stored, options.max_stored_bytes, len)
        # Cut-outs made at once, like a GPU's queue: each holds the decoded image (about
        # 250 MB for a 24 MP photo), and a task's time still counts towards its delay.
        self._model_slots = threading.BoundedSemaphore(os.cpu_count() or 2)
        self._task_threads: set[threading.Thread] = set()
        self._submit_times: list[float] = []
        self._rate_lock = threading.Lock()
        self._seq = itertools.count()
        self._alpha: AlphaFn | None = None
        self._close_model: Callable[[], None] = lambda: None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._alpha, self._close_model = load_model(self.options.model)
        with self._cond:
            self._stopping = False
        self._stopped.clear()
        self._delays_over = threading.Event()

    def serve_at(self, port: int) -> None:
        """Learn the port served on, to recognise URLs that point at this service's files."""
        self._own_netlocs = {f"{h}:{port}" for h in (*LOOPBACK_HOSTS, "[::1]", self.options.host)}

    def begin_stop(self) -> None:
        """Wake every waiter (queued tasks, sync submits, delays) so they end at once."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stopped.set()
        self._delays_over.set()
        for task in self.store.tasks.values():
            task.done.set()

    def stop(self) -> None:
        with self._cond:
            threads = list(self._task_threads)
        for thread in threads:
            thread.join(5)
        self._close_model()

    def now(self) -> float:
        """The service's clock (this machine's plus ``clock_skew``), in epoch seconds."""
        return time.time() + self.options.clock_skew

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) when the service is stopping."""
        return self._stopped.wait(seconds)

    def end_delays(self) -> None:
        """Every task submitted by now ends its ``delay`` at once, started or not (later
        tasks still wait)."""
        with self._cond:
            over, self._delays_over = self._delays_over, threading.Event()
        over.set()

    def set_faults(self, *faults: Fault) -> None:
        self.plan = FaultPlan(tuple(faults), seed=self.options.seed)

    # -- the key --------------------------------------------------------------------------------

    def authorise(self, header: str, *, account: bool = True) -> None:
        """Check an ``Authorization`` header; raise the 401/403 the service would answer.

        ``account``: the account's state matters too (not for the emulator's control routes).
        """
        scheme, _, key = header.partition(" ")
        key = key.strip()
        wanted = self.options.api_key
        if scheme.lower() != "bearer" or not key:
            status, message = 401, "Unauthorized: missing API key; send Authorization: Bearer <key>"
        elif wanted is not None and not hmac.compare_digest(key.encode(), wanted.encode()):
            status, message = 401, "Unauthorized: invalid API key"
        elif not account:
            return
        elif self.options.key_state == "inactive":
            status, message = 401, ("Unauthorized: API key not activated; top up your account "
                                    "to activate it")
        elif self.options.key_state == "suspended":
            status, message = 403, "Forbidden: account suspended"
        else:
            return
        self.stats.add("auth_failures")
        raise ApiError(status, message)

    def signed(self, path: str) -> str:
        """``path`` with the query that lets a file route serve it (a storage bucket's or a
        CDN's signed URL): signed with the key when open to the network, else a token check."""
        if self.options.allow_remote:
            return f"{path}?signature={self._signature(path)}"
        return path

    def check_signature(self, path: str, query: str) -> None:
        """Refuse a file route whose URL was not signed by this service (open to the network)."""
        if not self.options.allow_remote:
            return
        given = parse_qs(query).get("signature", [""])[0]
        if not hmac.compare_digest(given.encode(), self._signature(path).encode()):
            raise StorageError(403, "AccessDenied", "the URL's signature does not match")

    def _signature(self, path: str) -> str:
        assert self.options.api_key is not None
        return hmac.new(self.options.api_key.encode(), path.encode(), hashlib.sha256).hexdigest()

    # -- uploads --------------------------------------------------------------------------------

    def too_large(self, size: int | None) -> ApiError:
        got = f"{size} bytes" if size is not None else "the request"
        return ApiError(413, f"Payload too large: {got} is over the limit of "
                        f"{self.options.max_upload_bytes} bytes")

    def ticket(self, request: dict[str, Any], public_base: str) -> dict[str, Any]:
        """A direct upload's first step: where to PUT the bytes and the URL they will have."""
        filename, size = request.get("filename"), request.get("size")
        content_type = request.get("content_type") or "application/octet-stream"
        if not isinstance(filename, str) or not filename or "/" in filename:
            raise ApiError(400, "Invalid parameters: 'filename' is required")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(400, "Invalid parameters: 'size' must be a whole number of bytes")
        if not isinstance(content_type, str):
            raise ApiError(400, "Invalid parameters: 'content_type' must be text")
        if size > self.options.max_upload_bytes:
            raise self.too_large(size)
        token = uuid.uuid4().hex
        self.store.tickets.put(token, Ticket(filename, content_type, size))
        put_url = self.signed(f"/upload/{token}")
        if not self.options.allow_remote:  # the token alone lets it in; it looks presigned
            put_url += (f"?expires={int(time.time()) + 3600}"
                        f"&signature={hashlib.sha256(token.encode()).hexdigest()[:32]}")
        return {
            "upload": {"method": "PUT", "url": f"{public_base}{put_url}",
                       "headers": {"Content-Type": content_type}},
            "download_url": public_base + self.signed(f"/media/{token}/{quote(filename)}"),
            "filename": filename,
            "size": size,
        }

    def put(self, token: str, content_type: str | None, body: bytes, *,
            began: float | None = None) -> str:
        """Store a presigned PUT's bytes (``began``: when its request started, epoch
        seconds); its ETag."""
        ticket = self.store.tickets.get(token)
        if ticket is None:
            raise StorageError(403, "AccessDenied")
        if content_type != ticket.content_type:
            raise StorageError(403, "SignatureDoesNotMatch",
                               "Content-Type differs from the signed upload headers")
        if len(body) > self.options.max_upload_bytes:
            raise self.too_large(len(body))
        if len(body) != ticket.size:
            raise StorageError(400, "BadDigest", f"got {len(body)} bytes, "
                               f"the ticket says {ticket.size}")
        self._keep(token, Media(ticket.filename, ticket.content_type, body, self.now()),
                   len(body), began)
        return hashlib.md5(body).hexdigest()

    def upload(self, filename: str, content_type: str, data: bytes, public_base: str, *,
               received: int, began: float | None = None) -> dict[str, Any]:
        """The binary upload: store the form's file (``received``: the request body's size,
        form framing included; ``began``: when its request started); what the service
        answers."""
        if len(data) > self.options.max_upload_bytes:
            raise self.too_large(len(data))
        token = uuid.uuid4().hex
        self._keep(token, Media(filename, content_type, data, self.now()), received, began)
        return {"type": content_type.split("/")[0] or "file",
                "download_url": public_base + self.signed(f"/media/{token}/{quote(filename)}"),
                "filename": filename, "size": len(data)}

    def _keep(self, token: str, media: Media, received: int, began: float | None) -> None:
        self.store.media.put(token, media)
        ended = time.time()
        self.stats.upload({"filename": media.filename, "content_type": media.content_type,
                           "bytes": len(media.data), "received": received,
                           "sha256": hashlib.sha256(media.data).hexdigest(),
                           "began": ended if began is None else began, "ended": ended})

    # -- tasks ----------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any], public_base: str,
               request_host: str | None) -> Task:
        """Check a submit and start its task (or raise the 400/429 the service answers)."""
        image = request.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ApiError(400, "Invalid parameters: 'image' is required (a URL)")
        if image.startswith("data:"):
            raise ApiError(400, "Invalid parameters: 'image' must be a URL; data URIs are not "
                           "supported by this model (upload the file first)")
        for name in ("enable_base64_output", "enable_sync_mode"):
            if not isinstance(request.get(name, False), bool):
                raise ApiError(400, f"Invalid parameters: '{name}' must be a boolean")
        retry_in = self._rate_limited()
        if retry_in is not None:
            self.stats.add("rate_limited")
            headers = {}
            if self.options.rate_limit_retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(retry_in)))
            raise ApiError(429, "Too many requests: the images-per-minute limit of your account "
                           "level is reached", headers=headers)
        fail = self.plan.pick("submit", ("fail_task",))
        if fail:
            self.stats.fault("fail_task")
        image_url = image.strip()
        content = self._own_file(image_url, request_host)
        task = Task(id=uuid.uuid4().hex, created=math.floor(self.now() * 1000) / 1000,
                    image_url=image_url, image=content,
                    base64_output=bool(request.get("enable_base64_output")),
                    public_base=public_base, input=request, seq=next(self._seq),
                    fail_code=fail[0].code if fail else None,
                    # taken now, not when its thread starts: an end_delays() from here on
                    # ends this task's delay even if it has not started yet
                    delays_over=self._delays_over)
        task.submitted = task.prediction()  # before the task can run
        self.store.tasks.put(task.id, task)
        self.stats.task(hashlib.sha256(content).hexdigest() if content is not None else None)
        thread = threading.Thread(target=self._run_task, args=(task,), daemon=True,
                                  name=f"emulator-task-{task.id[:8]}")
        with self._cond:
            self._task_threads.add(thread)
        thread.start()
        return task

    def wait_sync(self, task: Task) -> bool:
        """Wait as a sync-mode submit does; False (and counted) when it timed out."""
        if task.done.wait(self.options.sync_timeout) and task.status in TERMINAL:
            return True
        self.stats.add("sync_timeouts")
        return False

    def result(self, task_id: str) -> dict[str, Any]:
        task = self.store.task(task_id)
        if task is None:
            raise ApiError(404, f"Prediction {task_id} not found")
        return task.prediction()

    def list_page(self, request: dict[str, Any]) -> dict[str, Any]:
        """The documented prediction list: ``{page, total, items}``, newest first."""
        page, size, filters = _list_query(request, self.options.list_page_size_max)
        items = self.list_predictions(with_input=self.options.list_input, **filters)
        return {"page": page, "total": len(items),
                "items": items[(page - 1) * size:page * size]}

    def list_predictions(self, *, model: str | None = None, status: str | None = None,
                         after: float | None = None, before: float | None = None,
                         with_input: bool = False) -> list[dict[str, Any]]:
        """The live predictions matching the filters (times in epoch seconds), newest first."""
        tasks = [t for t in self.store.live_tasks()
                 if (model is None or model == MODEL_ID)
                 and (status is None or _list_status(t.status) == status)
                 and (after is None or t.created >= after)
                 and (before is None or t.created <= before)]
        tasks.sort(key=lambda t: (t.created, t.seq), reverse=True)
        return [t.prediction(with_input=with_input) for t in tasks]

    def balance(self) -> dict[str, Any]:
        return {"balance": self.options.balance}

    def snapshot(self) -> dict[str, Any]:
        """The counters (see ``Emulator.stats``), tasks running now and what is stored."""
        snapshot = self.stats.snapshot()
        with self._cond:
            snapshot["running_tasks"] = self._running
        snapshot["stored"] = self.store.sizes()
        snapshot["evicted"] = self.store.evicted
        return snapshot

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted task has ended; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._task_threads:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def reset_stats(self) -> None:
        self.stats.reset()
        self.plan.reset()
        with self._rate_lock:
            self._submit_times.clear()

    # -- internals ------------------------------------------------------------------------------

    def _rate_limited(self) -> float | None:
        """Seconds until a submit slot frees when over images_per_minute, else None (and count)."""
        limit = self.options.images_per_minute
        if not limit:
            return None
        now = time.monotonic()
        window = self.options.rate_window
        with self._rate_lock:
            self._submit_times = [t for t in self._submit_times if t > now - window]
            if len(self._submit_times) >= limit:
                return max(0.0, self._submit_times[0] + window - now)
            self._submit_times.append(now)
        return None

    def _own_file(self, url: str, request_host: str | None) -> bytes | None:
        """The bytes behind ``url`` when it points at this service's store."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return None
        own = set(self._own_netlocs)
        if request_host:
            own.add(request_host.lower())
        if parts.netloc.lower() not in own:
            return None
        segments = parts.path.split("/")
        if len(segments) >= 3 and segments[1] == "media":
            media = self.store.file(segments[2])
            return media.data if media else None
        if len(segments) == 3 and segments[1] == "outputs" and segments[2].endswith(".png"):
            return self.store.output(segments[2][:-4])
        return None

    def _run_task(self, task: Task) -> None:
        try:
            if not self._acquire_slot():
                return
            try:
                self._process(task)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
        except Exception:  # a bug in the emulator must still end the task
            log.exception("emulator task %s crashed", task.id)
            self._finish(task, "failed", code=5000, error=task_error(5000))
        finally:
            task.done.set()
            with self._cond:
                self._task_threads.discard(threading.current_thread())
                self._cond.notify_all()

    def _acquire_slot(self) -> bool:
        cap = self.options.concurrency_cap
        with self._cond:
            while cap and self._running >= cap and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return False
            self._running += 1
            self.stats.high_water("max_concurrent_tasks", self._running)
        return True

    def _process(self, task: Task) -> None:
        task.status = "processing"
        started = time.monotonic()
        outcome: tuple[str, int | None, str, bytes | None]
        if task.fail_code is not None:
            outcome = ("failed", task.fail_code, task_error(task.fail_code), None)
        elif task.image is None:
            outcome = ("failed", 1402, task_error(1402), None)
        else:
            outcome = self._cut_out(task.image)
        remaining = self.options.delay - (time.monotonic() - started)
        if remaining > 0:
            task.delays_over.wait(remaining)
            if self._stopped.is_set():
                return
        task.inference_ms = round((time.monotonic() - started) * 1000)
        status, code, error, png = outcome
        if png is not None:
            if task.base64_output:
                task.outputs = [base64.b64encode(png).decode("ascii")]
            else:
                self.store.outputs.put(task.id, png)
                task.outputs = [task.public_base + self.signed(f"/outputs/{task.id}.png")]
        self._finish(task, status, code=code, error=error)

    def _cut_out(self, image_bytes: bytes) -> tuple[str, int | None, str, bytes | None]:
        """The model's outcome for an input: (status, code, error, output PNG)."""
        digest = hashlib.sha256(image_bytes).hexdigest()
        cutout = self._made.get(digest)
        if cutout is None:
            with self._model_slots:
                if self._stopped.is_set():  # stopping: the queue is not worked off
                    return ("failed", 5003, task_error(5003), None)
                cutout = self._made.get(digest)  # made while this task waited for a slot?
                if cutout is None:
                    try:
                        image = decode_image(image_bytes)
                    except ValueError as exc:
                        return ("failed", 1401, f"Invalid parameter: image: {exc}", None)
                    assert self._alpha is not None
                    cutout = cutout_png(image, self._alpha(image), self.options.output_max_side,
                                        self.options.output_colours)
                    del image
                    self._made.put(digest, cutout)
        return ("completed", None, "", cutout)

    def _finish(self, task: Task, status: str, *, code: int | None, error: str) -> None:
        task.code, task.error, task.status = code, error, status
        self.stats.add("tasks_completed" if status == "completed" else "tasks_failed")
        log.debug("task %s %s%s", task.id, status, f" (code {code})" if code else "")


def _list_status(status: str) -> str:
    """The list filter value a task status falls under."""
    return status if status in TERMINAL else "processing"


def _list_query(request: dict[str, Any], max_size: int) -> tuple[int, int, dict[str, Any]]:
    """(page, page size, filters for ``list_predictions``) of a list request."""
    page, size = request.get("page", 1), request.get("page_size", 100)
    for name, value in (("page", page), ("page_size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"Invalid parameters: '{name}' must be a whole number from 1")
    filters: dict[str, Any] = {}
    model, status = request.get("model"), request.get("status")
    if model is not None:
        if not isinstance(model, str):
            raise ApiError(400, "Invalid parameters: 'model' must be text")
        filters["model"] = model
    if status is not None:
        if status not in LIST_STATUSES:
            raise ApiError(400, f"Invalid parameters: 'status' must be one of "
                           f"{', '.join(LIST_STATUSES)}")
        filters["status"] = status
    for name, key in (("created_after", "after"), ("created_before", "before")):
        value = request.get(name)
        if value is None:
            continue
        try:
            when = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            when = None
        if when is None:
            raise ApiError(400, f"Invalid parameters: '{name}' must be an ISO 8601 time")
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        filters[key] = when.timestamp()
    return page, min(size, max_size), filters
