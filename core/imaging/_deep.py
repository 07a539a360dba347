"""16-bit inputs stay 16-bit: a cut-out of a 16-bit PNG or TIFF, written as PNG or TIFF,
keeps the original's 16 bits per channel.

Pillow decodes 16-bit RGB(A) to 8 bits (the high byte of each sample) and writes neither a
16-bit RGB PNG nor a 16-bit RGB TIFF. The model needs only the 8 bits; the output needs
the original's pixels. So the file is decoded a second time with the decoder's unpacker
switched to the other byte order, which yields the low bytes, and each channel is joined
into one 32-bit "I" image (0-65535). Composing works on those channels, and the writers
below emit 16-bit PNG (filter 0, zlib) and big-endian TIFF (Adobe Deflate) themselves.

Covered: 16-bit RGB and RGBA PNG and TIFF, 16-bit greyscale (without a background colour).
Everything else (mask-only, WebP or JPEG outputs, ``--foreground``, 16-bit grey with alpha
or on a background colour) takes the 8-bit path, as before.
"""

from __future__ import annotations

import errno
import io
import logging
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image, ImageFile

    from bgremove.imaging._meta import PngText

log = logging.getLogger(__name__)

#: Pillow's 16-bit raw modes and the same layout read for the other byte of each sample.
_OTHER_BYTE = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B",
               "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B"}
#: libtiff hands over samples in the machine's byte order ("N": native).
_FOREIGN = "B" if sys.byteorder == "little" else "L"
_OTHER_BYTE.update({"RGB;16N": f"RGB;16{_FOREIGN}", "RGBA;16N": f"RGBA;16{_FOREIGN}"})
_GREY_16 = ("I;16", "I;16B", "I;16L", "I;16N")
#: Formats written at 16 bits.
DEEP_FORMATS = ("png", "tiff")
_ZLIB_LEVEL = 3  # as the 8-bit PNG writer: fast, about 10 % more bytes than 6
_STRIP_BYTES = 1 << 18


@dataclass
class DeepImage:
    """An image as 16-bit channels: ``bands`` names them ("RGB", "RGBA", "L", "LA")."""

    bands: str
    channels: list[Image.Image]  # each mode "I", values 0-65535, one per band
    icc: bytes | None = None  # the file's own profile (the 8-bit copy may have been converted)

    @property
    def size(self) -> tuple[int, int]:
        return self.channels[0].size

    def map(self, fn: Callable[[Image.Image], Image.Image]) -> DeepImage:
        """The same bands with ``fn`` (a transposition, a crop) applied to each channel."""
        return DeepImage(self.bands, [fn(ch) for ch in self.channels], self.icc)


def deep_tiles(im: ImageFile.ImageFile) -> list[Any] | None:
    """The tiles to decode the low bytes of a 16-bit RGB(A) file, read before ``im.load()``."""
    if im.format not in ("PNG", "TIFF") or not im.tile:
        return None
    tiles = []
    for tile in im.tile:
        args = tile.args
        raw = args[0] if isinstance(args, tuple) and args else args
        if not isinstance(raw, str) or raw not in _OTHER_BYTE:
            return None
        swapped = (_OTHER_BYTE[raw], *args[1:]) if isinstance(args, tuple) else _OTHER_BYTE[raw]
        tiles.append(tile._replace(args=swapped))
    return tiles


