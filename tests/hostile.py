"""A hostile stand-in for the service on 127.0.0.1: it speaks the API but answers with poison.

    with HostileService(output=postscript_output) as svc:   # or submit=, result=
        env = svc.env()          # WAVESPEED_BASE_URL + WAVESPEED_API_KEY for a subprocess

Routes: the direct-upload ticket answers 404 (so the client uses the binary
upload), the binary upload and the submit answer like the service (a completed
task whose output is ``/out/result``), unless ``submit``/``result``/``output``
replace them with a handler ``(request_handler, service) -> None`` that writes
the whole answer itself. ``counts`` says how often each route was called.

Not the emulator: this server is small, lies on purpose, and never checks much.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

KEY = "hostile-test-key-0123456789"

Handler = Callable[[BaseHTTPRequestHandler, "HostileService"], None]

SUBMIT = "/api/v3/wavespeed-ai/image-background-remover"
BINARY_UPLOAD = "/api/v3/media/upload/binary"
OUTPUT = "/out/result"


class HostileService:
    def __init__(self, *, submit: Handler | None = None, result: Handler | None = None,
                 output: Handler | None = None) -> None:
        self.handlers = {"submit": submit, "result": result, "output": output}
        self.counts: dict[str, int] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        return {"WAVESPEED_BASE_URL": self.base_url, "WAVESPEED_API_KEY": KEY}

    def count(self, route: str) -> None:
        with self._lock:
            self.counts[route] = self.counts.get(route, 0) + 1

    def prediction(self, status: str = "completed") -> dict[str, Any]:
        return {"code": 200, "message": "success",
                "data": {"id": "task-1", "status": status, "model": "x",
                         "outputs": [self.base_url + OUTPUT] if status == "completed" else []}}

    def __enter__(self) -> HostileService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # ends drips
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _make_handler(service: HostileService) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle(self) -> None:
            with contextlib.suppress(ConnectionError):  # the client hung up on purpose
                super().handle()

        def _drain(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)

        def do_POST(self) -> None:
            self._drain()
            path = _route_of(self.path)
            if path == BINARY_UPLOAD:
                service.count("upload")
                send_json(self, {"code": 200, "data": {
                    "download_url": service.base_url + "/files/in.png"}})
            elif path == SUBMIT:
                service.count("submit")
                custom = service.handlers["submit"]
                if custom is not None:
                    custom(self, service)
                else:
                    send_json(self, service.prediction())
            else:  # the direct-upload ticket and anything else: not here
                service.count("other")
                send_json(self, {"code": 404, "message": "not found"}, status=404)

        def do_GET(self) -> None:
            path = _route_of(self.path)
            if path.startswith("/api/v3/predictions/"):
                service.count("result")
                custom = service.handlers["result"]
                if custom is not None:
                    custom(self, service)
                else:
                    send_json(self, service.prediction())
            elif path == OUTPUT:
                service.count("output")
                custom = service.handlers["output"]
                if custom is None:
                    raise AssertionError("no output handler")
                custom(self, service)
            else:
                send_json(self, {"code": 404, "message": "not found"}, status=404)

    return _Handler


def _route_of(target: str) -> str:
    """The path of a request target, also in the absolute form a client sends a proxy."""
    return urllib.parse.urlsplit(target).path


#: ``bgremove ARGS`` in a fresh interpreter that records its peak resident memory at exit.
RUN = """
import atexit, os, sys
def record():
    with open("/proc/self/status") as status, open(os.environ["HOSTILE_PEAK"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))
atexit.register(record)
from bgremove.cli import main
sys.argv[0] = "bgremove"
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


def run_bgremove(args: list[str], env: dict[str, str], *, limit: float,
                 cwd: Path | None = None) -> Outcome:
    """Run ``bgremove ARGS``; kill it (AssertionError) if it outlives ``limit`` seconds.

    The peak memory is the child's own ``VmHWM``, written by an exit hook (``RUN``): the
    ``ru_maxrss`` that ``wait4`` reports also counts the process the child was forked
    from, before its exec (418 MB for a child of a full pytest run). Linux only.
    """
    tmp = Path(env["HOSTILE_TMP"])
    out_path, err_path, peak_path = tmp / "stdout.txt", tmp / "stderr.txt", tmp / "peak.txt"
    peak_path.unlink(missing_ok=True)
    env = {**env, "HOSTILE_PEAK": str(peak_path)}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-c", RUN, *args], stdout=out, stderr=err,
                                   env=env, cwd=cwd)
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise AssertionError(f"bgremove {' '.join(args)} still ran after {limit:g} s: killed"
                                 ) from None
        seconds = time.monotonic() - started
    peak_kb = int(peak_path.read_text().split()[1])  # "VmHWM:   123456 kB"
    return Outcome(code, out_path.read_text(errors="replace"),
                   err_path.read_text(errors="replace"), seconds, peak_kb / 1024)


