"""The contract between a backend and its callers: what goes in and what comes out.

A leaf module (it imports only ``bgremove.errors``): the backends, the image job,
the daemon and the plug-in all import it, and it imports none of them.

    Backend     the protocol: ``cut_out(image, hooks) -> Cutout``, ``close()``
    Cutout      the alpha mask a backend returns, and where it came from
    JobHooks    progress, cancel, the task-id callback and a task to resume
    StoredImage an input file's own bytes, metadata removed, for upload as they are
    Upload      the bytes sent to the service
    Prepared    an input after the prepare stage: what to send; no decoded pixels
    Result      what the remote stage hands to the finish stage
    CancelToken a thread-safe cancel flag checked between steps
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bgremove.errors import CancelledError

if TYPE_CHECKING:
    from PIL import Image

#: ``progress(stage, fraction)``: stage is one of "prepare", "upload", "wait",
#: "download", "inference", "compose"; fraction is 0.0-1.0 within the whole job.
ProgressFn = Callable[[str, float], None]


class CancelToken:
    """A thread-safe cancel flag that backends check between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._followers: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        self._callbacks: list[Callable[[], None]] = []

    @classmethod
    def either(cls, *tokens: CancelToken) -> CancelToken:
        """A new token cancelled as soon as any of ``tokens`` is (or by itself)."""
        token = cls()
        for parent in tokens:
            with parent._lock:
                if not parent._event.is_set():
                    parent._followers.add(token)
                    continue
            token.cancel()
        return token

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            followers = list(self._followers)
            callbacks, self._callbacks = self._callbacks, []
        for token in followers:
            token.cancel()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, on the cancelling thread, when cancelled (now if it is):
        for a waiter that does not sleep on ``wait``, such as a poller's heap."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

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


@dataclass(frozen=True)
class StoredImage:
    """An input file's own bytes, metadata removed but never re-encoded (a JPEG's pixels as
    stored, before its EXIF orientation). A backend that uploads may send these instead of
    encoding the image; it then turns the returned mask by ``orientation`` itself."""

    data: bytes
    content_type: str  # "image/jpeg", "image/png"
    size: tuple[int, int]  # the stored pixel size (width and height swap for 5-8)
    orientation: int  # EXIF orientation 1-8 of the file

    def as_upload(self) -> Upload:
        """These bytes as sent, under the neutral file name of their type."""
        name = "image.png" if self.content_type == "image/png" else "image.jpg"
        return Upload(self.data, self.content_type, name, self.size)


@dataclass(frozen=True)
class Upload:
    """The bytes sent to the service: no EXIF, no GPS, no text, no file name (a JPEG sent as
    its own bytes keeps its ICC segment; nothing else says how its colours are meant)."""

    data: bytes
    content_type: str  # "image/jpeg", "image/png"
    filename: str  # neutral ("image.jpg"), never the user's
    size: tuple[int, int]  # the pixel size of ``data`` as stored


@dataclass(frozen=True)
class Prepared:
    """An input after the prepare stage: what to send, and what finishing it needs.

    Holds no decoded pixels, so a job waiting on the service costs its upload's bytes
    at most (and nothing once the upload is done and ``upload`` dropped).
    """

    upload: Upload
    size: tuple[int, int]  # the input's upright size (what the output has)
    orientation: int = 1  # EXIF orientation 1-8 the returned mask must be turned by
    digest: str | None = None  # sha256 hex of the input file's bytes as read (None: pixels)


@dataclass(frozen=True)
class Result:
    """What the remote stage hands to the finish stage.

    ``data`` is the service's result file as it came (PNG or WebP, not yet decoded:
    ``max_pixels`` is the most pixels it may have); a backend that makes the mask
    itself (the local model) gives ``alpha`` instead, as stored (before orientation).
    """

    backend: str
    data: bytes | None = None
    alpha: Image.Image | None = None
    max_pixels: int = 0
    task_id: str | None = None
    requests: int = 0


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
