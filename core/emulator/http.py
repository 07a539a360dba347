"""The emulator's HTTP plumbing: a threaded HTTP/1.1 server, request bodies, answers, faults.

Routing is one table (``RouteTable``, filled in ``bgremove.emulator.routes``): it names the
route a request is counted under and faults target, and holds the function that answers it.
Those functions get an ``Exchange`` (this request and its answer) and call the service.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import urlsplit

from bgremove.emulator.bandwidth import PIECE, Link
from bgremove.emulator.service import ApiError, Service, StorageError

log = logging.getLogger(__name__)

_BODY_SLACK = 256 * 1024  # multipart framing on top of the file size limit
#: After an answer sent before a body was read: how much of it, and how long, to drain.
_LINGER_BYTES = 1 << 20
_LINGER_SECONDS = 1.0


@dataclass(frozen=True)
class Route:
    """One endpoint: its name (for stats and faults), methods, path and answering function."""

    name: str
    methods: tuple[str, ...]
    path: str  # a regular expression matched against the whole path; groups become params
    handle: Callable[[Exchange, dict[str, str], bytes], None]  # (exchange, params, body)
    # "api": the bearer key and the account's state; "file": a signed URL and "control":
    # the bearer key, both only when open to the network (options.allow_remote)
    access: str = "api"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method not in self.methods:
            return None
        found = re.fullmatch(self.path, path)
        return found.groupdict() if found else None


class RouteTable:
    """The routes in order, and the one answering everything else."""

    def __init__(self, routes: Iterable[Route], fallback: Route) -> None:
        self.routes, self.fallback = tuple(routes), fallback

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return self.fallback, {}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of clients may connect at once

    def __init__(self, address: tuple[str, int], service: Service, routes: RouteTable) -> None:
        self.service, self.routes = service, routes
        self.uplink = Link(service.options.uplink_mbit, service.sleep)
        self.downlink = Link(service.options.downlink_mbit, service.sleep)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, Exchange)

    @property
    def base_url(self) -> str:
        """``http://host:port``, with a wildcard address replaced by loopback."""
        host = self.server_name
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server_port}"

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


class Dropped(Exception):
    """The connection was closed on purpose (a fault); nothing more to send."""


class BadFraming(ValueError):
    """A bad Content-Length or chunk size: the rest of the stream cannot be read."""


class BodyTooLarge(Exception):
    """The body is over the limit; what is left of it was not read."""


def _read(rfile: io.BufferedIOBase, size: int, link: Link) -> bytes:
    """``size`` bytes (fewer if the stream ends), at the speed of ``link``."""
    if not link.limited:
        return rfile.read(size)
    pieces: list[bytes] = []
    while size > 0:
        link.take(min(size, PIECE))
        piece = rfile.read(min(size, PIECE))
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def read_body(rfile: io.BufferedIOBase, headers: Any, limit: int, link: Link) -> bytes:
    """The request body, never holding more than ``limit`` bytes of it (chunked too),
    received through ``link``.

    Raises ``BodyTooLarge`` before reading past ``limit``, ``BadFraming`` on bad sizes.
    """
    if "chunked" not in headers.get("Transfer-Encoding", "").lower():
        try:
            length = int(headers.get("Content-Length") or 0)
        except ValueError:
            raise BadFraming from None
        if length < 0:
            raise BadFraming
        if length > limit:
            raise BodyTooLarge
        return _read(rfile, length, link) if length else b""
    chunks: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise BadFraming from None
        if size < 0:
            raise BadFraming
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > limit:
            raise BodyTooLarge
        chunks.append(_read(rfile, size, link))
        rfile.readline(16)