# --- answers --------------------------------------------------------------------------------

def send_bytes(handler: BaseHTTPRequestHandler, body: bytes, *, status: int = 200,
               content_type: str = "application/octet-stream",
               headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    with contextlib.suppress(OSError):  # the client gave up: that is the point
        handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, body: Any, *, status: int = 200) -> None:
    send_bytes(handler, json.dumps(body).encode(), status=status,
               content_type="application/json")


def send_stream(handler: BaseHTTPRequestHandler, chunks: Iterator[bytes], length: int, *,
                content_type: str = "application/octet-stream",
                headers: dict[str, str] | None = None) -> None:
    """Send ``length`` announced bytes from ``chunks``, stopping when the client hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(length))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    try:
        for chunk in chunks:
            handler.wfile.write(chunk)
    except OSError:
        pass


def drip(body: bytes, every: float = 0.5, content_type: str = "image/png") -> Handler:
    """One byte every ``every`` seconds (Content-Length announces the whole body)."""

    def handle(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        def bytes_() -> Iterator[bytes]:
            for i in range(len(body)):
                if service.stopping.wait(every):
                    return
                yield body[i:i + 1]
                handler.wfile.flush()

        send_stream(handler, bytes_(), len(body), content_type=content_type)

    return handle


def fixed(body: bytes, content_type: str = "image/png",
          headers: dict[str, str] | None = None) -> Handler:
    def handle(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        send_bytes(handler, body, content_type=content_type, headers=headers)

    return handle


def endless(total: int, content_type: str = "image/png") -> Handler:
    """``total`` bytes (announced) of a PNG signature followed by noise, made as sent."""
    block = bytes(range(256)) * 256  # 64 KiB

    def handle(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        def chunks() -> Iterator[bytes]:
            yield b"\x89PNG\r\n\x1a\n"
            sent = 8
            while sent < total:
                piece = block[: min(len(block), total - sent)]
                sent += len(piece)
                yield piece

        send_stream(handler, chunks(), total, content_type=content_type)

    return handle


def base64_result(chars: int) -> Handler:
    """A completed prediction whose one output is ``chars`` characters of base64, streamed."""

    def handle(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        head = b'{"code": 200, "data": {"id": "task-1", "status": "completed", "outputs": ["'
        tail = b'"]}}'
        block = b"A" * 65536

        def chunks() -> Iterator[bytes]:
            yield head
            left = chars
            while left > 0:
                piece = block[: min(left, len(block))]
                left -= len(piece)
                yield piece
            yield tail

        send_stream(handler, chunks(), len(head) + chars + len(tail),
                    content_type="application/json")

    return handle


def nested_json(depth: int = 100_000) -> bytes:
    """A JSON envelope nested ``depth`` levels deep: valid JSON, but no parser recurses that far."""
    return b'{"code": 200, "data": ' + b"[" * depth + b"]" * depth + b"}"


# --- payloads -------------------------------------------------------------------------------

def postscript() -> bytes:
    """An EPS file: Pillow hands these to Ghostscript when it may decode every format."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n"
            b"newpath 0 0 moveto 64 48 lineto stroke showpage\n%%EOF\n")


def gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes gzipped (1 GiB gives about 1 MB), made without holding them."""
    out = io.BytesIO()
    zero = bytes(1 << 20)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        for _ in range(size // len(zero)):
            gz.write(zero)
    return out.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid RGBA PNG of ``width`` x ``height`` transparent pixels, made row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = bytes(1 + 4 * width)  # filter byte 0, then zeros
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def small_cutout(size: tuple[int, int] = (64, 48)) -> bytes:
    """A good answer: an RGBA PNG of ``size`` with a half-opaque alpha."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", size, (10, 20, 30, 128)).save(out, "PNG")
    return out.getvalue()
