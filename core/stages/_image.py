"""The prepare stage for an image already decoded (the GIMP bridge's pixels, ``cut_out``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgremove.contract import Prepared, Upload

if TYPE_CHECKING:
    from PIL import Image


def prepare_image(image: Image.Image, *, max_upload_bytes: int, max_upload_side: int,
                  encode: bool = True) -> Prepared:
    """``image`` (upright, RGB or RGBA) as a ``Prepared``: encoded for upload, no metadata.

    ``encode=False`` makes no upload bytes (a task being resumed is not uploaded again).
    """
    from bgremove.imaging import encode_for_upload

    if not encode:
        return Prepared(Upload(b"", "", "", image.size), image.size)
    return Prepared(encode_for_upload(image, max_bytes=max_upload_bytes,
                                      max_side=max_upload_side), image.size)