def read_deep(fh: IO[bytes], im: Image.Image, tiles: list[Any] | None,
              icc: bytes | None) -> DeepImage | None:
    """The 16-bit channels of ``im`` (loaded), or None when it is not a 16-bit image.

    ``fh`` is the file ``im`` came from; ``tiles`` come from ``deep_tiles`` before loading.
    A failure (an unusual layout, a decoder that refuses) only means the 8-bit path.
    """
    from PIL import Image, ImageMath

    try:
        if im.mode in _GREY_16:
            return DeepImage("L", [im.convert("I")], icc)
        if tiles is None or im.mode not in ("RGB", "RGBA"):
            return None
        fh.seek(0)
        with Image.open(fh) as low:
            low.tile = tiles
            low.load()
            if low.mode != im.mode or low.size != im.size:
                return None
            channels = [
                ImageMath.lambda_eval(lambda a: a["h"] * 256 + a["l"],
                                      h=im.getchannel(b).convert("I"),
                                      l=low.getchannel(b).convert("I"))
                for b in im.mode]
    except Exception as exc:
        log.debug("reading the 16-bit samples failed (%s): using 8 bits", exc)
        return None
    deep = DeepImage(im.mode, [ch for ch in channels if isinstance(ch, Image.Image)], icc)
    if deep.bands == "RGBA" and deep.channels[3].getextrema() == (65535, 65535):
        deep = DeepImage("RGB", deep.channels[:3], icc)  # an alpha opaque everywhere says nothing
    return deep


def compose_deep(deep: DeepImage, mask: Image.Image, box: tuple[int, int, int, int] | None,
                 background: tuple[int, int, int] | None) -> DeepImage | None:
    """The 16-bit cut-out: ``mask`` ("L", the final 8-bit mask at full size) applied.

    ``box`` crops first. Returns None where the 8-bit path must be taken (grey on a colour).
    """
    from PIL import ImageMath

    if background is not None and deep.bands in ("L", "LA"):
        return None
    if box is not None:
        deep = deep.map(lambda ch: ch.crop(box))
        mask = mask.crop(box)
    alpha = ImageMath.lambda_eval(lambda a: a["m"] * 257, m=mask.convert("I"))
    if deep.bands.endswith("A"):
        alpha = ImageMath.lambda_eval(lambda a: a["min"](a["m"], a["s"]), m=alpha,
                                      s=deep.channels[-1])
    colour = deep.channels[:-1] if deep.bands.endswith("A") else deep.channels
    bands = deep.bands.rstrip("A")
    if background is None:
        return DeepImage(bands + "A", [*colour, alpha], deep.icc)
    weight = alpha.convert("F")
    blended = [
        ImageMath.lambda_eval(
            lambda a: a["int"]((a["v"] * a["w"] + a["bg"] * (65535.0 - a["w"])) / 65535.0 + 0.5),
            v=ch.convert("F"), w=weight, bg=float(value * 257))
        for ch, value in zip(colour, background, strict=True)]
    return DeepImage("RGB", blended, deep.icc)


def _samples(deep: DeepImage) -> bytes:
    """The pixels as interleaved big-endian 16-bit samples, row after row."""
    planes = [ch.tobytes("raw", "I;16B") for ch in deep.channels]
    n = len(planes)
    if n == 1:
        return planes[0]
    out = bytearray(len(planes[0]) * n)
    for i, plane in enumerate(planes):
        out[2 * i::2 * n] = plane[0::2]
        out[2 * i + 1::2 * n] = plane[1::2]
    return bytes(out)


# --- PNG -----------------------------------------------------------------------------------

def write_png16(deep: DeepImage, fh: IO[bytes], icc: bytes | None, exif: bytes | None,
                xmp: bytes | None = None, texts: Sequence[PngText] = ()) -> None:
    from bgremove.imaging._png import PNG_COLOUR, IdatWriter, png_chunk, png_head

    width, height = deep.size
    stride = width * 2 * len(deep.bands)
    data = _samples(deep)
    fh.writelines(png_head(width, height, 16, PNG_COLOUR[deep.bands], icc, exif, xmp, texts))
    packer = zlib.compressobj(_ZLIB_LEVEL)
    idat = IdatWriter(fh)
    for y in range(height):
        idat.write(packer.compress(b"\0" + data[y * stride:(y + 1) * stride]))
    idat.write(packer.flush())
    idat.close()
    fh.write(png_chunk(b"IEND", b""))


# --- TIFF ----------------------------------------------------------------------------------

