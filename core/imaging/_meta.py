"""The photographer's EXIF and PNG text carried from an input to its cut-out, minus where it
was taken (XMP: ``_xmp``).

Kept, as photographers' export tools do with "all metadata except location": who made the
picture and its rights (Artist, Copyright, ImageDescription, the Windows XP fields), when
(DateTime and the EXIF dates) and with what (Make, Model, Software, lens and exposure).
Dropped: the GPS block; the thumbnail (it shows the old background); Orientation (the
pixels are already upright); the pixel dimensions and the subject's place (a crop changes
them); the MakerNote (a vendor blob whose internal offsets break when rewritten); and every
structural TIFF tag.
A damaged block (an entry or a value past its end) is not carried at all: Pillow would read
part of it, with raw warnings that ``_pillow.pillow_scope`` keeps off stderr. Neither is a
block over ``MAX_EXIF_BYTES`` once filtered.

A PNG input's text chunks (tEXt, zTXt, iTXt) are carried to PNG outputs by the same rule
(``kept_png_text``): only the keywords the PNG specification defines (Title, Author,
Description, Copyright, Creation Time, Software, Disclaimer, Warning, Source, Comment), up to
``MAX_TEXT_BYTES`` in all. Every other keyword goes: tools' housekeeping (ImageMagick's
date:create, thumbnailers' Thumb::*), raw EXIF/IPTC/XMP profiles written as hex text (with the
GPS position and the orientation again) and private keys whose content bgremove cannot know.
The XMP packet ("XML:com.adobe.xmp") is filtered apart (``_xmp.kept_xmp``).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
#: IFD0 tags worth keeping: description, make, model, software, date, artist, copyright,
#: XPTitle, XPComment, XPAuthor, XPKeywords, XPSubject.
_KEPT_IFD0 = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298,
              0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F)
#: EXIF sub-IFD tags left out: MakerNote, PixelXDimension, PixelYDimension, the interop
#: pointer, SubjectArea and SubjectLocation (pixel positions: a crop moves them).
_DROPPED_EXIF = (0x927C, 0xA002, 0xA003, 0xA005, 0x9214, 0xA214)
#: Bytes per value of each TIFF field type (types Pillow skips are absent).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
               13: 4, 16: 8, 17: 8, 18: 8}
#: The most EXIF an output carries (its block with the "Exif" header, once filtered): what a
#: JPEG's EXIF segment holds. A PNG, WebP or TIFF input can hold more (a long user comment):
#: over it, a JPEG output could not be written, and the others would grow without bound.
MAX_EXIF_BYTES = 65_533
#: The PNG specification's own text keywords: the only ones carried.
PNG_KEYWORDS = ("Title", "Author", "Description", "Copyright", "Creation Time", "Software",
                "Disclaimer", "Warning", "Source", "Comment")
#: The most text an output carries from its input's text chunks (UTF-8 bytes of keywords
#: and texts); chunks past it are dropped with one warning.
MAX_TEXT_BYTES = 65_536


@dataclass(frozen=True)
class PngText:
    """One text chunk to write: tEXt when ``international`` is false (Latin-1), else iTXt."""

    keyword: str
    text: str
    international: bool = False
    language: str = ""
    translated: str = ""  # the keyword in that language (iTXt)


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
        block = kept.tobytes()
    except Exception as exc:  # a malformed block must not cost the image
        log.debug("dropping unreadable EXIF data: %s", exc)
        return None
    if len(block) > MAX_EXIF_BYTES:
        log.warning("%s: its EXIF data is over %s bytes once filtered; the cut-out is written "
                    "without it", src, f"{MAX_EXIF_BYTES:,}")
        return None
    return block


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


def kept_png_text(im: Image.Image, src: str | os.PathLike[str]) -> tuple[PngText, ...]:
    """The text chunks of a PNG ``im`` (decoded: chunks after the image data are read) to
    write into its output, in the file's order; see the module docstring. Never raises."""
    texts = getattr(im, "text", None) if im.format == "PNG" else None
    if not isinstance(texts, dict):
        return ()
    kept: list[PngText] = []
    size = 0
    for keyword, value in texts.items():
        if keyword not in PNG_KEYWORDS or not isinstance(value, str) or "\x00" in value:
            continue
        language, translated = getattr(value, "lang", None), getattr(value, "tkey", None)
        international = language is not None or not _latin1(value)
        chunk = PngText(keyword, str(value), international, language or "", translated or "")
        size += len(keyword) + len(chunk.text.encode("utf-8")) + len(chunk.translated.encode())
        if size > MAX_TEXT_BYTES:
            log.warning("%s: its PNG text is over %s bytes; the cut-out carries only its first "
                        "%d text chunk(s)", src, f"{MAX_TEXT_BYTES:,}", len(kept))
            break
        kept.append(chunk)
    return tuple(kept)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
