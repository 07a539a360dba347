"""The photographer's EXIF carried from an input to its cut-out, minus where it was taken.

Kept, as photographers' export tools do with "all metadata except location": who made the
picture and its rights (Artist, Copyright, ImageDescription, the Windows XP fields), when
(DateTime and the EXIF dates) and with what (Make, Model, Software, lens and exposure).
Dropped: the GPS block; the thumbnail (it shows the old background); Orientation (the
pixels are already upright); the pixel dimensions (a crop changes them); the MakerNote
(a vendor blob whose internal offsets break when rewritten); and every structural TIFF tag.
"""

from __future__ import annotations

import logging
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


def kept_exif(im: Image.Image) -> bytes | None:
    """The EXIF block to write into the output of ``im``, or None when nothing is worth keeping.

    Never raises: unreadable EXIF is dropped with a debug line (the image itself is fine).
    """
    from PIL import Image

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
