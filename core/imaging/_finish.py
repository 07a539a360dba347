"""The finish stage: the service's answer applied to the file it was made from, written once.

    finish_file(prepared, result, src, dst, output) -> warning or None
    load_source(prepared, src)                      -> the input decoded ahead of its finish
    result_alpha(result, orientation)               -> the mask, "L", turned upright

The file is read again and must have the sha256 it had when prepared: a file changed since
then is refused (InputChangedError), so a mask is never applied to other pixels than its own.
The service's result is decoded under its ``max_pixels`` and its mask turned by the
orientation the upload was stored in.

The fast path (nothing re-encoded): the output is a PNG of the input's full size with
nothing that changes its pixels (no crop, background, mask only, foreground estimate,
16-bit input), the input has no alpha, the upload was upright, and the service's colour
pixels are exactly the input's, or its clear ones (alpha 0) are 0,0,0 and all others
exactly the input's: many services zero what they make fully transparent. Then the
service's PNG is written as it came, with the input's ICC profile and kept EXIF, XMP and
PNG text added as chunks (``_png.png_with_metadata``): the pixels ``compose`` would give,
without its encode (most of a 24 MP photo's CPU). When the service zeroed its clear
pixels, so does the output: they hold 0,0,0 where ``compose`` keeps the input's colours,
and every pixel that shows (alpha > 0) is the same. Nothing but the input's colours or
zeros is ever kept hidden under alpha 0; any other colour there, or one changed where
alpha > 0 (premultiplied colours included), goes the other way: the mask is applied to
the original pixels and encoded (``compose_output``, ``save_image``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.errors import InputChangedError
from bgremove.imaging._modes import apply_orientation
from bgremove.imaging._pillow import pillow_scope
from bgremove.imaging._pipeline import (
    NO_SUBJECT_WARNING,
    SourceImage,
    alpha_from_bytes,
    compose_output,
    estimate_foreground,
    fit_alpha,
    has_subject,
    load_image,
    read_input,
    result_image,
    result_mask,
)
from bgremove.imaging._png import png_with_metadata
from bgremove.imaging._save import fitting_profile, save_encoded, save_image

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.config import OutputConfig
    from bgremove.contract import Prepared, Result


#: Bytes of the service's pixels compared at a time by ``_same_colours``: a band's copies
#: stay within a core's cache (24 MP: 0.03 s a photo, against 0.13 s in bands of 256 rows).
_COMPARE_BYTES = 1 << 19
#: From this size on, the service's result is decoded on a thread beside the input.
_DECODE_APART_BYTES = 1 << 20


def load_source(prepared: Prepared, src: str | os.PathLike[str]) -> SourceImage:
    """``src`` read and decoded ahead of its finish (while its task waits at the service),
    for ``finish_file(source=)``; InputChangedError when it is not the file prepared."""
    path = Path(src)
    width, height = prepared.size
    return load_image(path, max_pixels=width * height, data=_read_prepared(prepared, path))


@pillow_scope()
def finish_file(prepared: Prepared, result: Result, src: str | os.PathLike[str],
                dst: str | os.PathLike[str], output: OutputConfig, *,
                data: bytes | None = None, source: SourceImage | None = None) -> str | None:
    """Write the cut-out of ``src`` (or of its ``data``, already read) to ``dst`` atomically.

    ``source`` is the input as ``load_source`` decoded it ahead; the file is still read
    again and must still be the one prepared.

    Returns a warning worth showing (an empty cut-out), else None. Raises InputChangedError
    when the file is not the one prepared, ProtocolError for a result that cannot be used,
    OutputError when ``dst`` cannot be written; nothing is written then.
    """
    path = Path(src)
    data = _read_prepared(prepared, path, data)
    if source is None:
        source, service = _decode(path, data, prepared, result)
    else:  # decoded ahead (``load_source``) from these very bytes: the digest says so
        service = result_image(result.data, max_pixels=result.max_pixels) \
            if result.data is not None else None
    if source.image.size != prepared.size:
        raise _changed(path)
    stored = result_mask(service) if service is not None else _local_alpha(result)
    alpha = fit_alpha(apply_orientation(stored, prepared.orientation), source.image.size)
    warning = None if has_subject(alpha) else NO_SUBJECT_WARNING
    exif = None if output.strip_metadata else source.exif
    xmp = None if output.strip_metadata else source.xmp
    texts = () if output.strip_metadata else source.texts
    if service is not None and result.data is not None and prepared.orientation == 1 \
            and _needs_no_change(source, output):
        # The service's PNG with our profile and metadata: kept if it shows only our colours.
        png = png_with_metadata(result.data, fitting_profile("RGBA", source.icc_profile), exif,
                                xmp, texts)
        if png is not None and _same_colours(service, source.image):
            save_encoded(png, dst)
            return warning
    del service, stored
    if output.foreground and not output.mask_only:
        source.image = estimate_foreground(source.image, alpha, inplace=True)
        source.deep = None  # the estimate is made on the 8-bit pixels: the output is 8-bit
    image = compose_output(source, alpha, output)
    save_image(image, dst, fmt=output.format, icc_profile=source.icc_profile, exif=exif,
               xmp=xmp, texts=texts)
    return warning


def _read_prepared(prepared: Prepared, path: Path, data: bytes | None = None) -> bytes:
    """The file's bytes (``data`` when given), refused unless they are the ones prepared."""
    if data is None:
        data = read_input(path)
    if prepared.digest is not None and hashlib.sha256(data).hexdigest() != prepared.digest:
        raise _changed(path)
    return data


