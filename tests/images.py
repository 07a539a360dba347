"""Builders of test images: every input kind the pipeline must take or refuse.

Each ``make_*`` writes one file and returns its path. Pixel values are chosen so tests can
predict the loaded result exactly (or, for JPEG, within a small tolerance on flat blocks).
Other test modules may import these.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageCms

# Colours used by the builders (8-bit sRGB).
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
GREY = (128, 128, 128)
#: What the test CMYK profile makes of pure cyan: a printed cyan, not sRGB's (0, 255, 255).
PRINT_CYAN = (0, 158, 224)

EXIF_ORIENTATION = 0x0112
EXIF_GPS_IFD = 0x8825


def pixels(im: Image.Image) -> list[tuple[int, ...]]:
    """Every pixel of ``im`` as tuples, row by row (Pillow 13 deprecates getdata)."""
    bands = len(im.getbands())
    raw = im.tobytes()
    return [tuple(raw[i:i + bands]) for i in range(0, len(raw), bands)]


def tiny_pngs(folder: Path, count: int) -> list[Path]:
    """``count`` different 4x4 PNGs ``0.png``, ``1.png``, ... in ``folder``."""
    paths = []
    for i in range(count):
        Image.new("RGB", (4, 4), (i % 256, i // 256, 0)).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def noise_image(size: tuple[int, int], mode: str = "RGB", seed: int = 1) -> Image.Image:
    """Incompressible pixels: a PNG of it is about as large as the raw data."""
    rng = random.Random(seed)
    bands = len(mode)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * bands))


def photo_like(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Smooth gradients plus mild noise: compresses like a camera photo, not like flat art."""
    gradient = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    noise = Image.effect_noise(size, 12)
    return Image.merge("RGB", (gradient, radial, noise))


def marker_image(size: tuple[int, int] = (48, 32), block: int = 16) -> Image.Image:
    """Grey with a red block at the top-left and a green block right of it.

    The two blocks pin down every one of the eight EXIF orientations: where the red block
    ends up says which corner, the green block says which way the rows run.
    """
    im = Image.new("RGB", size, GREY)
    im.paste(RED, (0, 0, block, block))
    im.paste(GREEN, (block, 0, 2 * block, block))
    return im


def exif_with(orientation: int | None = None, gps: bool = False) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    if gps:
        # GPSLatitudeRef, GPSLatitude, GPSLongitudeRef, GPSLongitude: 48°51'30"N 2°17'40"E
        exif[EXIF_GPS_IFD] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif


def make_jpeg_with_exif_orientation(path: Path, orientation: int,
                                    size: tuple[int, int] = (48, 32)) -> Path:
    """A JPEG of ``marker_image`` as stored, tagged with ``orientation`` (1-8)."""
    marker_image(size).save(path, "JPEG", quality=95, exif=exif_with(orientation))
    return path


def make_png_with_exif_orientation(path: Path, orientation: int,
                                   size: tuple[int, int] = (48, 32)) -> Path:
    """Lossless twin of the JPEG above (PNG eXIf chunk), for pixel-exact checks."""
    marker_image(size).save(path, "PNG", exif=exif_with(orientation))
    return path


def make_jpeg_with_gps_and_icc(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """A JPEG carrying GPS EXIF data and an sRGB ICC profile."""
    photo_like(size).save(path, "JPEG", quality=95, exif=exif_with(1, gps=True),
                          icc_profile=srgb_icc())
    return path


#: The D50 white point as three s15Fixed16 numbers (ICC header illuminant, wtpt tag).
_D50 = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))


def close(got: object, want: tuple[int, ...], tolerance: int) -> bool:
    """Whether pixel ``got`` is within ``tolerance`` of ``want`` in every band."""
    assert isinstance(got, tuple) and len(got) == len(want), (got, want)
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=True))


