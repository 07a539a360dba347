"""A WaveSpeed API emulator: a real HTTP/1.1 server speaking the background-remover contract.

Routes (see ``docs/wavespeed-api.md``):

    POST /api/v3/wavespeed-ai/image-background-remover   submit            (route "submit")
    GET  /api/v3/predictions/{id}/result, /{id}           result            ("result")
    POST /api/v3/media/uploads                            upload ticket     ("upload")
    PUT  /upload/{token}                                  presigned upload  ("upload_put")
    POST /api/v3/media/upload/binary                      multipart upload  ("upload_binary")
    GET  /media/{token}/{filename}                        uploaded file     ("media")
    GET  /outputs/{id}.png                                task output       ("download")
    POST /api/v3/predictions                              prediction list   ("list")
    GET  /api/v3/balance                                  balance           ("balance")
    GET  /_emulator/stats, POST /_emulator/reset          control           ("control")

Every ``/api/v3`` call needs ``Authorization: Bearer <key>``; the presigned PUT
and the file downloads do not (like a storage bucket and a CDN). Uploaded files,
outputs and tasks are kept in memory for ``retention`` seconds (7 days, like the
service), the oldest dropped sooner beyond ``max_stored`` entries or ``max_stored_bytes``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.message import Message
from email.parser import HeaderParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

from bgremove.emulator.faults import Fault, FaultPlan, task_error
from bgremove.emulator.model import AlphaFn, cutout_png, decode_image, load_model
from bgremove.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_ID = "wavespeed-ai/image-background-remover"
SUBMIT_PATH = f"/api/v3/{MODEL_ID}"
DEFAULT_API_KEY = "emulator-key-0123456789"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
TERMINAL = ("completed", "failed")
WEEK = 7 * 24 * 3600.0
#: The list route's status filter values; "processing" also matches tasks not yet started.
LIST_STATUSES = ("completed", "failed", "processing")
SYNC_TIMEOUT_STYLES = ("504", "processing", "gateway", "drop")
_BODY_SLACK = 256 * 1024  # multipart framing on top of the file size limit
#: Account levels from the docs: (concurrent tasks, images per minute).
ACCOUNT_LEVELS = {"bronze": (2, 2), "silver": (300, 500), "gold": (3000, 3000),
                  "ultra": (10000, 5000)}


@dataclass(frozen=True)
class EmulatorOptions:
    """How the emulator behaves. Every field has a default that acts like a healthy service."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    api_key: str | None = None  # None: any non-empty bearer key is accepted
    key_state: str = "active"  # "inactive": 401 key not activated; "suspended": 403
    model: str = "keyout"  # or "local" (bgremove.local)
    delay: float = 0.0  # seconds each task takes (inference), at least
    sync_timeout: float | None = None  # a sync submit gives up waiting after this
    # "504" (a 504 carrying the prediction), "processing" (200, status processing, code 5004),
    # "gateway" (a proxy's bare 504, no id) or "drop" (the connection closes, no answer)
    sync_timeout_style: str = "504"
    concurrency_cap: int = 0  # tasks running at once; the rest wait (Bronze: 2). 0: no cap
    images_per_minute: int = 0  # submits per window beyond this get 429. 0: no limit
    rate_window: float = 60.0  # seconds of the images-per-minute window
    rate_limit_retry_after: bool = True  # send Retry-After with the images-per-minute 429
    max_upload_bytes: int = 20 * 1024 * 1024  # larger uploads get 413
    max_stored: int = 10_000  # uploaded files, outputs and tasks kept (oldest dropped)
    max_stored_bytes: int = 1024 * 1024 * 1024
    balance: float = 100.0
    faults: tuple[Fault, ...] = ()
    seed: int = 0  # for faults with a random rate
    idle_timeout: float = 30.0  # an idle keep-alive connection is closed after this
    retention: float = WEEK  # seconds tasks, outputs and uploads are kept and listed
    list_route: bool = True  # False: POST /api/v3/predictions answers 404 (an API without it)
    list_input: bool = False  # list items carry the submit's ``input`` (the docs show none)
    list_page_size_max: int = 100  # a larger page_size is served as this many
    clock_skew: float = 0.0  # seconds the service's clock is ahead of this machine's

    def __post_init__(self) -> None:
        if self.key_state not in ("active", "inactive", "suspended"):
            raise ConfigError(f"unknown key_state {self.key_state!r}",
                              hint="allowed: active, inactive, suspended")
        if self.sync_timeout_style not in SYNC_TIMEOUT_STYLES:
            raise ConfigError(f"unknown sync_timeout_style {self.sync_timeout_style!r}",
                              hint=f"allowed: {', '.join(SYNC_TIMEOUT_STYLES)}")
        if self.delay < 0 or (self.sync_timeout is not None and self.sync_timeout < 0):
            raise ConfigError("delay and sync_timeout must not be negative")
        if self.retention <= 0 or self.list_page_size_max < 1:
            raise ConfigError("retention and list_page_size_max must be positive")


