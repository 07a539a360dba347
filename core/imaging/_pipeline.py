"""The image pipeline: load an input, encode what is uploaded, apply the returned mask, save.

    load_image(path, max_pixels=)   -> SourceImage  oriented 8-bit RGB/RGBA + matching ICC profile
    source_from_raw(w, h, data)     -> SourceImage  a raw pixel buffer (the GIMP plug-in)
    encode_for_upload(image, ...)   -> Upload       no metadata; PNG, else JPEG q95, else smaller
                                                    (``bgremove.imaging._upload``); a plain
                                                    JPEG or PNG's own bytes minus metadata go
                                                    up instead when they fit
                                                    (``stored_original``, ``_prepare``)
    alpha_from_bytes(data)          -> "L" image    the service's result reduced to its alpha
    fit_alpha(alpha, size)          -> "L" image    the mask at the source's size
    compose(source, alpha, output)  -> the result: original pixels + mask, options applied
    save_image(image, path, ...)    atomic write (``bgremove.imaging._save``)

Every opaque output pixel is the input's own pixel: the mask is applied to the original,
never to the service's re-encoded copy. Colour-mode handling is in ``bgremove.imaging._modes``.
Pillow is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bgremove.contract import StoredImage
from bgremove.errors import (
    ConfigError,
    ImageTooLargeError,
    InputError,
    InputNotFoundError,
    ProtocolError,
    UnreadableImageError,
)
from bgremove.imaging._deep import DEEP_FORMATS, DeepImage, compose_deep, deep_tiles, read_deep
from bgremove.imaging._jpeg import strip_jpeg_metadata
from bgremove.imaging._meta import PngText, kept_exif, kept_png_text
from bgremove.imaging._modes import apply_orientation, exif_orientation, to_8bit_rgb
from bgremove.imaging._pillow import install_pillow_warnings, pillow_scope
from bgremove.imaging._png import checked_png, strip_png_metadata
from bgremove.imaging._xmp import kept_xmp

if TYPE_CHECKING:
    from PIL import Image, ImageFile

    from bgremove.config import OutputConfig

log = logging.getLogger(__name__)

#: Pillow format names accepted as input. Phone JPEGs with several pictures open through
#: "JPEG" as format "MPO"; they are reported as JPEG and their first picture is used.
_INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
#: Pillow's plugin modules for the formats read (``_INPUT_FORMATS``) and written.
_PLUGINS = ("Jpeg", "Png", "WebP", "Tiff", "Bmp", "Gif")
ACCEPTED = "JPEG, PNG, WebP, TIFF, BMP, GIF (first frame)"
_ACCEPTED_HINT = f"accepted formats: {ACCEPTED}"


@dataclass
class SourceImage:
    """An input ready for the backend: upright, mode "RGB" or "RGBA", 8 bits per channel."""

    image: Image.Image
    icc_profile: bytes | None = None  # describes ``image``'s pixels (never a CMYK profile)
    format: str | None = None  # "JPEG", "PNG", ... (None for a raw buffer)
    path: Path | None = None
    exif: bytes | None = None  # the EXIF the output keeps (``bgremove.imaging._meta``)
    deep: DeepImage | None = None  # a 16-bit input's own samples (``bgremove.imaging._deep``)
    xmp: bytes | None = None  # the XMP packet the output keeps (``bgremove.imaging._xmp``)
    texts: tuple[PngText, ...] = ()  # a PNG's text chunks the output keeps (``_meta``)


# --- loading -------------------------------------------------------------------------------

_limit_lock = threading.Lock()
_pillow_ready = False


def _prepare_pillow(max_pixels: int) -> None:
    """Let Pillow's own bomb check never refuse below ``max_pixels``.

    Our explicit check after reading the header is the one that enforces ``max_pixels``;
    Pillow's global limit is only raised (never lowered), so threads loading with different
    limits cannot undo each other. Its DecompressionBombWarning stops a decode inside
    ``pillow_scope`` (``_pillow``): a bomb is refused, not just reported on stderr.
    """
    global _pillow_ready
    from PIL import Image

    with _limit_lock:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels
        if not _pillow_ready:
            # Only the plugins of the formats read and written here: Image.init() imports
            # all ~40 (20-40 ms of every start). A file in no accepted format makes Pillow
            # register the rest itself, which names that format in the error.
            for plugin in _PLUGINS:
                importlib.import_module(f"PIL.{plugin}ImagePlugin")
            install_pillow_warnings()  # in the plugins just loaded too
            _pillow_ready = True


@pillow_scope()
def load_image(path: str | os.PathLike[str], *, max_pixels: int,
               data: bytes | None = None, exif: bool = True) -> SourceImage:
    """Read, fully decode, orient and normalise an input image.

    ``data``, when given, is the file's content already read by the caller (the hot-folder
    daemon hashes and decodes the same bytes); ``path`` then only names it in messages.
    ``exif=False``: the metadata to keep (EXIF, XMP, PNG text) is not read (for an upload,
    which carries none).

    Raises InputNotFoundError, UnreadableImageError (empty, truncated, not an image, a format
    not accepted) or ImageTooLargeError (over ``max_pixels`` or a decompression bomb); every
    message names the file.
    """
    src = Path(path)
    if data is None:
        data = read_input(src)
    data = checked_png(data, src)
    with io.BytesIO(data) as fh:
        im = open_input(fh, src, max_pixels=max_pixels)
        tiles = deep_tiles(im)
        decode_input(im, src)
        orientation = exif_orientation(im)
        kept = kept_exif(im, src) if exif else None
        xmp = kept_xmp(im, src) if exif else None
        texts = kept_png_text(im, src) if exif else ()
        icc = im.info.get("icc_profile") or None
        fmt = "JPEG" if im.format == "MPO" else im.format
        deep = read_deep(fh, im, tiles, icc)
    try:
        image, icc = to_8bit_rgb(im, icc)
        image = apply_orientation(image, orientation)
        if deep is not None:
            deep = deep.map(lambda channel: apply_orientation(channel, orientation))
    except MemoryError:
        raise ImageTooLargeError(f"{src}: not enough memory to convert this image") from None
    except (OSError, ValueError) as exc:
        raise UnreadableImageError(f"{src}: cannot convert its {im.mode} pixels: {exc}") from None
    image.info = {}  # nothing from the file travels with the pixels (EXIF: ``exif`` above)
    log.debug("loaded %s: %s %s %dx%d, orientation %d, icc %s", src, fmt, im.mode, image.width,
              image.height, orientation, "yes" if icc else "no")
    return SourceImage(image=image, icc_profile=icc, format=fmt, path=src, exif=kept, deep=deep,
                       xmp=xmp, texts=texts)


def read_input(src: Path) -> bytes:
    """The whole content of the input file ``src`` (one read), refusing an empty file."""
    with _open_file(src) as opened:
        try:
            data = opened.read()
        except OSError as exc:
            raise UnreadableImageError(f"{src}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise UnreadableImageError(f"{src}: the file is empty (0 bytes)", hint=_ACCEPTED_HINT)
    return data


@pillow_scope()
def open_input(fh: IO[bytes], src: Path, *, max_pixels: int) -> ImageFile.ImageFile:
    """Open an input from its header only, refusing one of more than ``max_pixels``."""
    _prepare_pillow(max_pixels)
    if not fh.read(1):
        raise UnreadableImageError(f"{src}: the file is empty (0 bytes)", hint=_ACCEPTED_HINT)
    fh.seek(0)
    im = _open(fh, src)
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{src}: {im.width}x{im.height} is {pixels:,} pixels, over the limit of "
            f"{max_pixels:,}", hint="raise input.max_pixels if you trust this file")
    return im


def stored_original(im: Image.Image, data: bytes, orientation: int) -> StoredImage | None:
    """The file's own bytes minus metadata, for a plain 8-bit RGB or grey JPEG (an MPO's
    first picture) or a plain PNG (``_png.strip_png_metadata``); None for anything else
    (CMYK, 16-bit, interlaced, a structure not clearly understood)."""
    if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L"):
        stripped = strip_jpeg_metadata(data)
        kind = "image/jpeg"
    elif im.format == "PNG":
        png = strip_png_metadata(data)
        stripped, kind = (png[0] if png else None), "image/png"
    else:
        return None
    if stripped is None:
        log.debug("the file's structure is not plain: its pixels are re-encoded for upload")
        return None
    return StoredImage(stripped, kind, im.size, orientation)


def _open_file(src: Path) -> IO[bytes]:
    try:
        st = src.stat()
    except FileNotFoundError:
        raise InputNotFoundError(f"{src}: no such file") from None
    except OSError as exc:
        raise UnreadableImageError(f"{src}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputNotFoundError(f"{src}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputNotFoundError(f"{src}: not a regular file")
    if st.st_size == 0:
        raise UnreadableImageError(f"{src}: the file is empty (0 bytes)", hint=_ACCEPTED_HINT)
    try:
        return open(src, "rb")  # the caller closes it
    except FileNotFoundError:
        raise InputNotFoundError(f"{src}: no such file") from None
    except OSError as exc:
        raise UnreadableImageError(f"{src}: cannot read: {exc.strerror or exc}",
                                   hint="check the file's permissions") from None


def _open(fh: IO[bytes], src: Path) -> ImageFile.ImageFile:
    """Read the header only, mapping Pillow's errors to ours."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(fh, formats=_INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{src}: refused as a decompression bomb ({_one_line(exc)})",
                                 hint="raise input.max_pixels if you trust this file") from None
    except UnidentifiedImageError:
        other = _identify_any(fh)
        if other is not None:
            raise UnreadableImageError(f"{src}: {other} images are not accepted",
                                       hint=_ACCEPTED_HINT) from None
        raise UnreadableImageError(f"{src}: not an image bgremove can read",
                                   hint=_ACCEPTED_HINT) from None
    except Exception as exc:  # a malformed header can make a plugin raise anything
        raise UnreadableImageError(f"{src}: corrupt image header ({_one_line(exc)})",
                                   hint=_ACCEPTED_HINT) from None


