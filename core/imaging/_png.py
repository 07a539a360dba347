"""A PNG file's own chunks: its metadata taken out for upload, the service's PNG kept as it came.

``strip_png_metadata(data)`` keeps what decoding needs (IHDR, PLTE, tRNS, IDAT, IEND) and drops
every other chunk: text (tEXt, zTXt, iTXt), EXIF (eXIf, with any GPS position), time, the
colour chunks (iCCP, sRGB, gAMA, cHRM, ...) and private ones. Only a plain PNG qualifies: 8 bits
per sample (a palette may have fewer), not interlaced, not animated, every chunk's CRC right;
anything else gives None and the caller re-encodes the decoded pixels (a 16-bit PNG, for one).
``png_data_complete`` then checks that the image data inflates to exactly the rows the header
announces, without unfiltering or keeping any pixels.

``checked_png(data, src)`` is how every input PNG is read first: an ancillary chunk (text,
time, ...) with a wrong CRC is dropped, as the PNG spec lets a decoder do (Pillow would refuse
the whole file); a critical one (IHDR, PLTE, IDAT, IEND) refuses the file with one line.

``png_with_metadata(png, icc, exif, xmp, texts)`` is the finish's fast path: the service's
8-bit RGBA PNG reduced to IHDR, IDAT and IEND, with our ICC profile (iCCP), EXIF (eXIf), XMP
(iTXt "XML:com.adobe.xmp", uncompressed) and text chunks put in before the image data. The
image data is copied byte for byte: nothing is re-encoded.

``write_png(image, fh, level=, icc=, exif=, xmp=, texts=)`` encodes a large 8-bit image (a
photo's cut-out) in half the CPU of Pillow's encoder: every row gets the Up filter (the row
minus the one above, computed by Pillow's ``subtract_modulo`` on a band of rows at a time)
instead of Pillow's choice among all five filters per row, then zlib. The same chunks as
Pillow's PNG.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.imaging._meta import PngText

from bgremove.errors import UnreadableImageError

log = logging.getLogger(__name__)

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The chunks an upload keeps: what a decoder needs for the pixels, nothing about them.
_KEPT = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")
#: Channels per pixel by colour type: grey, RGB, palette, grey + alpha, RGBA.
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_RGBA = 6
#: Chunks that may hold an EXIF orientation (eXIf, XMP or a raw EXIF profile in text).
_TAGS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")
_INFLATE_STEP = 1 << 20  # bytes inflated at a time while checking the image data
#: Colour types of the 8-bit modes ``write_png`` writes.
PNG_COLOUR = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
_FILTER_UP = b"\x02"
#: Bytes of pixels ``write_png`` filters at a time, and of image data per IDAT chunk.
_ENCODE_BYTES = 1 << 20
_IDAT_BYTES = 1 << 18
#: Runs of rows ``write_png`` compresses at once: one a core, at most 4.
_PARTS = min(4, os.cpu_count() or 1)
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" (informative only)
_ADLER_BASE = 65521


@dataclass(frozen=True)
class Chunk:
    """One chunk of a PNG file, by its place in the file."""

    kind: bytes
    start: int  # where its length field starts
    end: int  # just after its CRC
    data: memoryview  # its payload


@dataclass(frozen=True)
class Header:
    """A PNG's IHDR chunk."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's samples (without its filter-type byte)."""
        return (self.width * _CHANNELS[self.colour_type] * self.bit_depth + 7) // 8


def read_chunks(data: bytes) -> tuple[Header, list[Chunk]] | None:
    """The header and chunks of a well-formed PNG, or None: no signature, a chunk running
    past the end or with a wrong CRC, IHDR not first, no IEND, or an unknown critical chunk."""
    if not data.startswith(SIGNATURE):
        return None
    view = memoryview(data)
    found: list[Chunk] = []
    pos, end = len(SIGNATURE), len(data)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        stop = pos + 12 + length
        if stop > end or zlib.crc32(view[pos + 4:stop - 4]) != int.from_bytes(
                view[stop - 4:stop], "big"):
            return None
        found.append(Chunk(kind, pos, stop, view[pos + 8:stop - 4]))
        pos = stop
        if kind == b"IEND":
            break
    if not found or found[0].kind != b"IHDR" or found[-1].kind != b"IEND" \
            or len(found[0].data) != 13 or not any(c.kind == b"IDAT" for c in found):
        return None
    if any(chunk.kind[0:1].isupper() and chunk.kind not in _KEPT for chunk in found):
        return None  # a critical chunk we do not know
    ihdr = found[0].data
    header = Header(int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big"),
                    ihdr[8], ihdr[9], ihdr[12] == 1)
    if header.colour_type not in _CHANNELS or not header.width or not header.height:
        return None
    return header, found


def checked_png(data: bytes, src: str | os.PathLike[str]) -> bytes:
    """``data`` (anything, not only PNG) without the ancillary PNG chunks whose CRC is wrong:
    the same object when there are none. Raises UnreadableImageError naming ``src`` when a
    critical chunk's CRC is wrong. A structure cut short is left for the decoder to report."""
    if not data.startswith(SIGNATURE):
        return data
    view = memoryview(data)
    damaged: list[tuple[int, int]] = []
    pos, end = len(SIGNATURE), len(data)
    while pos + 12 <= end:
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        stop = pos + 12 + length
        if stop > end:
            break
        if zlib.crc32(view[pos + 4:stop - 4]) != int.from_bytes(view[stop - 4:stop], "big"):
            if _critical(kind):
                raise UnreadableImageError(
                    f"{src}: the PNG is damaged: its {_name(kind)} chunk fails its checksum")
            damaged.append((pos, stop))
        pos = stop
        if kind == b"IEND":
            break
    if not damaged:
        return data
    log.debug("%s: dropping %d ancillary PNG chunk(s) with a wrong checksum", src, len(damaged))
    kept, last = bytearray(), 0
    for start, stop in damaged:
        kept += view[last:start]
        last = stop
    kept += view[last:]
    return bytes(kept)


