"""The emulator's "models": a deterministic key-out, or the real local backend.

``keyout_alpha`` is the contract the tests rely on: the key colour is the RGB of
pixel (0, 0); a pixel is transparent (0) when every channel is within 24 of the
key, otherwise opaque (255); for an input with alpha the result is the minimum
of that and the input's own alpha. Every pixel can be predicted.
"""

from __future__ import annotations

import importlib
import io
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgremove.choices import EMULATOR_MODELS
from bgremove.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

KEY_TOLERANCE = 24
#: What the emulated service decodes: the formats an image upload may have, and no image
#: beyond Pillow's own bomb limit.
SERVICE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
SERVICE_MAX_PIXELS = 2 * 89_478_485

#: image (RGB or RGBA) -> alpha (mode "L", same size)
AlphaFn = Callable[["Image.Image"], "Image.Image"]


def _normalise(image: Image.Image) -> Image.Image:
    """RGBA when the image carries transparency, else RGB."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info)
    wanted = "RGBA" if has_alpha else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def keyout_alpha(image: Image.Image) -> Image.Image:
    """The deterministic key-out mask of ``image`` (see the module docstring)."""
    from PIL import Image, ImageChops

    image = _normalise(image)
    rgb = image.convert("RGB") if image.mode == "RGBA" else image
    key = rgb.getpixel((0, 0))
    assert isinstance(key, tuple)
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, key[:3]))
    red, green, blue = diff.split()
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    alpha = distance.point(lambda v: 0 if v <= KEY_TOLERANCE else 255)
    if image.mode == "RGBA":
        alpha = ImageChops.darker(alpha, image.getchannel("A"))
    return alpha


def decode_image(data: bytes) -> Image.Image:
    """Decode an uploaded image (first frame) as the service does, or raise ``ValueError``:
    the service's own formats and pixel limit (not the client's settings), every byte
    decoded, and turned by its EXIF orientation (a client that strips that tag and
    turns the mask itself is checked by this)."""
    from PIL import ImageOps

    from bgremove.imaging import decode_image as decode

    image = decode(data, max_pixels=SERVICE_MAX_PIXELS, formats=SERVICE_FORMATS)
    return _normalise(ImageOps.exif_transpose(image) or image)


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (aspect kept, at least 1x1) so its longest side is ``max_side``;
    unchanged when it fits or ``max_side`` is 0."""
    width, height = size
    if not max_side or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def cutout_png(image: Image.Image, alpha: Image.Image, max_side: int = 0,
               colours: str = "input") -> bytes:
    """The output the service returns: the input's RGB with ``alpha``, as PNG; scaled down to
    a longest side of ``max_side`` when given (a model that answers below full size).

    ``colours``: "input" keeps the input's colours under every alpha; "zero-clear" makes
    them 0,0,0 where alpha is 0 (as many services send); "premultiplied" multiplies them by
    alpha / 255 (0 where alpha is 0, darker where it is partial)."""
    from PIL import Image

    rgba = image.convert("RGB").copy()
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size)
    size = fit_within(rgba.size, max_side)
    if size != rgba.size:
        rgba = rgba.resize(size, Image.Resampling.BILINEAR)
        alpha = alpha.resize(size, Image.Resampling.BILINEAR)
    rgba.putalpha(alpha)
    if colours == "zero-clear":
        clear = Image.new("RGBA", size)
        clear.paste(rgba, None, alpha.point([0] + [255] * 255, "1"))
        rgba = clear
    elif colours == "premultiplied":  # Pillow's "RGBa" holds colour x alpha / 255, rounded
        rgba = Image.frombytes("RGBA", size, rgba.convert("RGBa").tobytes())
    elif colours != "input":
        raise ValueError(f"unknown output colours {colours!r}")
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class LocalModel:
    """The offline backend (``bgremove.local``) used as the emulator's model; loaded once."""

    def __init__(self) -> None:
        try:
            backend_class = importlib.import_module("bgremove.local").LocalBackend
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                "the emulator's 'local' model needs the local backend (bgremove.local), "
                f"which cannot be imported: {exc}",
                hint="use --model keyout, or install the local extras: "
                "pip install 'bgremove[local]'",
            ) from None
        from bgremove.config import Config

        self._backend = backend_class(Config(backend="local"))
        prepare = getattr(self._backend, "prepare", None)
        if prepare is not None:
            prepare()  # load (and on first use fetch) the model now, not in the first task
        self._lock = threading.Lock()  # one inference at a time: the session is shared

    def __call__(self, image: Image.Image) -> Image.Image:
        with self._lock:
            cutout = self._backend.cut_out(image, None)
        alpha: Image.Image = cutout.alpha
        return alpha

    def close(self) -> None:
        self._backend.close()


def load_model(name: str) -> tuple[AlphaFn, Callable[[], None]]:
    """The alpha function for ``name`` and a function that releases it."""
    if name == "keyout":
        return keyout_alpha, lambda: None
    if name == "local":
        model = LocalModel()
        return model, model.close
    raise ConfigError(f"unknown emulator model {name!r}",
                      hint=f"allowed: {', '.join(EMULATOR_MODELS)}")