def _identify_any(fh: IO[bytes]) -> str | None:
    """The format name of a file that Pillow knows but we do not accept, if any."""
    from PIL import Image

    try:
        fh.seek(0)
        with Image.open(fh) as other:
            return str(other.format) if other.format else None
    except Exception:
        return None


@pillow_scope()
def decode_input(im: Image.Image, src: Path) -> None:
    """Decode every pixel now, so a truncated file fails here and not halfway through a job."""
    from PIL import Image

    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{src}: refused as a decompression bomb ({_one_line(exc)})") \
            from None
    except MemoryError:
        raise ImageTooLargeError(f"{src}: not enough memory to decode this image") from None
    except Exception as exc:
        error = UnreadableImageError(f"{src}: the image data is truncated or corrupt "
                                     f"({_one_line(exc)})")
        error.truncated = True
        raise error from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def source_from_raw(width: int, height: int, data: bytes, mode: str = "RGBA") -> SourceImage:
    """Wrap a raw pixel buffer (8-bit RGBA, RGB, LA or L, rows top to bottom) as a SourceImage."""
    from PIL import Image

    bands = {"RGBA": 4, "RGB": 3, "LA": 2, "L": 1}
    if mode not in bands:
        raise InputError(f"raw pixels in mode {mode!r} are not supported",
                         hint="use RGBA, RGB, LA or L, 8 bits per channel")
    if width <= 0 or height <= 0:
        raise InputError(f"raw pixels of size {width}x{height}: both sides must be positive")
    expected = width * height * bands[mode]
    if len(data) != expected:
        raise InputError(f"raw {mode} pixels for {width}x{height} need {expected} bytes, "
                         f"got {len(data)}")
    image = Image.frombytes(mode, (width, height), data)
    if mode in ("L", "LA"):
        image = image.convert("RGBA" if mode == "LA" else "RGB")
    return SourceImage(image=image, icc_profile=None, format=None, path=None)


