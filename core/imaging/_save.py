"""Writing a result: the output formats and their options, written atomically.

The write goes through ``bgremove.files.atomic_writer`` (a hidden temp file in the
destination folder, fsync, rename): a reader (or the hot-folder daemon) never sees a
half-written output, an existing file at the destination stays untouched until the new one
is complete, and no temp file is left behind when anything fails.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bgremove.choices import OUTPUT_FORMATS
from bgremove.errors import OutputError
from bgremove.files import atomic_writer
from bgremove.imaging._deep import TIFF_XMP, DeepImage, write_png16, write_tiff16
from bgremove.imaging._modes import icc_colour_space
from bgremove.imaging._pillow import pillow_scope
from bgremove.imaging._png import PNG_COLOUR, text_chunks, write_png

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.imaging._meta import PngText

_PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "tiff": "TIFF", "jpg": "JPEG"}
_EXTENSIONS = {"png": ".png", "webp": ".webp", "tiff": ".tiff", "jpg": ".jpg"}
#: The largest side each format can hold.
_MAX_SIDE = {"webp": 16383, "jpg": 65500}
#: The writers of 16-bit images, by format.
DEEP_WRITERS = {"png": write_png16, "tiff": write_tiff16}
#: JPEG outputs: high quality, no chroma subsampling (crisp edges on a flat background).
JPEG_OUTPUT_QUALITY = 95
EXIF_IFD_POINTER = 0x8769
#: From this many pixels on, PNG outputs use the fastest compression (see png_compress_level).
_FAST_PNG_PIXELS = 4_000_000


def extension_for(fmt: str) -> str:
    """The file extension, with its dot, of an output format: ".png", ".webp", ".tiff", ".jpg"."""
    try:
        return _EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}") \
            from None


def save_params(image: Image.Image, fmt: str, icc_profile: bytes | None,
                exif: bytes | None = None, xmp: bytes | None = None,
                texts: Sequence[PngText] = ()) -> dict[str, Any]:
    """Pillow save options for one output format (lossless everywhere but JPEG), with the
    metadata kept (``texts`` go to PNG only: the other formats have no text chunks)."""
    params: dict[str, Any] = {"icc_profile": fitting_profile(image.mode, icc_profile)}
    if fmt == "tiff" and (exif or xmp):
        params["exif"] = _tiff_main_tags(exif, xmp)
    elif exif:
        params["exif"] = exif
    if fmt == "png" and (xmp or texts):
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for kind, data in text_chunks(xmp, texts):
            info.add(kind, data)
        params["pnginfo"] = info
    elif xmp and fmt != "tiff":  # JPEG (Pillow 11 and later) and WebP
        params["xmp"] = xmp
    if fmt == "jpg":
        params.update(quality=JPEG_OUTPUT_QUALITY, subsampling=0)
    elif fmt == "png":
        params["compress_level"] = png_compress_level(image.width * image.height)
    elif fmt == "webp":
        # The least lossless effort: 24 MP cut-outs 1.17 s vs 3.26 s at quality 50 (sensor
        # noise photo) and 0.47 s vs 0.79 s (benchmark photo) for 0.6-3 % more bytes.
        params.update(lossless=True, quality=0, method=0, exact=False)
    elif fmt == "tiff":
        params["compression"] = "tiff_lzw"  # read everywhere; 6x faster than deflate here
    else:
        extension_for(fmt)  # raises the clear ValueError
    return params


def png_compress_level(pixels: int) -> int:
    """zlib level of a PNG output: the fastest (1) for photo sizes, where the encode is most
    of a job's CPU (those are written by ``_png.write_png``, Up filter on every row: half the
    CPU of Pillow's encoder below at the same level); 3 below, where it costs little and
    saves some bytes.

    Measured (Pillow 13 with zlib-ng, CPU seconds of the encode, 24 MP RGBA cut-outs; Pillow's
    default level 6 takes 3-5x level 1):
      sensor-noise photo, 1 % transparent:  level 1 1.57 s 39.6 MB, 2 1.66 s 39.3 MB,
                                            3 2.34 s 38.2 MB
      benchmark photo, 68 % transparent:    level 1 0.93 s 19.1 MB, 2 0.96 s 16.9 MB,
                                            3 1.14 s 13.9 MB
      3 MP: 0.24 s 4.9 MB vs 0.35 s 4.6 MB; 0.8 MP: 0.06 s 1.33 MB vs 0.09 s 1.25 MB.
    Level 1 is the fastest everywhere; it writes up to a third more bytes than 3 when much
    of the picture compresses well.
    """
    return 1 if pixels >= _FAST_PNG_PIXELS else 3


@pillow_scope()
def save_image(image: Image.Image | DeepImage, path: str | os.PathLike[str], *,
               fmt: str = "png", icc_profile: bytes | None = None,
               exif: bytes | None = None, xmp: bytes | None = None,
               texts: Sequence[PngText] = ()) -> None:
    """Write ``image`` to ``path`` atomically; any failure raises ``OutputError`` naming the path.

    The ICC profile is embedded when it matches the image's colour space (an RGB profile is
    not put on a greyscale mask); a 16-bit ``DeepImage`` carries its own. ``exif`` (a block
    from ``bgremove.imaging._meta``), ``xmp`` (from ``_xmp``) and ``texts`` (PNG only) are
    written as they are. Missing parent folders are created. A JPEG cannot hold transparency:
    an RGBA image is refused (``compose`` flattens JPEG outputs onto a background).
    """
    dest = Path(path)
    encode: Callable[[IO[bytes]], None]
    if isinstance(image, DeepImage):
        if fmt not in DEEP_WRITERS:
            raise ValueError(f"16-bit images are written as {' or '.join(DEEP_WRITERS)} only")
        deep, writer = image, DEEP_WRITERS[fmt]
        profile = fitting_profile(deep.bands, deep.icc)
        encode = lambda fh: writer(deep, fh, profile, exif, xmp, texts)  # noqa: E731
    else:
        params = save_params(image, fmt, icc_profile, exif, xmp, texts)
        flat = image
        if fmt == "png" and flat.mode in PNG_COLOUR \
                and flat.width * flat.height >= _FAST_PNG_PIXELS:
            encode = lambda fh: write_png(  # noqa: E731
                flat, fh, level=params["compress_level"], icc=params["icc_profile"],
                exif=params.get("exif"), xmp=xmp, texts=texts)
        else:
            encode = lambda fh: _write(flat, fh, fmt, params)  # noqa: E731
    sub_ifd = _exif_sub_ifd(exif) if fmt == "tiff" else None

    def write(fh: IO[bytes]) -> None:
        encode(fh)
        if sub_ifd:
            _add_exif_sub_ifd(fh, sub_ifd)
    limit = _MAX_SIDE.get(fmt)
    width, height = image.size
    if limit is not None and max(width, height) > limit:
        raise OutputError(f"cannot write {dest}: {_PIL_FORMATS[fmt]} holds at most {limit} pixels "
                          f"a side and the image is {width}x{height}",
                          hint="use --format png or tiff", transient=False)
    if fmt == "jpg" and not isinstance(image, DeepImage) and image.mode not in ("RGB", "L"):
        raise OutputError(f"cannot write {dest}: JPEG has no transparency",
                          hint="give a background colour", transient=False)
    try:
        _write_atomically(dest, write)
    except ValueError as exc:  # the encoder refused the image
        raise OutputError(f"cannot write {dest} as {fmt}: {exc}", transient=False) from exc


def save_encoded(pieces: Iterable[bytes | memoryview], path: str | os.PathLike[str]) -> None:
    """Write an already encoded file, given as pieces in order, to ``path`` atomically
    (errors as ``save_image``'s)."""
    _write_atomically(Path(path), lambda fh: fh.writelines(pieces))


def _write_atomically(dest: Path, write: Callable[[IO[bytes]], object]) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(dest) as fh:
            write(fh)
    except OSError as exc:
        raise _output_error(dest, exc) from exc


def _tiff_main_tags(exif: bytes | None, xmp: bytes | None) -> Image.Exif:
    """The main IFD's tags of a TIFF output: ``exif`` without its EXIF sub-IFD, which the
    compressing TIFF writer (libtiff) cannot write (``_add_exif_sub_ifd`` adds it to the file
    afterwards), and ``xmp`` (tag 700; Pillow takes either its ``exif`` or its ``tiffinfo``)."""
    from PIL import Image

    main = Image.Exif()
    if exif:
        main.load(exif)
        main.pop(EXIF_IFD_POINTER, None)
    if xmp:
        main[TIFF_XMP] = xmp
    return main


def _exif_sub_ifd(exif: bytes | None) -> dict[int, Any] | None:
    """The tags of the EXIF sub-IFD of ``exif`` (dates, lens, exposure), if it has any."""
    from PIL import Image

    if not exif:
        return None
    block = Image.Exif()
    block.load(exif)
    return dict(block.get_ifd(EXIF_IFD_POINTER)) or None


def _add_exif_sub_ifd(fh: IO[bytes], tags: dict[int, Any]) -> None:
    """Give the classic TIFF just written to ``fh`` (readable) an EXIF sub-IFD of ``tags``.

    The main IFD is written again at the end with the pointer to the sub-IFD added (its long
    values stay where they are), the sub-IFD after it, and the header then points at the new
    main IFD; the old one is left unused (a few hundred bytes).
    """
    from PIL import TiffImagePlugin

    fh.seek(0)
    head = fh.read(8)
    order = "<" if head[:2] == b"II" else ">"
    if struct.unpack(order + "H", head[2:4])[0] != 42:
        return  # a BigTIFF (over 4 GB): Pillow holds no writer of its sub-IFDs
    fh.seek(struct.unpack(order + "L", head[4:])[0])
    (count,) = struct.unpack(order + "H", fh.read(2))
    entries = [fh.read(12) for _ in range(count)]
    following = fh.read(4)
    end = fh.seek(0, os.SEEK_END)
    main_at = end + end % 2  # IFDs start on a word boundary
    sub_at = main_at + 2 + 12 * (count + 1) + 4
    entries.append(struct.pack(order + "HHLL", EXIF_IFD_POINTER, 4, 1, sub_at))  # 4: LONG
    entries.sort(key=lambda entry: struct.unpack(order + "H", entry[:2])[0])
    sub = TiffImagePlugin.ImageFileDirectory_v2(head, group=EXIF_IFD_POINTER)
    for tag, value in tags.items():
        sub[tag] = value
    sub_bytes = sub.tobytes(sub_at)
    if sub_at + len(sub_bytes) >= 1 << 32:
        raise OSError(errno.EFBIG, "the image is too large for a TIFF file (4 GB)")
    fh.write(b"\0" * (main_at - end))
    fh.write(struct.pack(order + "H", count + 1) + b"".join(entries) + following + sub_bytes)
    fh.seek(4)
    fh.write(struct.pack(order + "L", main_at))


def _write(image: Image.Image, fh: IO[bytes], fmt: str, params: dict[str, Any]) -> None:
    image.save(fh, format=_PIL_FORMATS[fmt], **params)


def fitting_profile(mode: str, icc: bytes | None) -> bytes | None:
    """``icc`` when it describes the colour space of ``mode`` pixels, else None."""
    space = icc_colour_space(icc)
    if space is None:
        return None
    wanted = "GRAY" if mode in ("L", "LA", "1") else "RGB"
    return icc if space == wanted else None


_HINTS = {code: hint for code, hint in {
    errno.EACCES: "check the folder's permissions or choose another output folder",
    errno.EPERM: "check the folder's permissions or choose another output folder",
    errno.EROFS: "the disk is read-only: choose another output folder",
    errno.ENOSPC: "the disk is full: free some space and retry",
    getattr(errno, "EDQUOT", -2): "the disk quota is used up: free some space and retry",
    errno.EFBIG: "the file is over a size limit: free space or raise the limit and retry",
    errno.ENOTDIR: "part of the output path is a file, not a folder: choose another folder",
    errno.ENAMETOOLONG: "the name is too long: use a shorter output folder or file name",
    errno.EEXIST: "a file is in the way of the output folder: choose another output folder",
}.items() if code >= 0}


def _output_error(dest: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno if exc.errno is not None else -1,
                      "check that the output folder exists and is writable")
    return OutputError(f"cannot write {dest}: {reason}", hint=hint)