#: IFD0 text tags carried from the EXIF block (description, make, model, software, date,
#: artist, copyright); ``save_image`` adds the EXIF sub-IFD afterwards, as for 8-bit TIFF.
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_BYTE, _SHORT, _LONG, _RATIONAL, _ASCII, _UNDEFINED = 1, 3, 4, 5, 2, 7
TIFF_XMP = 700  # the XMP packet's tag (Adobe XMP spec, part 3)


def write_tiff16(deep: DeepImage, fh: IO[bytes], icc: bytes | None, exif: bytes | None,
                 xmp: bytes | None = None, texts: Sequence[PngText] = ()) -> None:
    """A big-endian baseline TIFF, 16 bits per sample, Adobe Deflate strips. ``texts`` are
    PNG's own and not written."""
    width, height = deep.size
    spp = len(deep.bands)
    stride = width * 2 * spp
    rows = max(1, _STRIP_BYTES // max(1, stride))
    data = _samples(deep)
    fh.write(b"MM\0\x2a\0\0\0\0")  # the IFD offset is patched in at the end
    offsets, counts = [], []
    for top in range(0, height, rows):
        strip = zlib.compress(data[top * stride:min(height, top + rows) * stride], _ZLIB_LEVEL)
        offsets.append(fh.tell())
        counts.append(len(strip))
        fh.write(strip)
    tags: list[tuple[int, int, list[int] | bytes]] = [
        (256, _LONG, [width]), (257, _LONG, [height]), (258, _SHORT, [16] * spp),
        (259, _SHORT, [8]), (262, _SHORT, [2 if deep.bands.startswith("RGB") else 1]),
        (273, _LONG, offsets), (277, _SHORT, [spp]), (278, _LONG, [rows]),
        (279, _LONG, counts), (282, _RATIONAL, [72, 1]), (283, _RATIONAL, [72, 1]),
        (284, _SHORT, [1]), (296, _SHORT, [2])]
    if deep.bands.endswith("A"):
        tags.append((338, _SHORT, [2]))  # extra sample: unassociated alpha
    if icc:
        tags.append((34675, _UNDEFINED, icc))
    if xmp:
        tags.append((TIFF_XMP, _BYTE, xmp))
    tags.extend(_text_tags(exif))
    _write_ifd(fh, sorted(tags, key=lambda t: t[0]))


def _text_tags(exif: bytes | None) -> list[tuple[int, int, list[int] | bytes]]:
    from PIL import Image

    if not exif:
        return []
    block = Image.Exif()
    block.load(exif)
    out: list[tuple[int, int, list[int] | bytes]] = []
    for tag in _TIFF_TEXT_TAGS:
        value = block.get(tag)
        if isinstance(value, str) and value:
            out.append((tag, _ASCII, value.encode("latin-1", "replace") + b"\0"))
    return out


def _write_ifd(fh: IO[bytes], tags: list[tuple[int, int, list[int] | bytes]]) -> None:
    """The IFD at the end of the file, its long values after it; the header points at it."""
    if fh.tell() % 2:
        fh.write(b"\0")
    ifd_at = fh.tell()
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    entries, blob = bytearray(), bytearray()
    for tag, kind, value in tags:
        if isinstance(value, bytes):
            payload, count = value, len(value)
        elif kind == _RATIONAL:
            payload, count = struct.pack(f">{len(value)}I", *value), len(value) // 2
        else:
            payload = struct.pack(f">{len(value)}{'H' if kind == _SHORT else 'I'}", *value)
            count = len(value)
        if len(payload) > 4:  # the entry holds where the value is
            field = struct.pack(">I", extra_at + len(blob))
            blob += payload + (b"\0" if len(payload) % 2 else b"")
        else:
            field = payload.ljust(4, b"\0")
        entries += struct.pack(">HHI", tag, kind, count) + field
    if extra_at + len(blob) >= 1 << 32:
        raise OSError(errno.EFBIG, "the image is too large for a TIFF file (4 GB)")
    fh.write(struct.pack(">H", len(tags)) + bytes(entries) + b"\0\0\0\0" + bytes(blob))
    fh.seek(4)
    fh.write(struct.pack(">I", ifd_at))
    fh.seek(0, io.SEEK_END)