class Exchange(BaseHTTPRequestHandler):
    """One connection's requests; to a route function, the request at hand and its answer."""

    protocol_version = "HTTP/1.1"
    server_version = "wavespeed-emulator/1"
    disable_nagle_algorithm = True
    server: Server
    route_name = "unknown"
    began = 0.0  # epoch seconds this request's headers were read
    _status_sent: int | str = "-"

    # -- what route functions use ---------------------------------------------------------------

    @property
    def service(self) -> Service:
        return self.server.service

    def public_base(self) -> str:
        """The base URL the client reached this service at (for the URLs in answers)."""
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.base_url

    def json_body(self, body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Invalid request: the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "Invalid request: the body must be a JSON object")
        return value

    def send(self, status: int, body: bytes, content_type: str,
             headers: dict[str, str] | None = None, *, truncate: float | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        sent = body if truncate is None else body[:int(len(body) * truncate)]
        if self.command != "HEAD":
            self._write(sent)
        self.service.stats.answer(status, len(sent))
        if truncate is not None:
            self.drop()

    def _write(self, data: bytes) -> None:
        """Send ``data`` at the speed of the downlink."""
        link = self.server.downlink
        if not link.limited:
            self.wfile.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            piece = view[start:start + PIECE]
            link.take(len(piece))
            self.wfile.write(piece)

    def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        if self.service.plan.pick(self.route_name, ("malformed",)):
            self.service.stats.fault("malformed")
            body = body[: max(1, len(body) // 2)]  # cut mid-object: not valid JSON
        self.send(status, body, "application/json", headers)

    def ok(self, data: Any) -> None:
        self.json(200, {"code": 200, "message": "success", "data": data})

    def error(self, status: int, message: str, headers: dict[str, str] | None = None,
              data: Any = None) -> None:
        self.json(status, {"code": status, "message": message, "data": data}, headers)

    def download(self, data: bytes, content_type: str) -> None:
        """Serve a file (the target of ``truncate`` faults)."""
        truncate = self.service.plan.pick(self.route_name, ("truncate",))
        if truncate:
            self.service.stats.fault("truncate")
        self.send(200, data, content_type, truncate=truncate[0].fraction if truncate else None)

    def drop(self) -> None:
        """Close the connection without (more of) an answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise Dropped

    def inject(self, *, after: bool = False, lost: bool = False) -> bool:
        """Apply a status or drop fault to this request; True when it answered.

        ``lost``: a task was created, so the fault loses its answer (counted as such).
        """
        for fault in self.service.plan.pick(self.route_name, ("status", "drop"), after=after):
            self.service.stats.fault(fault.kind)
            if lost:
                self.service.stats.add("answers_lost")
            if fault.kind == "drop":
                self.drop()
            headers = {}
            retry_after = fault.retry_after_header()
            if retry_after:
                headers["Retry-After"] = retry_after
            self.error(fault.status, _reason(fault.status), headers)
            return True
        return False

    # -- plumbing -------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.service.options.idle_timeout)
        self.server.track(self.connection, True)
        self.service.stats.add("connections")

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header comes from the service's clock, like its created_at times.
        return super().date_time_string(self.service.now() if timestamp is None else timestamp)

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

    def _serve(self, method: str) -> None:
        started = time.monotonic()
        self.began = time.time()  # before the body is read: when an upload starts
        target = urlsplit(self.path)
        path = target.path
        route, params = self.server.routes.match(method, path)
        self.route_name = route.name
        self._status_sent = "dropped"
        service = self.service
        try:
            try:
                # Who may ask is settled before any of the body is read.
                self._check_access(route, path, target.query)
                body = read_body(self.rfile, self.headers,
                                 service.options.max_upload_bytes + _BODY_SLACK,
                                 self.server.uplink)
            except (ApiError, StorageError, BodyTooLarge, BadFraming) as exc:
                service.stats.request(route.name, method, 0)
                self._refuse(exc)
                return
            service.stats.request(route.name, method, len(body))
            for fault in service.plan.pick(route.name, ("delay",)):
                service.stats.fault("delay")
                if service.sleep(fault.seconds):
                    self.drop()
            if self.inject():
                return
            try:
                route.handle(self, params, body)
            except (ApiError, StorageError) as exc:
                self._answer_error(exc)
        except Dropped:
            pass
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("emulator: %s %s failed", method, path)
            self.close_connection = True
            if self._status_sent == "dropped":  # nothing sent yet
                with contextlib.suppress(OSError):
                    self.error(500, "Internal server error (emulator bug)")
        finally:
            log.debug("%s %s [%s] -> %s (%.1f ms)", method, path, route.name, self._status_sent,
                      (time.monotonic() - started) * 1000)

    def _check_access(self, route: Route, path: str, query: str) -> None:
        service = self.service
        header = self.headers.get("Authorization", "")
        if route.access == "api" or path.startswith("/api/v3/"):
            service.authorise(header)
        elif service.options.allow_remote:
            if route.access == "file":
                service.check_signature(path, query)
            else:
                service.authorise(header, account=False)

    def _answer_error(self, exc: ApiError | StorageError) -> None:
        if isinstance(exc, ApiError):
            self.error(exc.status, exc.message, exc.headers, exc.data)
            return
        message = f"<Message>{exc.message}</Message>" if exc.message else ""
        self.send(exc.status, f"<Error><Code>{exc.code}</Code>{message}</Error>".encode(),
                  "application/xml")

    def _refuse(self, exc: ApiError | StorageError | BodyTooLarge | BadFraming) -> None:
        """Answer a request whose body was not (all) read, then close the connection.

        What is left of the body is read and thrown away first, up to a bound, so that the
        client gets to read the answer (closing on unread data resets the connection).
        """
        self.close_connection = True
        if isinstance(exc, BodyTooLarge):
            self._answer_error(self.service.too_large(None))
        elif isinstance(exc, BadFraming):
            self.error(400, "Bad request: unreadable body framing")
            return  # the stream is lost: nothing to drain
        else:
            self._answer_error(exc)
        declared = self.headers.get("Content-Length", "")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            budget = _LINGER_BYTES  # what is left is unknown
        elif declared.isdigit():
            allowed = self.service.options.max_upload_bytes + _BODY_SLACK
            budget = int(declared) if int(declared) <= allowed \
                else min(int(declared), _LINGER_BYTES)
        else:
            budget = 0
        with contextlib.suppress(OSError):
            self.connection.settimeout(_LINGER_SECONDS)
            while budget > 0:
                got = self.rfile.read1(min(budget, 1 << 16))
                if not got:
                    break
                budget -= len(got)

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
