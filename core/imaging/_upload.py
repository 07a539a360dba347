"""What is sent to the service: the pixels and nothing else, as small as the limits require.

Lossless PNG when it fits (the service, and the emulator's tests, see the exact pixels), else
JPEG quality 95, else a reduced JPEG. No EXIF (so no GPS position), no ICC profile, no text
chunks and no file name leave the machine.
"""

from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING

from bgremove.contract import StoredImage, Upload
from bgremove.errors import ImageTooLargeError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: JPEG fallback quality; alpha is flattened onto this colour for a JPEG upload.
JPEG_QUALITY = 95
_JPEG_FLATTEN_ON = (255, 255, 255)
_PNG_UPLOAD_LEVEL = 1  # fast: the upload is sent once, and the bytes matter less than the time
_MIN_UPLOAD_SIDE = 16


def sendable_original(original: StoredImage | None, size: tuple[int, int], *, max_bytes: int,
                      max_side: int) -> StoredImage | None:
    """``original`` if the file's own bytes may go up as they are: within the limits, and
    the stored pixels of the image of ``size`` (its size once turned upright); else None.

    The one rule for both the upload and ``fetch --input``: a mask made from these bytes
    comes back as the pixels are stored and must be turned by ``original.orientation``.
    """
    if original is None:
        return None
    width, height = original.size
    upright = (height, width) if original.orientation >= 5 else (width, height)
    if upright != tuple(size) or max(width, height) > max_side or len(original.data) > max_bytes:
        return None
    return original


class _TooBig(Exception):
    """Raised by _LimitedBuffer when the encoded output passes its limit."""


class _LimitedBuffer(io.BytesIO):
    """A BytesIO that stops an encoder as soon as its output is over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise _TooBig
        return super().write(data)


def encode_for_upload(image: Image.Image, *, max_bytes: int, max_side: int) -> Upload:
    """Encode ``image`` for the service, with no metadata at all (no EXIF, GPS, ICC, text).

    Lossless PNG (fast compression) when it fits in ``max_bytes``, so the service sees the
    exact pixels; otherwise JPEG quality 95 (alpha flattened onto white); otherwise smaller
    JPEGs (aspect kept) until one fits. An image with a side over ``max_side`` is first
    reduced to fit. The file name sent is neutral ("image.png"), never the user's.
    """
    from PIL import Image

    im = image if image.mode in ("RGB", "RGBA") else image.convert(
        "RGBA" if "A" in image.getbands() else "RGB")
    if max(im.size) > max_side:
        im = _scaled(im, max_side / max(im.size))
    png = _encode_png(im, max_bytes) if _png_may_fit(im, max_bytes) else None
    if png is not None:
        return Upload(png, "image/png", "image.png", im.size)
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, _JPEG_FLATTEN_ON)
        flat.paste(im, (0, 0), im.getchannel("A"))
        im = flat
    while True:
        jpeg = _encode_jpeg(im)
        if len(jpeg) <= max_bytes:
            if im.size != image.size:
                log.info("uploading a reduced copy: %dx%d -> %dx%d (%d bytes)", image.width,
                         image.height, im.width, im.height, len(jpeg))
            return Upload(jpeg, "image/jpeg", "image.jpg", im.size)
        # Bytes scale roughly with the pixel count; aim a little under the limit.
        factor = min(0.9, math.sqrt(max_bytes / len(jpeg)) * 0.95)
        if min(im.size) * factor < _MIN_UPLOAD_SIDE:
            raise ImageTooLargeError(
                f"cannot encode the image under {max_bytes} bytes for upload",
                hint="raise wavespeed.max_upload_bytes")
        im = _scaled(im, factor)


def _scaled(im: Image.Image, factor: float) -> Image.Image:
    from PIL import Image

    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _png_may_fit(im: Image.Image, limit: int) -> bool:
    """Estimate from a sample of rows whether a PNG can fit, so big photos skip a doomed encode.

    Four bands (1/16 of the rows in all) are encoded; the full PNG is only tried when the
    extrapolated size is within 5 % of the limit (the estimate is typically within 1 %).
    Small images are always tried.
    """
    from PIL import Image

    raw = im.width * im.height * len(im.getbands())
    if raw <= limit or im.height < 64:
        return True
    rows = max(1, im.height // 64)
    sample = Image.new(im.mode, (im.width, 4 * rows))
    for i in range(4):
        top = (2 * i + 1) * im.height // 8
        sample.paste(im.crop((0, top, im.width, top + rows)), (0, i * rows))
    buf = io.BytesIO()
    sample.save(buf, format="PNG", compress_level=_PNG_UPLOAD_LEVEL)
    estimate = len(buf.getvalue()) * im.height / (4 * rows)
    log.debug("PNG upload estimate %.0f bytes for a limit of %d", estimate, limit)
    return estimate <= limit * 1.05


def _encode_png(im: Image.Image, limit: int) -> bytes | None:
    buf = _LimitedBuffer(limit)
    try:
        # icc_profile=None: Pillow would otherwise copy a profile left in ``im.info``.
        im.save(buf, format="PNG", compress_level=_PNG_UPLOAD_LEVEL, icc_profile=None)
    except _TooBig:
        return None
    return buf.getvalue()


def _encode_jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY, icc_profile=None, exif=b"")
    return buf.getvalue()