def _critical(kind: bytes) -> bool:
    return not kind[0] & 0x20  # the first letter's case bit: upper case is critical


def _name(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else repr(kind)


def strip_png_metadata(data: bytes) -> tuple[bytes, Header] | None:
    """``data`` with only the chunks decoding needs, and its header; None when the file is
    not a plain 8-bit (or palette), non-interlaced, still PNG with a clear structure."""
    parsed = read_chunks(data)
    if parsed is None:
        return None
    header, chunks = parsed
    plain_depth = header.bit_depth == 8 or (
        header.colour_type == 3 and header.bit_depth in (1, 2, 4))
    if not plain_depth or header.interlaced or any(c.kind == b"acTL" for c in chunks):
        return None
    first_data = next(i for i, c in enumerate(chunks) if c.kind == b"IDAT")
    if any(c.kind in _TAGS for c in chunks[first_data:]):
        return None  # an orientation could hide there: found only by decoding the whole file
    out = bytearray(SIGNATURE)
    for chunk in chunks:
        if chunk.kind in _KEPT:
            out += data[chunk.start:chunk.end]
    return bytes(out), header


def png_data_complete(data: bytes) -> bool:
    """Whether a non-interlaced PNG's IDAT stream inflates to exactly its rows, each with a
    valid filter type: the whole file decodes, checked without unfiltering or keeping pixels."""
    parsed = read_chunks(data)
    if parsed is None or parsed[0].interlaced:
        return False
    header = parsed[0]
    stride = header.row_bytes + 1
    expected = stride * header.height
    inflater = zlib.decompressobj()
    total = 0
    try:
        for chunk in parsed[1]:
            if chunk.kind != b"IDAT":
                continue
            pending: bytes | memoryview = chunk.data
            while not inflater.eof:
                out = inflater.decompress(pending, _INFLATE_STEP)
                # The filter-type bytes (0-4) in this piece: one every ``stride`` bytes.
                filters = out[(-total) % stride::stride]
                if filters and max(filters) > 4:
                    return False
                total += len(out)
                if total > expected:
                    return False
                pending = inflater.unconsumed_tail
                if not pending and len(out) < _INFLATE_STEP:
                    break  # this chunk's data is all inflated (a full piece may leave more)
        return inflater.eof and total == expected
    except zlib.error:
        return False


def png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None, xmp: bytes | None = None,
                      texts: Sequence[PngText] = ()) -> list[bytes | memoryview] | None:
    """The service's PNG as it came, reduced to IHDR, IDAT and IEND, with ``icc`` (an iCCP
    chunk), ``exif`` (eXIf), ``xmp`` and ``texts`` added (``metadata_chunks``), as pieces to
    write one after the other (views of ``png``: no copy of its image data); None unless it
    is a well-formed 8-bit RGBA PNG."""
    parsed = read_chunks(png)
    if parsed is None:
        return None
    header, chunks = parsed
    if header.colour_type != _RGBA or header.bit_depth != 8:
        return None
    view = memoryview(png)
    pieces: list[bytes | memoryview] = [SIGNATURE, view[chunks[0].start:chunks[0].end]]
    pieces += metadata_chunks(icc, exif, xmp, texts)
    pieces += [view[c.start:c.end] for c in chunks[1:] if c.kind in (b"IDAT", b"IEND")]
    return pieces


