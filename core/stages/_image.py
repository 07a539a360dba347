"""The prepare stage for an image already decoded (the GIMP bridge's pixels, ``cut_out``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgremove.contract import Prepared, Upload

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.contract import StoredImage


def prepare_image(image: Image.Image, *, max_upload_bytes: int, max_upload_side: int,
                  original: StoredImage | None = None, encode: bool = True) -> Prepared:
    """``image`` (upright, RGB or RGBA) as a ``Prepared``: the file's own bytes when
    ``original`` may go up as they are (the mask then comes back as they are stored and
    is turned by their orientation), else ``image`` encoded for upload.

    ``encode=False`` makes no upload bytes (a task being resumed is not uploaded again);
    the orientation is chosen the same way, so a resumed task's mask is turned the same.
    """
    from bgremove.imaging import encode_for_upload, sendable_original

    stored = sendable_original(original, image.size, max_bytes=max_upload_bytes,
                               max_side=max_upload_side)
    if stored is not None:
        return Prepared(stored.as_upload(), image.size, stored.orientation)
    if not encode:
        return Prepared(Upload(b"", "", "", image.size), image.size)
    return Prepared(encode_for_upload(image, max_bytes=max_upload_bytes,
                                      max_side=max_upload_side), image.size)
