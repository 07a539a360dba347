"""Deterministic camera-like JPEGs for the photo benchmark (``bench_photos.py``).

Each photo is a scene (a smooth, slightly graded backdrop and a few solid and graded
shapes) with noise like a sensor's (a luminance part shared by the channels plus a smaller
colour part), saved as a JPEG at quality 92 with 4:2:0 chroma, the way cameras store them:
6000x4000 comes to about 4.4 MB. Every photo carries camera EXIF (make, model, exposure,
lens, a maker note of 32 KB) and a GPS position; every third one (index 2, 5, 8, ...) is a
portrait stored sideways with orientation 6, so it shows upright only once turned.

The backdrop stays within the emulator's key-out tolerance of its corner, so the service's
mask is the shapes. Photos are cached (``cache_dir()``), named by everything that decides
their bytes; making one takes about 0.4 s.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

GENERATOR_VERSION = 1
SIZE = (6000, 4000)  # 24 MP, stored (landscape) orientation
QUALITY = 92
NOISE_TILE = 1000  # noise is made for one tile and laid with a per-photo shift
GPS_IFD, EXIF_IFD = 0x8825, 0x8769
ORIENTATION = 0x0112


def is_sideways(index: int) -> bool:
    """Every third photo is stored sideways (orientation 6)."""
    return index % 3 == 2


def cache_dir() -> Path:
    """Where generated photos are kept between runs ($BGREMOVE_BENCH_CACHE, else the
    temp folder)."""
    from PIL import __version__ as pillow

    base = os.environ.get("BGREMOVE_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), "bgremove-bench-cache")
    return Path(base) / f"photos-v{GENERATOR_VERSION}-pillow{pillow}"


def photos(count: int, size: tuple[int, int] = SIZE) -> list[Path]:
    """Paths of photos 0..count-1 of ``size``, made on first use."""
    folder = cache_dir() / f"{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"IMG_{index:04d}.JPG"
        if not path.exists():
            part = path.with_suffix(".part")
            part.write_bytes(make_photo(index, size))
            os.replace(part, path)
        paths.append(path)
    return paths


def make_photo(index: int, size: tuple[int, int] = SIZE) -> bytes:
    """The JPEG file of photo ``index`` (deterministic for a given Pillow/libjpeg)."""
    from PIL import Image

    sideways = is_sideways(index)
    width, height = size
    upright = (height, width) if sideways else (width, height)
    image = _scene(index, upright)
    _add_noise(image, index)
    if sideways:  # stored turned a quarter to the left; orientation 6 turns it back
        image = image.transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY, subsampling=2,
               exif=_exif(index, sideways, upright))
    return buffer.getvalue()


def _scene(index: int, size: tuple[int, int]) -> Image.Image:
    from PIL import Image, ImageDraw

    width, height = size
    ramp = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    if index % 2:
        ramp = ramp.transpose(Image.Transpose.ROTATE_180)
    base = (70 + 23 * (index % 5), 110 + 17 * (index % 3), 150 - 11 * (index % 4))
    # A backdrop graded by 10 levels: within the key-out tolerance of its corner, noise too.
    image = Image.merge("RGB", [ramp.point(lambda v, b=b: b + v * 10 // 255) for b in base])
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    cx, cy = width // 2 + (index * 97) % (width // 8), height // 2 - (index * 53) % (height // 8)
    r = short // 3
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(210, 90 + index % 40, 40))
    draw.rectangle((cx - r // 3, cy, cx + r // 3, min(height - 1, cy + r + r // 2)),
                   fill=(40, 60, 30 + index % 50))
    for k in range(12):  # a graded band: some texture for the encoder
        x0 = width // 10 + k * (width // 20)
        draw.rectangle((x0, height // 12, x0 + width // 24, height // 5),
                       fill=(20 * k % 256, 255 - 15 * k, (40 * k + index) % 256))
    return image


def _add_noise(image: Image.Image, index: int) -> None:
    import numpy as np
    from PIL import Image, ImageChops

    rng = np.random.default_rng(1000 + index)
    tile_shape = (NOISE_TILE, NOISE_TILE)
    luma = rng.standard_normal(tile_shape, dtype=np.float32) * 2.8
    colour = rng.standard_normal((*tile_shape, 3), dtype=np.float32) * 1.6
    noise = np.clip(colour + luma[..., None] + 16, 0, 255).astype(np.uint8)
    tile = Image.fromarray(noise)
    layer = Image.new("RGB", image.size)
    shift = (index * 131) % NOISE_TILE
    for y in range(-shift, image.size[1], NOISE_TILE):
        for x in range(-shift, image.size[0], NOISE_TILE):
            layer.paste(tile, (x, y))
    image.paste(ImageChops.add(image, layer, 1.0, -16))


def _exif(index: int, sideways: bool, upright: tuple[int, int]) -> bytes:
    from PIL import Image, TiffImagePlugin

    rational = TiffImagePlugin.IFDRational
    exif = Image.Exif()
    exif[0x010F] = "Benchcam"  # Make
    exif[0x0110] = "BC-24 Mark II"  # Model
    exif[0x0131] = "Firmware 1.2.0"  # Software
    exif[0x0132] = f"2026:05:{1 + index % 28:02d} 10:{index % 60:02d}:00"  # DateTime
    exif[0x013B] = "Ann Example"  # Artist
    exif[0x8298] = "(c) Ann Example"  # Copyright
    exif[ORIENTATION] = 6 if sideways else 1
    exif[0x011A] = exif[0x011B] = rational(300, 1)  # X/YResolution
    exif[0x0128] = 2  # ResolutionUnit: inch
    sub = exif.get_ifd(EXIF_IFD)
    sub[0x829A] = rational(1, 250)  # ExposureTime
    sub[0x829D] = rational(56, 10)  # FNumber
    sub[0x8827] = 200 + 100 * (index % 4)  # ISOSpeedRatings
    sub[0x9003] = exif[0x0132]  # DateTimeOriginal
    sub[0x920A] = rational(50, 1)  # FocalLength
    sub[0xA002], sub[0xA003] = upright if not sideways else upright[::-1]  # PixelX/YDimension
    sub[0xA434] = "BC 24-70mm F2.8"  # LensModel
    sub[0x927C] = bytes((i * 7 + index) % 256 for i in range(32 * 1024))  # MakerNote
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[3] = "N", "E"  # GPSLatitudeRef, GPSLongitudeRef
    gps[2] = (rational(48, 1), rational(51, 1), rational(2400 + index, 100))  # GPSLatitude
    gps[4] = (rational(2, 1), rational(21, 1), rational(700 + index, 100))  # GPSLongitude
    gps[6] = rational(35, 1)  # GPSAltitude
    return exif.tobytes()


def has_gps(data: bytes) -> bool:
    """Whether an image file's EXIF carries a GPS position."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return bool(image.getexif().get_ifd(GPS_IFD))
