"""Running a U-2-Net model with onnxruntime: one session per model, pre- and post-processing.

Preprocessing follows rembg's (so the model sees what it was trained on): RGB
resized to 320x320 with Lanczos, divided by its maximum, normalised with the
ImageNet mean and std, NCHW float32. The first output is min-max normalised to
0..1. Large images are first shrunk by an integer factor with ``Image.reduce``
(a box filter that reads the source once and allocates only the small result),
so a 6000x4000 photo never gets a full-resolution float copy.

Sessions are cached per (model file, threads, arena) for the life of the
process. ``InferenceSession.run`` is thread-safe, but on a few cores two
concurrent runs only fight over the same cores and double the activation
memory, so each session serialises its runs with a lock; pre- and
post-processing of other images still run in parallel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

log = logging.getLogger(__name__)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

FloatArray = npt.NDArray[np.float32]


class ModelSession:
    """One onnxruntime session for one model file; ``run`` is safe from any thread."""

    def __init__(self, path: Path, *, model: bytes | None = None, threads: int = 0,
                 arena: bool = True) -> None:
        """``model``: the file's bytes, already verified (else the file at ``path`` is read)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Measured here (u2netp / u2net, 320x320): ORT's defaults peak at 545 / 1000 MB.
        # The memory pattern planner pre-allocates one block per run shape: without it,
        # 350 / 770 MB at the same or better speed. The input shape never changes, so
        # the arena stops growing after the first run; turning it off as well saves
        # nothing more for u2netp, 100 MB for u2net, and costs 12-35% in speed.
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = arena
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT warns about unused initialisers
        self.path = path
        self._session = ort.InferenceSession(
            str(path) if model is None else model, sess_options=options,
            providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        self._input_name = inputs[0].name
        self._output_name = self._session.get_outputs()[0].name
        shape = inputs[0].shape
        self.input_size = (int(shape[3]) if isinstance(shape[3], int) else 320,
                           int(shape[2]) if isinstance(shape[2], int) else 320)
        self._lock = threading.Lock()

    def run(self, tensor: FloatArray) -> FloatArray:
        with self._lock:
            out: Any = self._session.run([self._output_name], {self._input_name: tensor})[0]
        return np.asarray(out, dtype=np.float32)


_sessions: dict[tuple[str, int, bool], ModelSession] = {}
_sessions_lock = threading.Lock()


def get_session(path: Path, *, threads: int = 0, arena: bool = True,
                read: Callable[[], bytes] | None = None) -> ModelSession:
    """The process-wide session for this model file and settings (made on first use).

    ``read`` gives the model's verified bytes; it runs only when the session is made.
    """
    key = (str(path), threads, arena)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            log.debug("loading %s (threads=%d, arena=%s)", path, threads, arena)
            session = ModelSession(path, model=read() if read else None, threads=threads,
                                   arena=arena)
            _sessions[key] = session
        return session


def clear_sessions() -> None:
    """Drop every cached session (tests; a long-lived process switching models)."""
    with _sessions_lock:
        _sessions.clear()


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize ``image`` to ``size`` with Lanczos, after a cheap integer box reduction.

    The reduction keeps at least twice the target size, so the Lanczos step
    still decides the result; its cost no longer grows with the source size.
    """
    fx = max(1, image.width // (2 * size[0]))
    fy = max(1, image.height // (2 * size[1]))
    if fx > 1 or fy > 1:
        image = image.reduce((fx, fy))
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def flatten_rgb(image: Image.Image) -> Image.Image:
    """RGB of a small image; transparent parts of an RGBA image are shown on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "RGBA":
        base = Image.new("RGB", image.size, (255, 255, 255))
        base.paste(image, mask=image.getchannel("A"))
        return base
    return image.convert("RGB")


def model_input(image: Image.Image, size: tuple[int, int]) -> FloatArray:
    """The NCHW float32 tensor U-2-Net expects (rembg's normalisation)."""
    small = flatten_rgb(shrink(image, size))
    arr = np.asarray(small, dtype=np.float32)
    arr /= max(float(arr.max()), 1e-6)
    arr -= MEAN
    arr /= STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[np.newaxis])


def predict(session: ModelSession, image: Image.Image) -> FloatArray:
    """The model's mask for ``image`` at the model's size (HxW float32, 0..1)."""
    pred: FloatArray = session.run(model_input(image, session.input_size))[0, 0]
    lo, hi = float(pred.min()), float(pred.max())
    if hi - lo < 1e-6:
        return np.zeros_like(pred)
    pred -= lo
    pred /= hi - lo
    return pred


def mask_to_image(mask: FloatArray) -> Image.Image:
    """An "L" image from a 0..1 float mask (rounded, not truncated)."""
    return Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
