"""The one interface the CLI, the hot-folder daemon and the GIMP plug-in call.

A backend turns an image into an alpha mask. It never decides how the result
is written: ``bgremove.imaging`` applies the mask to the original pixels, so every
opaque pixel of the output is the input's own colour at full resolution.

Backends:
    ``wavespeed``  the WaveSpeedAI API (``bgremove.wavespeed``)
    ``local``      an offline ONNX model (``bgremove.local``)
    ``auto``       wavespeed when an API key is configured, else local
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bgremove.errors import CancelledError, ConfigError, MissingExtraError, MissingKeyError

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.config import Config

log = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "wavespeed", "local")

#: ``progress(stage, fraction)``: stage is one of "prepare", "upload", "wait",
#: "download", "inference", "compose"; fraction is 0.0-1.0 within the whole job.
ProgressFn = Callable[[str, float], None]


class CancelToken:
    """A thread-safe cancel flag that backends check between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True at once if cancelled meanwhile."""
        return self._event.wait(seconds)


@dataclass(frozen=True)
class Cutout:
    """What a backend returns: the alpha mask and where it came from."""

    alpha: Image.Image  # mode "L"; may be smaller than the input, the pipeline resizes it
    backend: str
    task_id: str | None = None
    requests: int = 0  # HTTP requests made for this image (0 for local)


@dataclass
class JobHooks:
    """Optional callbacks and state for one job.

    ``on_task`` is called with the remote task id as soon as it is known and
    before waiting for the result, so a journal can record it. ``resume_task``
    asks the backend to wait for an already-submitted task instead of
    submitting again (after a crash). ``on_submit(sent_at, upload_url)`` is
    called just before a submit leaves (wall-clock time); ``lost_submit``
    gives such a record whose answer never arrived (a crash during the
    submit), so the backend looks for that task before sending anything.
    ``known_tasks`` are tasks surely not this image's.
    """

    progress: ProgressFn | None = None
    cancel: CancelToken | None = None
    on_task: Callable[[str], None] | None = None
    resume_task: str | None = None
    on_submit: Callable[[float, str], None] | None = None
    lost_submit: tuple[float, str] | None = None
    known_tasks: Collection[str] = ()

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)

    def check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()


class Backend(Protocol):
    """Turns an image into an alpha mask."""

    name: str

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        """Return the alpha mask of ``image`` (RGB or RGBA, 8-bit, already oriented)."""
        ...

    def close(self) -> None:
        """Release connections, sessions and threads."""
        ...


def resolve_backend_name(config: Config, name: str | None = None) -> str:
    """Return ``wavespeed`` or ``local`` for a requested name (default: the config's)."""
    wanted = name or config.backend
    if wanted not in BACKEND_NAMES:
        raise ConfigError(
            f"unknown backend {wanted!r}", hint=f"use one of {', '.join(BACKEND_NAMES)}"
        )
    if wanted == "auto":
        if config.wavespeed.api_key:
            return "wavespeed"
        return "local"
    return wanted


_auto_announced = False

#: What the offline backend imports (the ``[local]`` extra).
LOCAL_PACKAGES = ("numpy", "onnxruntime")


def missing_local_packages() -> list[str]:
    """The ``[local]`` extra's packages that are not installed (empty when all are)."""
    import importlib.util

    return [name for name in LOCAL_PACKAGES if importlib.util.find_spec(name) is None]


def check_local_installed() -> None:
    """MissingExtraError (exit 2, once) when the offline backend's packages are missing."""
    missing = missing_local_packages()
    if missing:
        raise MissingExtraError(f"the offline model needs {' and '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed",
                          hint="pip install 'bgremove[local]', or set WAVESPEED_API_KEY to use "
                          "the WaveSpeed API")


def make_backend(config: Config, name: str | None = None, *,
                 wait_mode: str | None = None) -> Backend:
    """Build the backend named ``name`` (default: the config's ``backend``).

    ``wait_mode`` overrides ``wavespeed.wait`` ("sync" or "poll"); the daemon
    asks for "poll" so it can journal the task id before waiting.
    """
    global _auto_announced
    resolved = resolve_backend_name(config, name)
    if resolved == "wavespeed":
        if not config.wavespeed.api_key:
            raise MissingKeyError()
        from bgremove.wavespeed import WaveSpeedBackend

        return WaveSpeedBackend(config, wait_mode=wait_mode)
    check_local_installed()
    if (name or config.backend) == "auto" and not _auto_announced:
        _auto_announced = True
        log.info("no WaveSpeed API key configured: using the local offline model")
    from bgremove.local import LocalBackend

    return LocalBackend(config)