K = TypeVar("K")
V = TypeVar("V")


class BoundedStore(Generic[K, V]):
    """An insertion-ordered map that drops its oldest entries beyond a count or byte budget."""

    def __init__(self, max_items: int, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._max_items, self._max_bytes, self._size_of = max_items, max_bytes, size_of
        self._bytes = 0
        self._lock = threading.Lock()
        self.evicted = 0

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._size_of(self._items.pop(key))
            self._items[key] = value
            self._bytes += self._size_of(value)
            while len(self._items) > 1 and (
                    len(self._items) > self._max_items or self._bytes > self._max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size_of(old)
                self.evicted += 1

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[V]:
        with self._lock:
            return list(self._items.values())


@dataclass
class _Media:
    filename: str
    content_type: str
    data: bytes
    created: float  # the service's clock


@dataclass
class _Ticket:
    filename: str
    content_type: str
    size: int


@dataclass
class _Task:
    id: str
    created: float  # the service's clock, whole milliseconds (what created_at shows)
    image_url: str
    image: bytes | None  # None: not one of ours (the task fails with 1402)
    base64_output: bool
    public_base: str
    input: dict[str, Any]  # the submit's JSON body
    seq: int  # submit order, to sort tasks created in the same millisecond
    fail_code: int | None = None
    status: str = "created"
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    inference_ms: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def prediction(self, *, with_input: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "model": MODEL_ID,
            "outputs": list(self.outputs),
            "urls": {"get": f"{self.public_base}/api/v3/predictions/{self.id}/result"},
            "has_nsfw_contents": [False] * len(self.outputs),
            "status": self.status,
            "created_at": datetime.fromtimestamp(self.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "error": self.error,
            "executionTime": self.inference_ms,
            "timings": {"inference": self.inference_ms},
        }
        if self.code is not None:
            data["code"] = self.code
        if with_input:
            data["input"] = dict(self.input)
        return data


class _Stats:
    """Counters, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, dict[str, int]] = {}
        self.status_codes: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.counters: dict[str, int] = dict.fromkeys((
            "requests_total", "connections", "uploads", "upload_bytes", "tasks_submitted",
            "tasks_completed", "tasks_failed", "duplicate_submits", "max_concurrent_tasks",
            "rate_limited", "sync_timeouts", "auth_failures", "bytes_in", "bytes_out",
            "answers_lost"), 0)
        self.digests: OrderedDict[str, int] = OrderedDict()

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.counters[name] += amount


class Emulator:
    """The WaveSpeed emulator, served from a background thread.

    ``with Emulator(EmulatorOptions(delay=0.3)) as emu: ... emu.base_url ...`` or
    ``start()``/``stop()``. Keyword arguments override fields of ``options``.
    """

    def __init__(self, options: EmulatorOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options or EmulatorOptions(), **overrides)
        self._plan = FaultPlan(tuple(self.options.faults), seed=self.options.seed)
        self._stats = _Stats()
        self._media: BoundedStore[str, _Media] = BoundedStore(
            self.options.max_stored, self.options.max_stored_bytes, lambda m: len(m.data))
        self._tickets: BoundedStore[str, _Ticket] = BoundedStore(
            self.options.max_stored, 1 << 62, lambda t: 1)
        self._outputs: BoundedStore[str, bytes] = BoundedStore(
            self.options.max_stored, self.options.max_stored_bytes, len)
        self._tasks: BoundedStore[str, _Task] = BoundedStore(
            self.options.max_stored, 1 << 62, lambda t: 1)
        self._cond = threading.Condition()  # guards _running, _stopping, _task_threads
        self._running = 0
        self._stopping = False
        self._task_threads: set[threading.Thread] = set()
        self._submit_times: list[float] = []
        self._rate_lock = threading.Lock()
        self._seq = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._alpha: AlphaFn | None = None
        self._close_model: Callable[[], None] = lambda: None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        self._alpha, self._close_model = load_model(self.options.model)
        self._stopping = False
        try:
            server = _Server((self.options.host, self.options.port), _Handler, self)
        except BaseException:
            self._close_model()
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        log.info("WaveSpeed emulator listening on %s (model %s)", self.base_url, self.options.model)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for task in self._tasks.values():
            task.done.set()  # release sync-mode waiters
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        server.join_handlers(5)
        with self._cond:
            threads = list(self._task_threads)
        for thread in threads:
            thread.join(5)
        self._close_model()
        log.info("WaveSpeed emulator stopped")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public state -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.options.host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        host = self.options.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The key clients should send (any non-empty key works unless ``api_key`` was set)."""
        return self.options.api_key or DEFAULT_API_KEY

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters.

        ``requests`` is ``{route: {method: n}}``; ``faults`` counts injected faults by kind;
        ``status_codes`` counts answers by status. Other keys: requests_total, connections,
        uploads, upload_bytes, tasks_submitted, tasks_completed, tasks_failed,
        duplicate_submits (same image bytes submitted again), tasks_per_content
        ({sha256 of the uploaded bytes: tasks}), answers_lost (submits whose task was created
        but whose answer was dropped or replaced by an error without an id),
        max_concurrent_tasks, running_tasks, rate_limited, sync_timeouts, auth_failures,
        bytes_in, bytes_out, stored (entries held), evicted.
        """
        with self._stats.lock:
            snapshot: dict[str, Any] = dict(self._stats.counters)
            snapshot["tasks_per_content"] = dict(self._stats.digests)
            snapshot["requests"] = {k: dict(v) for k, v in self._stats.requests.items()}
            snapshot["status_codes"] = dict(self._stats.status_codes)
            snapshot["faults"] = dict(self._stats.faults)
        with self._cond:
            snapshot["running_tasks"] = self._running
        snapshot["stored"] = {"media": len(self._media), "outputs": len(self._outputs),
                              "tasks": len(self._tasks)}
        snapshot["evicted"] = (self._media.evicted + self._outputs.evicted
                               + self._tasks.evicted)
        return snapshot

    def count(self, route: str, method: str | None = None) -> int:
        """Requests seen for ``route`` (one method, or all)."""
        with self._stats.lock:
            methods = self._stats.requests.get(route, {})
            return methods.get(method, 0) if method else sum(methods.values())

    def reset_stats(self) -> None:
        """Zero the counters and restart the fault counters (stored files are kept)."""
        with self._stats.lock:
            self._stats.reset()
        self._plan.reset()
        with self._rate_lock:
            self._submit_times.clear()

    def set_faults(self, *faults: Fault) -> None:
        """Replace the injected faults (counting starts again)."""
        self._plan = FaultPlan(tuple(faults), seed=self.options.seed)

    def prediction(self, task_id: str) -> dict[str, Any] | None:
        """The prediction ``data`` the result endpoint would answer, or None."""
        task = self._task(task_id)
        return task.prediction() if task else None

    def tasks_for(self, content: bytes) -> int:
        """How many tasks were submitted for an upload of exactly these bytes."""
        with self._stats.lock:
            return self._stats.digests.get(hashlib.sha256(content).hexdigest(), 0)

    def now(self) -> float:
        """The service's clock (this machine's plus ``clock_skew``), in epoch seconds."""
        return time.time() + self.options.clock_skew

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted task has ended; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._task_threads:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def list_predictions(self, *, model: str | None = None, status: str | None = None,
                         after: float | None = None, before: float | None = None,
                         with_input: bool = False) -> list[dict[str, Any]]:
        """The live predictions matching the filters (times in epoch seconds), newest first."""
        tasks = [t for t in self._tasks.values() if self._live(t.created)
                 and (model is None or model == MODEL_ID)
                 and (status is None or _list_status(t.status) == status)
                 and (after is None or t.created >= after)
                 and (before is None or t.created <= before)]
        tasks.sort(key=lambda t: (t.created, t.seq), reverse=True)
        return [t.prediction(with_input=with_input) for t in tasks]

    # -- internals used by the handler ----------------------------------------------------------

    def _live(self, created: float) -> bool:
        """Whether something created at ``created`` (service clock) is still kept."""
        return self.now() - created < self.options.retention

    def _task(self, task_id: str) -> _Task | None:
        task = self._tasks.get(task_id)
        return task if task is not None and self._live(task.created) else None

    def _media_of(self, token: str) -> _Media | None:
        media = self._media.get(token)
        return media if media is not None and self._live(media.created) else None

    def _output_of(self, task_id: str) -> bytes | None:
        return self._outputs.get(task_id) if self._task(task_id) is not None else None

    def _count_request(self, route: str, method: str, size: int) -> None:
        with self._stats.lock:
            per_route = self._stats.requests.setdefault(route, {})
            per_route[method] = per_route.get(method, 0) + 1
            self._stats.counters["requests_total"] += 1
            self._stats.counters["bytes_in"] += size

    def _count_answer(self, status: int, size: int) -> None:
        with self._stats.lock:
            key = str(status)
            self._stats.status_codes[key] = self._stats.status_codes.get(key, 0) + 1
            self._stats.counters["bytes_out"] += size

    def _count_fault(self, kind: str) -> None:
        with self._stats.lock:
            self._stats.faults[kind] = self._stats.faults.get(kind, 0) + 1

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

    def _own_media(self, url: str, request_host: str | None) -> bytes | None:
        """The bytes behind ``url`` when it points at this emulator's store."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or self._server is None:
            return None
        own = {f"{h}:{self.port}" for h in (*LOOPBACK_HOSTS, "[::1]", self.options.host)}
        if request_host:
            own.add(request_host.lower())
        if parts.netloc.lower() not in own:
            return None
        segments = parts.path.split("/")
        if len(segments) >= 3 and segments[1] == "media":
            media = self._media_of(segments[2])
            return media.data if media else None
        if len(segments) == 3 and segments[1] == "outputs" and segments[2].endswith(".png"):
            return self._output_of(segments[2][:-4])
        return None

    def _submit(self, request: dict[str, Any], public_base: str, request_host: str | None,
                fail_code: int | None) -> _Task:
        image_url = str(request["image"]).strip()
        image = self._own_media(image_url, request_host)
        task = _Task(id=uuid.uuid4().hex, created=math.floor(self.now() * 1000) / 1000,
                     image_url=image_url, image=image,
                     base64_output=bool(request.get("enable_base64_output")),
                     public_base=public_base, input=request, seq=next(self._seq),
                     fail_code=fail_code)
        self._tasks.put(task.id, task)
        with self._stats.lock:
            self._stats.counters["tasks_submitted"] += 1
            if image is not None:
                digest = hashlib.sha256(image).hexdigest()
                seen = self._stats.digests.pop(digest, 0)
                if seen:
                    self._stats.counters["duplicate_submits"] += 1
                self._stats.digests[digest] = seen + 1
                if len(self._stats.digests) > self.options.max_stored:
                    self._stats.digests.popitem(last=False)
        thread = threading.Thread(target=self._run_task, args=(task,), daemon=True,
                                  name=f"emulator-task-{task.id[:8]}")
        with self._cond:
            self._task_threads.add(thread)
        thread.start()
        return task

    def _run_task(self, task: _Task) -> None:
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
            with self._stats.lock:
                counters = self._stats.counters
                counters["max_concurrent_tasks"] = max(counters["max_concurrent_tasks"],
                                                       self._running)
        return True

    def _process(self, task: _Task) -> None:
        task.status = "processing"
        started = time.monotonic()
        outcome: tuple[str, int | None, str, bytes | None]
        if task.fail_code is not None:
            outcome = ("failed", task.fail_code, task_error(task.fail_code), None)
        elif task.image is None:
            outcome = ("failed", 1402, task_error(1402), None)
        else:
            try:
                image = decode_image(task.image)
            except ValueError as exc:
                outcome = ("failed", 1401, f"Invalid parameter: image: {exc}", None)
            else:
                assert self._alpha is not None
                outcome = ("completed", None, "", cutout_png(image, self._alpha(image)))
        remaining = self.options.delay - (time.monotonic() - started)
        if remaining > 0 and self._sleep(remaining):
            return
        task.inference_ms = round((time.monotonic() - started) * 1000)
        status, code, error, png = outcome
        if png is not None:
            if task.base64_output:
                task.outputs = [base64.b64encode(png).decode("ascii")]
            else:
                self._outputs.put(task.id, png)
                task.outputs = [f"{task.public_base}/outputs/{task.id}.png"]
        self._finish(task, status, code=code, error=error)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) when the emulator is stopping."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping, seconds)

    def _finish(self, task: _Task, status: str, *, code: int | None, error: str) -> None:
        task.code, task.error, task.status = code, error, status
        self._stats.add("tasks_completed" if status == "completed" else "tasks_failed")
        log.debug("task %s %s%s", task.id, status, f" (code {code})" if code else "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 emulator: Emulator) -> None:
        self.emulator = emulator
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): slow and useless here.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, but the thread is remembered so stop() can join it.
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"emulator-conn-{client_address[1]}")
        with self._conn_lock:
            self._handler_threads = {t for t in self._handler_threads if t.is_alive()}
            self._handler_threads.add(thread)
        thread.start()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Dropped(Exception):
    """The connection was closed on purpose (a fault); nothing more to send."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wavespeed-emulator/1"
    disable_nagle_algorithm = True
    server: _Server
    _route = "unknown"
    _status_sent: int | str = "-"

    # -- plumbing -------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.emulator.options.idle_timeout)
        self.server.track(self.connection, True)
        self.server.emulator._stats.add("connections")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("emulator: " + format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status_sent = code  # logged with the route and time at the end of _serve

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    @property
    def emu(self) -> Emulator:
        return self.server.emulator

    def _public_base(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.emu.base_url

    def _read_body(self, limit: int) -> bytes | None:
        """The request body; None (after discarding it) when it is over ``limit`` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self.rfile.read(size)
                self.rfile.readline(16)
                total += len(chunk)
                if total <= limit:
                    chunks.append(chunk)
            return b"".join(chunks) if total <= limit else None
        length = int(self.headers.get("Content-Length") or 0)
        if length <= limit:
            return self.rfile.read(length) if length else b""
        while length > 0:
            got = self.rfile.read(min(length, 1 << 20))
            if not got:
                break
            length -= len(got)
        return None

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None, *, truncate: float | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        sent = body if truncate is None else body[:int(len(body) * truncate)]
        if self.command != "HEAD":
            self.wfile.write(sent)
        self.emu._count_answer(status, len(sent))
        if truncate is not None:
            self._drop()

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        if self.emu._plan.pick(self._route, ("malformed",)):
            self.emu._count_fault("malformed")
            body = body[: max(1, len(body) // 2)]  # cut mid-object: not valid JSON
        self._send(status, body, "application/json", headers)

    def _ok(self, data: Any) -> None:
        self._json(200, {"code": 200, "message": "success", "data": data})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None,
               data: Any = None) -> None:
        self._json(status, {"code": status, "message": message, "data": data}, headers)

    # -- dispatch -------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        self._route = route = _route_of(method, path)
        self._status_sent = "dropped"
        try:
            try:
                body = self._read_body(self.emu.options.max_upload_bytes + _BODY_SLACK)
            except ValueError:  # a bad Content-Length or chunk size: the stream is lost
                self.close_connection = True
                self.emu._count_request(route, method, 0)
                self._error(400, "Bad request: unreadable body framing")
                return
            self.emu._count_request(route, method, len(body or b""))
            for fault in self.emu._plan.pick(route, ("delay",)):
                self.emu._count_fault("delay")
                if self.emu._sleep(fault.seconds):
                    self._drop()
            if self._inject(route):
                return
            if path.startswith("/api/v3/") and not self._authorised():
                return
            if body is None:
                self._too_large(None)
                return
            handler = getattr(self, f"_route_{route}")
            handler(method, path, body)
        except _Dropped:
            pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("emulator: %s %s failed", method, path)
            self.close_connection = True
            if self._status_sent == "dropped":  # nothing sent yet
                with contextlib.suppress(OSError):
                    self._error(500, "Internal server error (emulator bug)")
        finally:
            log.debug("%s %s [%s] -> %s (%.1f ms)", method, path, route, self._status_sent,
                      (time.monotonic() - started) * 1000)

    def _inject(self, route: str, *, after: bool = False, lost: bool = False) -> bool:
        """Apply a status or drop fault; True when it answered for the handler.

        ``lost``: a task was created, so the fault loses its answer (counted as such).
        """
        for fault in self.emu._plan.pick(route, ("status", "drop"), after=after):
            self.emu._count_fault(fault.kind)
            if lost:
                self.emu._stats.add("answers_lost")
            if fault.kind == "drop":
                self._drop()
            headers = {}
            retry_after = fault.retry_after_header()
            if retry_after:
                headers["Retry-After"] = retry_after
            self._error(fault.status, _reason(fault.status), headers)
            return True
        return False

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        wanted = self.emu.options.api_key
        if scheme.lower() != "bearer" or not key:
            message = "Unauthorized: missing API key; send Authorization: Bearer <key>"
        elif wanted is not None and key != wanted:
            message = "Unauthorized: invalid API key"
        elif self.emu.options.key_state == "inactive":
            message = "Unauthorized: API key not activated; top up your account to activate it"
        elif self.emu.options.key_state == "suspended":
            self.emu._stats.add("auth_failures")
            self._error(403, "Forbidden: account suspended")
            return False
        else:
            return True
        self.emu._stats.add("auth_failures")
        self._error(401, message)
        return False

    def _too_large(self, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else "the request"
        self._error(413, f"Payload too large: {got} is over the limit of "
                    f"{self.emu.options.max_upload_bytes} bytes")

    def _json_body(self, body: bytes) -> dict[str, Any] | None:
        try:
            value = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            self._error(400, "Invalid request: the body is not valid JSON")
            return None
        if not isinstance(value, dict):
            self._error(400, "Invalid request: the body must be a JSON object")
            return None
        return value

    # -- routes ---------------------------------------------------------------------------------

    def _route_submit(self, method: str, path: str, body: bytes) -> None:
        request = self._json_body(body)
        if request is None:
            return
        image = request.get("image")
        if not isinstance(image, str) or not image.strip():
            self._error(400, "Invalid parameters: 'image' is required (a URL)")
            return
        if image.startswith("data:"):
            self._error(400, "Invalid parameters: 'image' must be a URL; "
                        "data URIs are not supported by this model (upload the file first)")
            return
        for name in ("enable_base64_output", "enable_sync_mode"):
            if not isinstance(request.get(name, False), bool):
                self._error(400, f"Invalid parameters: '{name}' must be a boolean")
                return
        retry_in = self.emu._rate_limited()
        if retry_in is not None:
            self.emu._stats.add("rate_limited")
            headers = {}
            if self.emu.options.rate_limit_retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(retry_in)))
            self._error(429, "Too many requests: the images-per-minute limit of your account "
                        "level is reached", headers)
            return
        fail = self.emu._plan.pick("submit", ("fail_task",))
        if fail:
            self.emu._count_fault("fail_task")
        task = self.emu._submit(request, self._public_base(), self.headers.get("Host"),
                                fail[0].code if fail else None)
        timed_out = False
        if request.get("enable_sync_mode"):
            timeout = self.emu.options.sync_timeout
            timed_out = not task.done.wait(timeout) or task.status not in TERMINAL
            if timed_out:
                self.emu._stats.add("sync_timeouts")
        # The task exists: a fault now loses the answer (async: at once; sync: at its end).
        if self._inject("submit", after=True, lost=True):
            return
        if timed_out:
            self._sync_timed_out(task, self.emu.options.sync_timeout)
            return
        self._ok(task.prediction())

    def _sync_timed_out(self, task: _Task, timeout: float | None) -> None:
        data = task.prediction()
        waited = "" if timeout is None else f" after {timeout:g} seconds"
        message = (f"Sync mode timed out{waited}; the task is still "
                   f"running: query {data['urls']['get']}")
        style = self.emu.options.sync_timeout_style
        if style in ("gateway", "drop"):
            self.emu._stats.add("answers_lost")
        if style == "504":
            self._error(504, f"Gateway Timeout: {message}", data=data)
        elif style == "processing":
            data.update(status="processing", code=5004, error=message)
            self._ok(data)
        elif style == "gateway":  # a proxy's own page: no envelope, no id
            self._send(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>",
                       "text/html")
        else:
            self._drop()

    def _route_result(self, method: str, path: str, body: bytes) -> None:
        task_id = path.split("/")[4]
        task = self.emu._task(task_id)
        if task is None:
            self._error(404, f"Prediction {task_id} not found")
            return
        self._ok(task.prediction())

    def _route_list(self, method: str, path: str, body: bytes) -> None:
        if not self.emu.options.list_route:
            self._route_unknown(method, path, body)
            return
        request = self._json_body(body)
        if request is None:
            return
        query = _list_query(request, self.emu.options.list_page_size_max)
        if isinstance(query, str):
            self._error(400, f"Invalid parameters: {query}")
            return
        page, size, filters = query
        items = self.emu.list_predictions(with_input=self.emu.options.list_input, **filters)
        self._ok({"page": page, "total": len(items),
                  "items": items[(page - 1) * size:page * size]})

    def _route_upload(self, method: str, path: str, body: bytes) -> None:
        request = self._json_body(body)
        if request is None:
            return
        filename, size = request.get("filename"), request.get("size")
        content_type = request.get("content_type") or "application/octet-stream"
        if not isinstance(filename, str) or not filename or "/" in filename:
            self._error(400, "Invalid parameters: 'filename' is required")
            return
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            self._error(400, "Invalid parameters: 'size' must be a whole number of bytes")
            return
        if not isinstance(content_type, str):
            self._error(400, "Invalid parameters: 'content_type' must be text")
            return
        if size > self.emu.options.max_upload_bytes:
            self._too_large(size)
            return
        token = uuid.uuid4().hex
        self.emu._tickets.put(token, _Ticket(filename, content_type, size))
        base = self._public_base()
        self._ok({
            "upload": {"method": "PUT",
                       "url": f"{base}/upload/{token}?expires={int(time.time()) + 3600}"
                              f"&signature={hashlib.sha256(token.encode()).hexdigest()[:32]}",
                       "headers": {"Content-Type": content_type}},
            "download_url": f"{base}/media/{token}/{quote(filename)}",
            "filename": filename,
            "size": size,
        })

    def _route_upload_put(self, method: str, path: str, body: bytes) -> None:
        token = path.split("/")[2]
        ticket = self.emu._tickets.get(token)
        if ticket is None:
            self._send(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            return
        if self.headers.get("Content-Type") != ticket.content_type:
            self._send(403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>Content-Type "
                       b"differs from the signed upload headers</Message></Error>",
                       "application/xml")
            return
        if len(body) > self.emu.options.max_upload_bytes:
            self._too_large(len(body))
            return
        if len(body) != ticket.size:
            self._send(400, f"<Error><Code>BadDigest</Code><Message>got {len(body)} bytes, "
                       f"the ticket says {ticket.size}</Message></Error>".encode(),
                       "application/xml")
            return
        self.emu._media.put(token, _Media(ticket.filename, ticket.content_type, body,
                                          self.emu.now()))
        self.emu._stats.add("uploads")
        self.emu._stats.add("upload_bytes", len(body))
        self._send(200, b"", "application/octet-stream",
                   {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _route_upload_binary(self, method: str, path: str, body: bytes) -> None:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            self._error(400, "Invalid request: send multipart/form-data with a 'file' field")
            return
        part = _multipart_file(content_type, body)
        if part is None:
            self._error(400, "Invalid parameters: the form has no 'file' field")
            return
        filename, part_type, data = part
        if len(data) > self.emu.options.max_upload_bytes:
            self._too_large(len(data))
            return
        token = uuid.uuid4().hex
        self.emu._media.put(token, _Media(filename, part_type, data, self.emu.now()))
        self.emu._stats.add("uploads")
        self.emu._stats.add("upload_bytes", len(data))
        self._ok({"type": part_type.split("/")[0] or "file",
                  "download_url": f"{self._public_base()}/media/{token}/{quote(filename)}",
                  "filename": filename, "size": len(data)})

    def _route_media(self, method: str, path: str, body: bytes) -> None:
        media = self.emu._media_of(path.split("/")[2])
        if media is None:
            self._send(404, b"not found", "text/plain")
            return
        self._download(media.data, media.content_type)

    def _route_download(self, method: str, path: str, body: bytes) -> None:
        png = self.emu._output_of(path.split("/")[2][:-4])
        if png is None:
            self._send(404, b"not found", "text/plain")
            return
        self._download(png, "image/png")

    def _download(self, data: bytes, content_type: str) -> None:
        truncate = self.emu._plan.pick(self._route, ("truncate",))
        if truncate:
            self.emu._count_fault("truncate")
        self._send(200, data, content_type, truncate=truncate[0].fraction if truncate else None)

    def _route_balance(self, method: str, path: str, body: bytes) -> None:
        self._ok({"balance": self.emu.options.balance})

    def _route_control(self, method: str, path: str, body: bytes) -> None:
        if path == "/_emulator/reset":
            self.emu.reset_stats()
            self._json(200, {"reset": True})
        else:
            self._json(200, self.emu.stats())

    def _route_unknown(self, method: str, path: str, body: bytes) -> None:
        if path.startswith("/api/v3/"):
            self._error(404, f"Not found: {method} {path}")
        else:
            self._send(404, b"not found", "text/plain")


def _list_status(status: str) -> str:
    """The list filter value a task status falls under."""
    return status if status in TERMINAL else "processing"


def _list_query(request: dict[str, Any],
                max_size: int) -> tuple[int, int, dict[str, Any]] | str:
    """(page, page size, filters for ``list_predictions``) of a list request, or what is wrong."""
    page, size = request.get("page", 1), request.get("page_size", 100)
    for name, value in (("page", page), ("page_size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"'{name}' must be a whole number from 1"
    filters: dict[str, Any] = {}
    model, status = request.get("model"), request.get("status")
    if model is not None:
        if not isinstance(model, str):
            return "'model' must be text"
        filters["model"] = model
    if status is not None:
        if status not in LIST_STATUSES:
            return f"'status' must be one of {', '.join(LIST_STATUSES)}"
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
            return f"'{name}' must be an ISO 8601 time"
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        filters[key] = when.timestamp()
    return page, min(size, max_size), filters


def _route_of(method: str, path: str) -> str:
    """The route name a request is counted under and faults target."""
    parts = path.split("/")
    if method == "POST" and path == SUBMIT_PATH:
        return "submit"
    if method == "POST" and path == "/api/v3/predictions":
        return "list"
    if method == "GET" and path.startswith("/api/v3/predictions/") and (
            len(parts) == 5 or (len(parts) == 6 and parts[5] == "result")) and parts[4]:
        return "result"
    if method == "POST" and path == "/api/v3/media/uploads":
        return "upload"
    if method == "POST" and path == "/api/v3/media/upload/binary":
        return "upload_binary"
    if method == "PUT" and len(parts) == 3 and parts[1] == "upload" and parts[2]:
        return "upload_put"
    if method in ("GET", "HEAD") and len(parts) >= 4 and parts[1] == "media" and parts[2]:
        return "media"
    if method in ("GET", "HEAD") and len(parts) == 3 and parts[1] == "outputs" \
            and parts[2].endswith(".png"):
        return "download"
    if method == "GET" and path == "/api/v3/balance":
        return "balance"
    if (method, path) in (("GET", "/_emulator/stats"), ("POST", "/_emulator/reset")):
        return "control"
    return "unknown"


def _multipart_file(content_type: str, body: bytes) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of the form field ``file``, or None.

    Split by hand: the email package's MIME parser is not byte-exact for binary parts.
    """
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    for section in (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))[1:]:
        if section.startswith(b"--"):
            break
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep:
            continue
        part = HeaderParser(policy=HTTP).parsestr(head.decode("utf-8", "replace").lstrip())
        if part.get_param("name", header="content-disposition") != "file":
            continue
        filename = part.get_filename() or "upload"
        return unquote(filename).replace("/", "_"), part.get_content_type(), data
    return None


def _reason(status: int) -> str:
    return {
        400: "Bad request: invalid parameters",
        401: "Unauthorized: invalid API key",
        403: "Forbidden: account suspended",
        404: "Not found",
        413: "Request entity too large",
        429: "Too many requests: rate limit exceeded, slow down",
        500: "Internal server error",
        502: "Bad gateway",
        503: "Service unavailable: try again later",
        504: "Gateway timeout",
    }.get(status, f"HTTP {status}")
