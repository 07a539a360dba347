"""Turning any decoded input into oriented 8-bit RGB or RGBA, with a matching ICC profile.

Choices (see also ``bgremove.imaging``):

- 16-bit grey (``I;16``, ``I;16B``, ...) and ``I`` are scaled as 0-65535 -> 0-255 with rounding
  (``round(v / 257)``), never clipped. 16-bit RGB/RGBA PNG and TIFF are reduced by Pillow's
  decoder to their high byte (``v >> 8``): also a scaling, off from rounding by at most 1.
- ``F`` (32-bit float): 0.0-1.0 is scaled to 0-255 when the whole image lies in that range,
  otherwise values are taken as 0-255 and clamped.
- CMYK with an embedded CMYK profile, and grey with an embedded grey profile, are converted
  through that profile to sRGB (relative colorimetric, black-point compensation) and the sRGB
  profile is kept with the pixels. Without a usable profile the conversion is Pillow's plain
  formula and no profile is kept (the pixels are then taken as sRGB). A profile whose colour
  space does not match the pixels is dropped: a CMYK profile is never attached to RGB pixels.
- Palette images with transparency, LA, PA and premultiplied modes become RGBA; an alpha
  channel that is fully opaque everywhere is dropped (RGB is smaller to upload and compose).
"""

from __future__ import annotations

import functools
import io
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: EXIF orientation value -> the transposition that makes the pixels upright.
_ORIENTATIONS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM",
                 5: "TRANSPOSE", 6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_EXIF_ORIENTATION = 0x0112

_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def exif_orientation(im: Image.Image, *, header_only: bool = False) -> int:
    """The image's EXIF orientation (1-8), 1 when absent, invalid or unreadable.

    ``header_only``: from what opening the file read (EXIF, XMP, text chunks before the image
    data), without the PNG reader's load of the whole image to reach chunks after its data.
    """
    from PIL import Image

    try:
        exif = Image.Image.getexif(im) if header_only else im.getexif()
        value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # a corrupt EXIF block must not make the image unusable
        log.warning("ignoring unreadable EXIF data: %s", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    """Return ``im`` turned upright for an EXIF orientation value."""
    from PIL import Image

    name = _ORIENTATIONS.get(orientation)
    if name is None:
        return im
    return im.transpose(Image.Transpose[name])


def undo_orientation(im: Image.Image, orientation: int) -> Image.Image:
    """Return upright ``im`` turned back the way the pixels are stored (``apply_orientation``
    undone: only the two quarter turns differ from their own inverse)."""
    return apply_orientation(im, {6: 8, 8: 6}.get(orientation, orientation))


def icc_colour_space(icc: bytes | None) -> str | None:
    """The colour space a profile describes ("RGB", "GRAY", "CMYK", ...), None if not a profile."""
    if not icc or len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip() or None


@functools.lru_cache(maxsize=1)
def srgb_profile_bytes() -> bytes:
    """The ICC profile attached to pixels that were converted to sRGB."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_8bit_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Convert a loaded image of any mode to 8-bit RGB or RGBA plus the profile of those pixels."""
    mode = im.mode
    space = icc_colour_space(icc)
    if mode in _GREY_16:
        im, mode = _scale_16bit(im), "L"
    elif mode == "F":
        im, mode = _float_to_l(im), "L"
    elif mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode == "P":
        has_alpha = "transparency" in im.info or (
            im.palette is not None and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode in ("PA", "RGBa", "RGBX"):
        im = im.convert("RGBA" if mode != "RGBX" else "RGB")
        mode = im.mode
    elif mode == "La":
        im = im.convert("LA")
        mode = "LA"

    if mode == "CMYK":
        return _convert_with_profile(im, icc if space == "CMYK" else None, None, space)
    if mode in ("L", "LA"):
        grey, alpha = (im.getchannel("L"), im.getchannel("A")) if mode == "LA" else (im, None)
        return _convert_with_profile(grey, icc if space == "GRAY" else None, alpha, space)
    if mode in ("RGB", "RGBA"):
        if icc is not None and space != "RGB":
            log.warning("dropping an embedded %s colour profile that does not match RGB pixels",
                        space or "unreadable")
            icc = None
        return _drop_opaque_alpha(im), icc
    # YCbCr, HSV, LAB and other rare modes: Pillow's own conversion, no profile.
    return im.convert("RGB"), None


def _convert_with_profile(im: Image.Image, icc: bytes | None, alpha: Image.Image | None,
                          space: str | None) -> tuple[Image.Image, bytes | None]:
    """CMYK or grey pixels -> RGB (or RGBA with ``alpha``), through ``icc`` when it is usable."""
    from PIL import ImageCms

    out: Image.Image | None = None
    if icc is not None:
        try:
            transformed = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile_bytes())),
                renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode="RGB",
                flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
            out = transformed
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            log.warning("cannot convert through the embedded %s profile (%s): "
                        "using a plain conversion", im.mode, exc)
    elif space is not None:
        log.warning("dropping an embedded %s colour profile that does not match %s pixels",
                    space, im.mode)
    profile = srgb_profile_bytes() if out is not None else None
    if out is None:
        out = im.convert("RGB")
    if alpha is not None:
        out.putalpha(alpha)
        out = _drop_opaque_alpha(out)
    return out, profile


def _drop_opaque_alpha(im: Image.Image) -> Image.Image:
    if im.mode == "RGBA":
        extrema = im.getextrema()
        if extrema[-1] == (255, 255):  # the alpha band never drops below 255
            return im.convert("RGB")
    return im


def _scale_16bit(im: Image.Image) -> Image.Image:
    """16-bit grey -> L, 0-65535 mapped to 0-255 with rounding (values above 65535 clamp)."""
    wide = im if im.mode == "I" else im.convert("I")
    return wide.point(lambda v: v * (1 / 257) + 0.5).convert("L")


def _float_to_l(im: Image.Image) -> Image.Image:
    low, high = im.getextrema()
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low >= 0 and high <= 1:
        im = im.point(lambda v: v * 255 + 0.5)
    return im.convert("L")