# --- download --------------------------------------------------------------------------------

#: What the service's result may be: formats Pillow decodes itself, nothing that runs a
#: helper program (PostScript goes to Ghostscript) or that was never asked for.
RESULT_FORMATS = ("PNG", "WEBP")


def alpha_from_bytes(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode the service's result image to its alpha channel (mode "L").

    Only PNG and WebP are decoded, and only when the header's size is at most
    ``max_pixels`` (checked before any pixel is decoded). RGBA, LA and
    palette-with-transparency results give their alpha; an "L" (or 1-bit) image is taken
    as the mask itself. Anything else raises ProtocolError.
    """
    return result_mask(result_image(data, max_pixels=max_pixels))


@pillow_scope()
def result_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The service's result decoded (PNG or WebP only, at most ``max_pixels``, checked from
    the header before any pixel is decoded); ProtocolError for anything else."""
    from PIL import Image, UnidentifiedImageError

    _prepare_pillow(0)
    try:
        im = Image.open(io.BytesIO(data), formats=RESULT_FORMATS)
    except UnidentifiedImageError:
        raise _bad_result(f"the service's result is not a PNG or WebP image "
                          f"({len(data)} bytes starting {data[:8]!r}): refused") from None
    except Exception as exc:
        raise ProtocolError(f"the service's result image cannot be decoded ({_one_line(exc)}; "
                            f"{len(data)} bytes)") from None
    if im.width * im.height > max_pixels:
        raise _bad_result(f"the service's result is {im.width}x{im.height} "
                          f"({im.width * im.height:,} pixels), more than the "
                          f"{max_pixels:,} allowed for this image: refused before decoding")
    try:
        im.load()
    except Exception as exc:
        raise ProtocolError(f"the service's result image cannot be decoded "
                            f"({_one_line(exc)}; {len(data)} bytes)") from None
    return im


def result_mask(im: Image.Image) -> Image.Image:
    """The alpha of a decoded result (see ``alpha_from_bytes``); ProtocolError if it has none."""
    try:
        mask = _alpha_of(im)
    except Exception as exc:
        raise ProtocolError(f"the service's result image cannot be decoded "
                            f"({_one_line(exc)})") from None
    if mask is None:
        raise ProtocolError(f"the service's result ({im.format} {im.mode}) has no alpha channel",
                            hint="the model must return a cut-out with transparency or a mask")
    return mask


def _bad_result(message: str) -> ProtocolError:
    error = ProtocolError(message, hint="check that wavespeed.base_url points at the "
                          "WaveSpeed API")
    error.transient = False  # the same answer would come again
    return error


def _alpha_of(im: Image.Image) -> Image.Image | None:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return im.getchannel("A")
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA").getchannel("A")
    if im.mode == "L":
        return im.copy()
    if im.mode == "1":
        return im.convert("L")
    return None


def fit_alpha(alpha: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The mask as "L" at ``size``, resized (Lanczos) if the service returned another size."""
    from PIL import Image

    mask = alpha if alpha.mode == "L" else alpha.convert("L")
    if mask.size == tuple(size):
        return mask
    if abs(mask.width / mask.height - size[0] / size[1]) > 0.01 * size[0] / size[1]:
        log.warning("the mask is %dx%d but the image is %dx%d: stretching it", mask.width,
                    mask.height, size[0], size[1])
    return mask.resize(size, Image.Resampling.LANCZOS)


# --- composing -------------------------------------------------------------------------------

#: The background of a JPEG output when none is given (as the remove.bg service does).
JPEG_DEFAULT_BACKGROUND = "white"

#: A result whose every pixel is at most this opaque (about 3 %) shows no subject.
NO_SUBJECT_MAX_ALPHA = 8
#: The warning of a result in which nothing is left visible (see ``has_subject``).
NO_SUBJECT_WARNING = "no subject found: the result is fully transparent"


def has_subject(mask: Image.Image) -> bool:
    """Whether an "L" mask keeps anything visible (some pixel over ``NO_SUBJECT_MAX_ALPHA``)."""
    high = mask.getextrema()[1]
    return isinstance(high, (int, float)) and high > NO_SUBJECT_MAX_ALPHA


def parse_color(text: str) -> tuple[int, int, int]:
    """An opaque colour from "#rgb", "#rrggbb", a CSS name, "r,g,b" or "rgb(r, g, b)".

    Colours with an alpha part ("#rrggbbaa") are refused: a background is always opaque
    (leave the background unset to keep transparency).
    """
    from PIL import ImageColor

    examples = 'use e.g. "#ffffff", "#fff", "white" or "255,255,255"'
    value = text.strip()
    if value.count(",") == 2 and not value.lower().startswith(("rgb", "hsl", "hsv")):
        parts = [p.strip() for p in value.split(",")]
        if all(p.isdigit() and int(p) <= 255 for p in parts):
            return int(parts[0]), int(parts[1]), int(parts[2])
        raise ConfigError(f"bad colour {text!r}: each of r,g,b must be 0-255", hint=examples)
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise ConfigError(f"bad colour {text!r}", hint=examples) from None
    if len(rgb) == 4:
        raise ConfigError(f"bad colour {text!r}: a background colour cannot be transparent",
                          hint=f"{examples}; leave the background unset to keep transparency")
    return rgb[0], rgb[1], rgb[2]


def estimate_foreground(image: Image.Image, alpha: Image.Image, *,
                        inplace: bool = False) -> Image.Image:
    """Recolour semi-transparent pixels with their estimated foreground colour (needs numpy).

    ``alpha`` is an "L" mask of the image's size; see ``bgremove.imaging._foreground``.
    """
    import importlib

    try:
        foreground = importlib.import_module("bgremove.imaging._foreground")
    except ImportError:
        raise ConfigError("output.foreground needs numpy",
                          hint="pip install 'bgremove[local]', or set output.foreground: false"
                          ) from None
    result: Image.Image = foreground.estimate_foreground(image, alpha, inplace=inplace)
    return result


def compose(source: SourceImage, alpha: Image.Image, options: OutputConfig) -> Image.Image:
    """Apply the mask to the original pixels and the output options.

    The result has the source's size (or the subject's box with ``crop``). An input that
    already had alpha keeps min(input alpha, mask). ``mask_only`` gives the "L" mask (and
    wins over ``background``); ``background`` flattens onto a solid colour (RGB), white for
    a JPEG output when none is set (JPEG has no transparency); otherwise RGBA. With
    ``crop``, an empty mask keeps the full size.
    """
    from PIL import Image

    src = source.image
    mask, box = _mask_and_box(source, alpha, options)
    if box is not None:
        src, mask = src.crop(box), mask.crop(box)
    if options.mask_only:
        return mask.copy() if mask is alpha else mask
    background = _background(options)
    if background is not None:
        out = Image.new("RGB", src.size, parse_color(background))
        out.paste(src, (0, 0), mask)  # opaque pixels: exactly src; partial: blended
        return out
    # One copy of the pixels: a cropped RGBA is already a fresh image.
    out = src if (src is not source.image and src.mode == "RGBA") else src.convert("RGBA")
    out.putalpha(mask)
    return out


def compose_output(source: SourceImage, alpha: Image.Image, options: OutputConfig
                   ) -> Image.Image | DeepImage:
    """``compose``, at 16 bits per channel for a 16-bit input written as PNG or TIFF."""
    deep = source.deep
    if deep is not None and options.format in DEEP_FORMATS and not options.mask_only:
        _, box = _mask_and_box(source, alpha, options)
        background = _background(options)
        # The model's mask alone: the input's own 16-bit alpha is applied by compose_deep.
        result = compose_deep(deep, fit_alpha(alpha, source.image.size), box,
                              parse_color(background) if background else None)
        if result is not None:
            return result
    return compose(source, alpha, options)


def _mask_and_box(source: SourceImage, alpha: Image.Image, options: OutputConfig
                  ) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """The mask at the source's size (with the input's alpha), and the crop box if any."""
    from PIL import ImageChops

    src = source.image
    mask = fit_alpha(alpha, src.size)
    if src.mode == "RGBA":
        mask = ImageChops.darker(mask, src.getchannel("A"))
    box = None
    if options.crop:
        box = subject_box(mask, options.crop_margin)
        if box is None:
            log.info("crop: the mask is empty, keeping the full image")
        elif box == (0, 0, src.width, src.height):
            box = None
    return mask, box


def _background(options: OutputConfig) -> str | None:
    if options.background is None and options.format == "jpg":
        return JPEG_DEFAULT_BACKGROUND
    return options.background


def subject_box(mask: Image.Image, margin: int = 0) -> tuple[int, int, int, int] | None:
    """The box of pixels with alpha > 0, grown by ``margin`` and clamped; None if none."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (max(0, left - margin), max(0, top - margin),
            min(mask.width, right + margin), min(mask.height, bottom + margin))
