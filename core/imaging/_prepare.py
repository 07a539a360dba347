"""The prepare stage: read an input once, check it, make what is uploaded; keep no pixels.

    prepare_file(path, max_pixels=, max_upload_bytes=, max_upload_side=) -> Prepared

A plain JPEG or PNG within the upload limits goes up as the file's own bytes minus its
metadata (``_jpeg``, ``_png``): nothing is decoded for the upload, and the service's mask
comes back as the pixels are stored, so ``Prepared.orientation`` says how the finish turns
it. The whole file is still checked to decode, as cheaply as that can be done: a JPEG is
decoded at 1/8 scale (every entropy-coded byte is still read, the IDCT mostly skipped), a
PNG's image data is inflated and its row filters checked, without unfiltering. Any other
input (another format, CMYK, 16-bit, interlaced, over the limits) is decoded, turned upright
and encoded for upload as before (``encode_for_upload``), and its pixels dropped.

The file's sha256 is kept so the finish can tell that the file it reads again is the one
uploaded. Errors are ``load_image``'s, one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bgremove.contract import Prepared, StoredImage
from bgremove.errors import UnreadableImageError
from bgremove.imaging._modes import exif_orientation
from bgremove.imaging._pillow import pillow_scope
from bgremove.imaging._pipeline import (
    decode_input,
    load_image,
    open_input,
    read_input,
    stored_original,
)
from bgremove.imaging._png import checked_png, png_data_complete
from bgremove.imaging._upload import encode_for_upload, sendable_original

if TYPE_CHECKING:
    from PIL import ImageFile

#: Decoding a JPEG at 1/8 scale checks all of its data at a fraction of the cost.
_CHECK_SCALE = 8


@pillow_scope()
def prepare_file(path: str | os.PathLike[str], *, max_pixels: int, max_upload_bytes: int,
                 max_upload_side: int, data: bytes | None = None) -> Prepared:
    """Read ``path`` (or take its ``data``, already read), check it and make its upload.

    Raises InputNotFoundError, UnreadableImageError or ImageTooLargeError like ``load_image``.
    """
    src = Path(path)
    if data is None:
        data = read_input(src)
    digest = hashlib.sha256(data).hexdigest()
    data = checked_png(data, src)
    with io.BytesIO(data) as fh:
        im = open_input(fh, src, max_pixels=max_pixels)
        orientation = exif_orientation(im, header_only=True)
        width, height = im.size
        upright = (height, width) if orientation >= 5 else (width, height)
        # The one rule ``remove``, ``fetch --input`` and a resume share (``sendable_original``).
        sent = sendable_original(stored_original(im, data, orientation), upright,
                                 max_bytes=max_upload_bytes, max_side=max_upload_side)
        if sent is not None:
            _check_decodes(im, sent, src)
            return Prepared(sent.as_upload(), upright, orientation, digest)
    source = load_image(src, max_pixels=max_pixels, data=data, exif=False)
    upload = encode_for_upload(source.image, max_bytes=max_upload_bytes,
                               max_side=max_upload_side)
    return Prepared(upload, source.image.size, 1, digest)


def _check_decodes(im: ImageFile.ImageFile, sent: StoredImage, src: Path) -> None:
    """Raise UnreadableImageError unless the whole image decodes (no pixels are kept)."""
    if sent.content_type == "image/png":
        if not png_data_complete(sent.data):
            error = UnreadableImageError(f"{src}: the image data is truncated or corrupt")
            error.truncated = True
            raise error
        return
    width, height = im.size
    im.draft("YCbCr" if im.mode == "RGB" else None,
             (max(1, width // _CHECK_SCALE), max(1, height // _CHECK_SCALE)))
    decode_input(im, src)