def png_head(width: int, height: int, bit_depth: int, colour_type: int, icc: bytes | None,
             exif: bytes | None, xmp: bytes | None = None, texts: Sequence[PngText] = ()
             ) -> list[bytes]:
    """The signature, IHDR and metadata chunks of a PNG (non-interlaced) about to be written."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return [SIGNATURE, png_chunk(b"IHDR", ihdr), *metadata_chunks(icc, exif, xmp, texts)]


def metadata_chunks(icc: bytes | None, exif: bytes | None, xmp: bytes | None = None,
                    texts: Sequence[PngText] = ()) -> list[bytes]:
    """An ICC profile (iCCP) and an EXIF block (eXIf) as chunks, as Pillow writes them, then
    the XMP packet and the text chunks (``text_chunks``)."""
    found = []
    if icc:
        found.append(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        found.append(png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    found += [png_chunk(kind, data) for kind, data in text_chunks(xmp, texts)]
    return found


def text_chunks(xmp: bytes | None, texts: Sequence[PngText]) -> list[tuple[bytes, bytes]]:
    """The kind and data of the chunks holding ``xmp`` (iTXt "XML:com.adobe.xmp", not
    compressed, as the XMP specification asks) and ``texts`` (tEXt or iTXt)."""
    found = []
    if xmp:
        found.append((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    for text in texts:
        keyword = text.keyword.encode("latin-1")
        if text.international:
            found.append((b"iTXt", b"".join((
                keyword, b"\x00\x00\x00", text.language.encode("ascii", "replace"), b"\x00",
                text.translated.encode("utf-8"), b"\x00", text.text.encode("utf-8")))))
        else:
            found.append((b"tEXt", keyword + b"\x00" + text.text.encode("latin-1")))
    return found


def write_png(image: Image.Image, fh: IO[bytes], *, level: int, icc: bytes | None = None,
              exif: bytes | None = None, xmp: bytes | None = None,
              texts: Sequence[PngText] = ()) -> None:
    """Write ``image`` (8-bit L, LA, RGB or RGBA) to ``fh`` as a PNG, zlib at ``level``, with
    ``icc``, ``exif``, ``xmp`` and ``texts`` chunks; every row has the Up filter (see the
    module docstring).

    The rows are split in up to ``_PARTS`` runs compressed at once on threads (zlib lets go of
    the interpreter lock), each run a deflate stream of its own ended on a byte boundary, so
    they join into one stream as pigz joins them; the Adler-32 checksums are combined. Memory:
    a band of about ``_ENCODE_BYTES`` per run, and the compressed data of the later runs until
    the first is written.

    Measured on 24 MP RGBA cut-outs of the benchmark's photos (CPU seconds, bytes), against
    Pillow's encoder at level 1: 0.51 s 21.2 MB vs 1.01 s 21.4 MB, 0.41 s 16.9 MB vs 0.88 s
    17.6 MB; with two runs on two idle cores, 0.27 s of wall time instead of 0.51 s.
    """
    from concurrent.futures import ThreadPoolExecutor

    width, height = image.size
    stride = width * len(image.mode)
    rows = max(1, _ENCODE_BYTES // stride)
    runs = max(1, min(_PARTS, height // rows))
    cuts = [height * i // runs for i in range(runs + 1)]
    fh.writelines(png_head(width, height, 8, PNG_COLOUR[image.mode], icc, exif, xmp, texts))
    idat = IdatWriter(fh)
    idat.write(_ZLIB_HEADER)
    later: list[list[bytes]] = [[] for _ in range(runs - 1)]
    with ThreadPoolExecutor(max(1, runs - 1), thread_name_prefix="bgremove-png") as pool:
        others = [pool.submit(_deflate_rows, image, cuts[i], cuts[i + 1], rows, level,
                              i == runs - 1, later[i - 1].append) for i in range(1, runs)]
        adler = _deflate_rows(image, 0, cuts[1], rows, level, runs == 1, idat.write)
        for i, future in enumerate(others, start=1):
            adler = _adler32_combine(adler, future.result(), (cuts[i + 1] - cuts[i]) * (stride + 1))
            for piece in later[i - 1]:
                idat.write(piece)
            later[i - 1].clear()
    idat.write(adler.to_bytes(4, "big"))
    idat.close()
    fh.write(png_chunk(b"IEND", b""))


def _deflate_rows(image: Image.Image, top: int, bottom: int, rows: int, level: int, last: bool,
                  out: Callable[[bytes], object]) -> int:
    """Rows ``top`` to ``bottom`` of ``image`` Up-filtered and deflated (a raw stream of its own,
    the final one when ``last``) into ``out``, a band of ``rows`` at a time; their Adler-32."""
    from PIL import ImageChops

    width = image.width
    stride = width * len(image.mode)
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    adler = 1
    for start in range(top, bottom, rows):
        stop = min(bottom, start + rows)
        # the row above each row (zeros above the first: what a decoder takes there)
        above = image.crop((0, start - 1, width, stop - 1))
        band = memoryview(ImageChops.subtract_modulo(
            image.crop((0, start, width, stop)), above).tobytes())
        pieces: list[bytes | memoryview] = []
        for row in range(0, len(band), stride):
            pieces += (_FILTER_UP, band[row:row + stride])
        filtered = b"".join(pieces)
        adler = zlib.adler32(filtered, adler)
        out(packer.compress(filtered))
    out(packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return adler


def _adler32_combine(first: int, second: int, length: int) -> int:
    """The Adler-32 of two pieces of data from theirs and the second's length (zlib's
    ``adler32_combine``, which Python's zlib does not offer)."""
    rem = length % _ADLER_BASE
    low = (first & 0xFFFF) + (second & 0xFFFF) + _ADLER_BASE - 1
    high = rem * (first & 0xFFFF) + (first >> 16) + (second >> 16) + _ADLER_BASE - rem
    return (low % _ADLER_BASE) | (high % _ADLER_BASE) << 16


class IdatWriter:
    """Image data written to ``fh`` as IDAT chunks of about ``_IDAT_BYTES``."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) >= _IDAT_BYTES:
            self.fh.write(png_chunk(b"IDAT", self.pending))
            self.pending.clear()

    def close(self) -> None:
        self.fh.write(png_chunk(b"IDAT", self.pending))
        self.pending.clear()


def png_chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    """One PNG chunk: length, kind, data, CRC."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join((len(data).to_bytes(4, "big"), kind, data, crc.to_bytes(4, "big")))