@functools.lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    # Once: the profile's header holds its creation time, so two calls a second apart differ.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def cmyk_icc() -> bytes:
    """A small ICC v2 output profile (CMYK -> Lab) built by hand.

    Its table is the plain CMYK formula except that pure cyan prints as PRINT_CYAN, so a
    conversion through the profile is told apart from Pillow's formula.
    """
    # 16 grid corners (C, M, Y, K in {0, 1}, C slowest), each to an sRGB colour ...
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    rgb = tuple(round(255 * (1 - v) * (1 - k)) for v in (c, m, y))
                    corners.append(PRINT_CYAN if (c, m, y, k) == (1, 0, 0, 0) else rgb)
    # ... and then to 8-bit Lab (L*2.55, a+128, b+128: the lut8 encoding).
    strip = Image.new("RGB", (16, 1))
    strip.putdata(corners)
    lab = ImageCms.profileToProfile(strip, ImageCms.createProfile("sRGB"),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")
    assert lab is not None
    # Pillow's LAB mode holds a and b as signed bytes; lut8 wants them offset by 128.
    clut = bytes(v ^ 0x80 if i % 3 else v for i, v in enumerate(lab.tobytes()))
    identity = [65536, 0, 0, 0, 65536, 0, 0, 0, 65536]
    ramp = bytes(range(256))
    a2b0 = (b"mft1" + b"\0" * 4 + bytes([4, 3, 2, 0]) + struct.pack(">9i", *identity)
            + ramp * 4 + clut + ramp * 3)
    desc_text = b"bgremove test CMYK\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)
    wtpt = b"XYZ " + b"\0" * 4 + _D50
    cprt = b"text" + b"\0" * 4 + b"public domain\0"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtr"
              + b"CMYK" + b"Lab " + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + _D50
              + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def grey_icc() -> bytes:
    """A grey (GRAY colour space) profile with a gamma 2.2 curve."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # u8Fixed8: 2.2
    desc_text = b"bgremove test grey\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)
    desc += b"\0" * (-len(desc) % 4)
    wtpt = b"XYZ " + b"\0" * 4 + _D50
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"kTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr"
              + b"GRAY" + b"XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
              + _D50
              + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def make_cmyk_jpeg(path: Path, *, icc: bool = True, size: tuple[int, int] = (32, 16)) -> Path:
    """Left half pure cyan (100,0,0,0), right half paper white (0,0,0,0)."""
    im = Image.new("CMYK", size, (0, 0, 0, 0))
    im.paste((255, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    im.save(path, "JPEG", quality=100, icc_profile=cmyk_icc() if icc else None)
    return path


def make_cmyk_tiff(path: Path, *, icc: bool = True, size: tuple[int, int] = (32, 16)) -> Path:
    """Lossless twin of ``make_cmyk_jpeg``."""
    im = Image.new("CMYK", size, (0, 0, 0, 0))
    im.paste((255, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    im.save(path, "TIFF", icc_profile=cmyk_icc() if icc else None)
    return path


#: 16-bit sample values and what they become in 8 bits (round(v / 257)).
GREY16_VALUES = (0, 257, 32768, 65535)
GREY16_EXPECTED = (0, 1, 128, 255)


def make_png16_grey(path: Path) -> Path:
    im = Image.new("I;16", (len(GREY16_VALUES), 1))
    im.putdata(GREY16_VALUES)
    im.save(path, "PNG")
    return path


def make_tiff16_grey(path: Path, *, big_endian: bool = False) -> Path:
    im = Image.new("I;16B" if big_endian else "I;16", (len(GREY16_VALUES), 1))
    im.putdata(GREY16_VALUES)
    im.save(path, "TIFF")
    return path


#: 16-bit RGB samples of the 48-bit builders, and their 8-bit result (the high byte).
RGB48_PIXELS = ((65535, 0, 32768), (257, 511, 1000), (65280, 255, 12345))
RGB48_EXPECTED = ((255, 0, 128), (1, 1, 3), (255, 0, 48))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def make_png48(path: Path, *, alpha: int | None = None) -> Path:
    """A 16-bit-per-channel RGB (or RGBA with the given 16-bit alpha) PNG, one row."""
    colour_type = 2 if alpha is None else 6
    row = b"\0"
    for px in RGB48_PIXELS:
        row += struct.pack(">3H", *px) + (b"" if alpha is None else struct.pack(">H", alpha))
    ihdr = struct.pack(">IIBBBBB", len(RGB48_PIXELS), 1, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(row)) + _png_chunk(b"IEND", b""))
    return path


def make_tiff48(path: Path) -> Path:
    """A little-endian baseline TIFF, 16 bits per RGB sample, one uncompressed strip."""
    width, height = len(RGB48_PIXELS), 1
    data = b"".join(struct.pack("<3H", *px) for px in RGB48_PIXELS)
    entries = []  # (tag, type, count, value-or-offset)
    n_entries = 10
    ifd_offset = 8
    extra_offset = ifd_offset + 2 + 12 * n_entries + 4
    bits_offset = extra_offset
    data_offset = bits_offset + 6
    entries = [
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, bits_offset), (259, 3, 1, 1),
        (262, 3, 1, 2), (273, 4, 1, data_offset), (277, 3, 1, 3), (278, 3, 1, height),
        (279, 4, 1, len(data)), (284, 3, 1, 1),
    ]
    assert len(entries) == n_entries
    out = b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", n_entries)
    for tag, kind, count, value in entries:
        short = kind == 3 and count == 1  # a SHORT value sits left-justified in 4 bytes
        packed = struct.pack("<HH", value, 0) if short else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + data
    path.write_bytes(out)
    return path


def make_palette_png_with_transparency(path: Path) -> Path:
    """Palette image, index 0 fully transparent: pixels [transparent, red, green, blue]."""
    im = Image.new("P", (4, 1))
    im.putpalette([0, 0, 0, *RED, *GREEN, *BLUE])
    im.putdata([0, 1, 2, 3])
    im.save(path, "PNG", transparency=0)
    return path


def make_la_png(path: Path) -> Path:
    """Grey + alpha: [(0 grey, 0 alpha), (100, 128), (255, 255)]."""
    im = Image.new("LA", (3, 1))
    im.putdata([(0, 0), (100, 128), (255, 255)])
    im.save(path, "PNG")
    return path


#: Pixels of ``make_rgba_png``: one transparent, one half, one opaque.
RGBA_PIXELS = ((10, 20, 30, 0), (40, 50, 60, 128), (70, 80, 90, 255), (200, 100, 50, 255))


def make_rgba_png(path: Path) -> Path:
    im = Image.new("RGBA", (len(RGBA_PIXELS), 1))
    im.putdata(RGBA_PIXELS)
    im.save(path, "PNG")
    return path


def make_1bit_png(path: Path) -> Path:
    """Black, white, black, white."""
    im = Image.new("1", (4, 1))
    im.putdata([0, 255, 0, 255])
    im.save(path, "PNG")
    return path


def make_int32_tiff(path: Path) -> Path:
    """Mode I (32-bit integer) with 16-bit range values."""
    im = Image.new("I", (len(GREY16_VALUES), 1))
    im.putdata(GREY16_VALUES)
    im.save(path, "TIFF")
    return path


def make_float_tiff(path: Path) -> Path:
    """Mode F with values 0.0, 0.5, 1.0."""
    im = Image.new("F", (3, 1))
    im.putdata([0.0, 0.5, 1.0])
    im.save(path, "TIFF")
    return path


def make_webp(path: Path, image: Image.Image) -> Path:
    image.save(path, "WEBP", lossless=True)
    return path


def make_tiff(path: Path, image: Image.Image) -> Path:
    image.save(path, "TIFF", compression="tiff_lzw")
    return path


def make_bmp(path: Path, image: Image.Image) -> Path:
    image.save(path, "BMP")
    return path


def make_animated_gif(path: Path) -> Path:
    """Three frames: red, green, blue (4x2); only the first (red) is used."""
    frames = [Image.new("RGB", (4, 2), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def make_gif_with_transparency(path: Path) -> Path:
    """A palette GIF: [transparent, red]."""
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, *RED])
    im.putdata([0, 1])
    im.save(path, "GIF", transparency=0)
    return path


def make_png_header_only(path: Path, size: tuple[int, int]) -> Path:
    """A PNG that declares ``size`` but holds one tiny IDAT: a bomb, and also truncated."""
    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    return path


def make_decompression_bomb(path: Path) -> Path:
    """A 100 KB-ish PNG of 20000x20000 black pixels (400 Mpx: over Pillow's hard limit)."""
    return make_png_header_only(path, (20000, 20000))


def make_truncated(path: Path, kind: str = "JPEG") -> Path:
    """A valid image cut off halfway through its pixel data."""
    buf = io.BytesIO()
    noise_image((64, 64)).save(buf, kind)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def make_text_as_jpg(path: Path) -> Path:
    path.write_text("this is not an image\n", encoding="utf-8")
    return path


def make_unsupported(path: Path) -> Path:
    """A valid image in a format bgremove does not take (PCX)."""
    Image.new("RGB", (4, 4), RED).save(path, "PCX")
    return path


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()