def _decode(path: Path, data: bytes, prepared: Prepared, result: Result
            ) -> tuple[SourceImage, Image.Image | None]:
    """The input and the service's result (None for a local mask) decoded, both at once: the
    result on a thread of its own while the input is decoded here (Pillow's decoders let go
    of the interpreter lock), so a finish takes the longer of the two, not their sum, when a
    core is free (24 MP: JPEG 0.1-0.2 s, PNG 0.35-0.5 s)."""
    from concurrent.futures import ThreadPoolExecutor

    width, height = prepared.size
    if result.data is None:
        return load_image(path, max_pixels=width * height, data=data), None
    if len(result.data) < _DECODE_APART_BYTES:  # a small image: not worth a thread
        source = load_image(path, max_pixels=width * height, data=data)
        return source, result_image(result.data, max_pixels=result.max_pixels)
    with ThreadPoolExecutor(1, thread_name_prefix="bgremove-decode") as pool:
        service = pool.submit(result_image, result.data, max_pixels=result.max_pixels)
        source = load_image(path, max_pixels=width * height, data=data)
        return source, service.result()


def result_alpha(result: Result, orientation: int = 1) -> Image.Image:
    """The mask of ``result`` ("L", decoded under its ``max_pixels``), turned upright by
    the orientation its upload was stored in."""
    if result.data is not None:
        mask = alpha_from_bytes(result.data, max_pixels=result.max_pixels)
    else:
        mask = _local_alpha(result)
    return apply_orientation(mask, orientation)


def _local_alpha(result: Result) -> Image.Image:
    if result.alpha is None:
        raise ValueError("a Result carries the service's data or a local alpha")
    return result.alpha if result.alpha.mode == "L" else result.alpha.convert("L")


def _changed(path: Path) -> InputChangedError:
    return InputChangedError(f"{path}: the file changed while it was being processed, so its "
                             "result was not written", hint="run it again")


def _needs_no_change(source: SourceImage, output: OutputConfig) -> bool:
    """Whether the output is the input's full-size pixels with the mask as alpha, as PNG."""
    return (output.format == "png" and not output.mask_only and output.background is None
            and not output.crop and not output.foreground and source.deep is None
            and source.image.mode == "RGB")


def _same_colours(service: Image.Image, original: Image.Image) -> bool:
    """Whether the service's RGBA result shows exactly the original's RGB pixels and hides
    nothing else: either every pixel's colour is the original's, or every pixel with alpha
    > 0 has the original's colour and every pixel with alpha 0 is 0,0,0 (a service that
    zeroes the colours it makes fully transparent). Anything else under alpha 0, and any
    colour changed where alpha > 0 (premultiplied ones included), is refused.

    Compared a band of rows at a time: two full-size copies (some 150 MB at 24 MP) would
    otherwise be added to the finish's peak memory, and small bands are compared in cache.
    The strict comparison goes first and costs nothing more when it holds; once a band
    fails it, the rule for zeroed colours is checked from the first band (24 MP: 0.03 s and
    0.05 s a photo).
    """
    from PIL import ImageChops

    if service.mode != "RGBA" or service.size != original.size:
        return False
    for box in _bands(original.size):
        if ImageChops.difference(service.crop(box).convert("RGB"),
                                 original.crop(box)).getbbox() is not None:
            return _shown_and_zeroed(service, original)
    return True


def _shown_and_zeroed(service: Image.Image, original: Image.Image) -> bool:
    """Whether every pixel of ``service`` with alpha > 0 has ``original``'s colour and every
    one with alpha 0 is 0,0,0: its colours are the original's with the clear ones zeroed."""
    from PIL import Image, ImageChops

    shown = [0] + [255] * 255  # alpha > 0, as a mask of mode "1" (its paste copies, fast)
    for box in _bands(original.size):
        band = service.crop(box)
        want = Image.new("RGB", band.size)
        want.paste(original.crop(box), None, band.getchannel("A").point(shown, "1"))
        if ImageChops.difference(band.convert("RGB"), want).getbbox() is not None:
            return False
    return True


def _bands(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Boxes of whole rows covering ``size``, each about ``_COMPARE_BYTES`` of RGBA."""
    width, height = size
    rows = max(1, _COMPARE_BYTES // (4 * width))
    return [(0, top, width, min(height, top + rows)) for top in range(0, height, rows)]
