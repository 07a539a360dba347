"""The photographer's EXIF carried from an input to its cut-out, minus where it was taken.

Kept, as photographers' export tools do with "all metadata except location": who made the
picture and its rights (Artist, Copyright, ImageDescription, the Windows XP fields), when
(DateTime and the EXIF dates) and with what (Make, Model, Software, lens and exposure).
Dropped: the GPS block; the thumbnail (it shows the old background); Orientation (the
pixels are already upright); the pixel dimensions (a crop changes them); the MakerNote
(a vendor blob whose internal offsets break when rewritten); and every structural TIFF tag.
A damaged block (an entry or a value past its end) is not carried at all: Pillow would read
part of it, with raw warnings that ``_pillow.pillow_scope`` keeps off stderr.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
#: IFD0 tags worth keeping: description, make, model, software, date, artist, copyright,
#: XPTitle, XPComment, XPAuthor, XPKeywords, XPSubject.
_KEPT_IFD0 = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298,
              0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F)
#: EXIF sub-IFD tags left out: MakerNote, PixelXDimension, PixelYDimension, the interop pointer.
_DROPPED_EXIF = (0x927C, 0xA002, 0xA003, 0xA005)
#: Bytes per value of each TIFF field type (types Pillow skips are absent).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
               13: 4, 16: 8, 17: 8, 18: 8}


def kept_exif(im: Image.Image, src: str | os.PathLike[str]) -> bytes | None:
    """The EXIF block to write into the output of ``im``, or None when nothing is worth keeping.

    Never raises: damaged EXIF is dropped with one warning naming ``src`` (the image itself
    is fine).
    """
    from PIL import Image

    raw = im.info.get("exif")
    if isinstance(raw, bytes) and not _intact(raw):
        log.warning("%s: its EXIF data is damaged; the cut-out is written without it", src)
        return None
    try:
        source = im.getexif()
        kept = Image.Exif()
        for tag in _KEPT_IFD0:
            value = source.get(tag)
            if value is not None:
                kept[tag] = value
        if _EXIF_IFD in source:
            sub = {tag: value for tag, value in source.get_ifd(_EXIF_IFD).items()
                   if tag not in _DROPPED_EXIF}
            if sub:
                kept[_EXIF_IFD] = sub
        if not len(kept):
            return None
        return kept.tobytes()
    except Exception as exc:  # a malformed block must not cost the image
        log.debug("dropping unreadable EXIF data: %s", exc)
        return None


def _intact(block: bytes) -> bool:
    """Whether the main IFD of a raw EXIF block, and its EXIF sub-IFD, lie whole within it."""
    tiff = block[6:] if block.startswith(b"Exif\x00\x00") else block
    if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        sub = _check_ifd(tiff, order, struct.unpack_from(order + "L", tiff, 4)[0])
        if sub is not None:
            _check_ifd(tiff, order, sub)
    except (struct.error, ValueError):
        return False
    return True


def _check_ifd(tiff: bytes, order: str, offset: int) -> int | None:
    """Check that the IFD at ``offset`` and its values lie within ``tiff`` (else raise
    ``struct.error`` or ``ValueError``); return where its EXIF sub-IFD is, if it has one."""
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    struct.unpack_from(order + "L", tiff, offset + 2 + 12 * count)  # the next-IFD pointer
    pointer = None
    for start in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, n, value = struct.unpack_from(order + "HHLL", tiff, start)
        size = _TYPE_SIZES.get(kind, 0) * n
        if size > 4 and value + size > len(tiff):
            raise ValueError(f"tag {tag:#x} has its value past the end")
        if tag == _EXIF_IFD:
            pointer = value
    return pointer
