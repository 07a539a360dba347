"""A JPEG goes up as the file's own bytes minus its metadata segments, never re-encoded.

Unit tests of the segment walk on hand-made byte streams, then the whole command against
the emulator: the bytes it logged are exactly the stripped file, no GPS leaves, the pixels
are the original's, and an orientation-6 photo's result is turned like the original.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from bgremove.emulator import Emulator
from bgremove.emulator.model import keyout_alpha
from bgremove.imaging import strip_jpeg_metadata
from tests import images as img
from tests.cli_process import bgremove


def seg(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


SOI, EOI = b"\xff\xd8", b"\xff\xd9"
JFIF = seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
EXIF = seg(0xE1, b"Exif\x00\x00MM\x00*GPS-here")
XMP = seg(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
ICC = seg(0xE2, b"ICC_PROFILE\x00\x01\x01profile")
MPF = seg(0xE2, b"MPF\x00index")
IPTC = seg(0xED, b"Photoshop 3.0\x00IPTC")
ADOBE = seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
COM = seg(0xFE, b"a comment")
DQT = seg(0xDB, b"\x00" + bytes(64))
SOF = seg(0xC0, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00")
DHT = seg(0xC4, b"\x00" + bytes(16))
DRI = seg(0xDD, b"\x00\x04")
SOS = seg(0xDA, b"\x01\x01\x00\x00\x3f\x00")
# entropy-coded data with a stuffed 0xFF, a restart marker and fill bytes before EOI
SCAN = b"\x12\x34\xff\x00\x56\xff\xd0\x78\xff\xff"


def test_metadata_segments_go_and_decoding_segments_stay() -> None:
    data = SOI + JFIF + EXIF + XMP + ICC + MPF + IPTC + ADOBE + COM + DQT + SOF + DHT + DRI \
        + SOS + SCAN + EOI + b"second picture of an MPO"
    want = SOI + JFIF + ICC + ADOBE + DQT + SOF + DHT + DRI + SOS + SCAN + EOI
    assert strip_jpeg_metadata(data) == want


def test_tables_between_scans_are_kept() -> None:
    """A progressive JPEG: a DHT between two scans is a segment, not scan data."""
    data = SOI + DQT + SOF + DHT + SOS + SCAN + COM + DHT + SOS + b"\x01\x02" + EOI
    assert strip_jpeg_metadata(data) == SOI + DQT + SOF + DHT + SOS + SCAN + DHT + SOS \
        + b"\x01\x02" + EOI


@pytest.mark.parametrize("data", [
    b"",
    b"\x89PNG\r\n\x1a\n",
    SOI,  # nothing after the start
    SOI + EXIF[:-3],  # a segment running past the end
    SOI + DQT + SOF + SOS + SCAN,  # truncated scan: no EOI
    SOI + b"\x00\x00" + SOS + SCAN + EOI,  # bytes where a marker must be
    SOI + b"\xff\xe1\x00\x01" + SOS + SCAN + EOI,  # a length under 2
    SOI + SOI + SOS + SCAN + EOI,  # a second start of image
], ids=["empty", "png", "soi-only", "segment-past-end", "no-eoi", "no-marker",
        "short-length", "double-soi"])
def test_anything_unclear_gives_none(data: bytes) -> None:
    assert strip_jpeg_metadata(data) is None


@pytest.mark.parametrize("progressive", [False, True])
def test_a_real_jpeg_decodes_to_the_same_pixels(tmp_path: Path, progressive: bool) -> None:
    src = tmp_path / "photo.jpg"
    img.photo_like((64, 48)).save(src, "JPEG", quality=90, progressive=progressive,
                                  exif=img.exif_with(6, gps=True), icc_profile=img.srgb_icc(),
                                  comment=b"shot at home")
    data = src.read_bytes()
    stripped = strip_jpeg_metadata(data)
    assert stripped is not None and len(stripped) < len(data)
    assert b"Exif" not in stripped and b"shot at home" not in stripped
    with Image.open(io.BytesIO(stripped)) as sent, Image.open(src) as original:
        assert not sent.getexif() and "exif" not in sent.info
        assert sent.info.get("icc_profile") == img.srgb_icc()
        assert sent.tobytes() == original.tobytes()


# --- through the command, against the emulator ------------------------------------------------

KEY, SUBJECT = (0, 200, 0), (200, 30, 30)


def sideways_photo(path: Path, orientation: int) -> Image.Image:
    """A flat key colour with an off-centre subject, stored as is with ``orientation``.

    The subject's place tells a mask turned the wrong way (or not at all) apart."""
    stored = Image.new("RGB", (96, 64), KEY)
    stored.paste(Image.new("RGB", (24, 16), SUBJECT), (8, 40))
    stored.save(path, "JPEG", quality=100, exif=img.exif_with(orientation, gps=True),
                comment=b"at home")
    return stored


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_jpeg_goes_up_as_its_own_bytes_minus_metadata(tmp_path: Path, emulator: Emulator,
                                                       orientation: int) -> None:
    src = tmp_path / "photo.jpg"
    sideways_photo(src, orientation)
    data = src.read_bytes()
    done = bgremove(tmp_path, "remove", str(src), emulator=emulator)
    assert done.returncode == 0, done.stderr

    [upload] = emulator.stats()["upload_log"]
    stripped = strip_jpeg_metadata(data)
    assert stripped is not None
    assert upload["content_type"] == "image/jpeg"
    assert upload["sha256"] == hashlib.sha256(stripped).hexdigest()
    assert upload["bytes"] == len(stripped) < len(data)
    # what went up is the file minus its metadata: no GPS, no EXIF at all, the same pixels
    assert b"Exif" not in stripped and b"at home" not in stripped
    with Image.open(io.BytesIO(stripped)) as sent, Image.open(src) as original:
        assert not sent.getexif()
        assert sent.size == original.size and sent.tobytes() == original.tobytes()
        upright = ImageOps.exif_transpose(original)

    # The oracle: the emulator's key-out of the upright picture, on the upright pixels.
    want = upright.convert("RGBA")
    want.putalpha(keyout_alpha(upright))
    with Image.open(tmp_path / "photo-nobg.png") as out:
        assert out.size == upright.size
        assert out.convert("RGBA").tobytes() == want.tobytes()


def test_a_jpeg_over_the_limit_is_re_encoded(tmp_path: Path, emulator: Emulator) -> None:
    src = tmp_path / "photo.jpg"
    sideways_photo(src, 6)
    stripped = strip_jpeg_metadata(src.read_bytes())
    assert stripped is not None
    done = bgremove(tmp_path, "remove", str(src), emulator=emulator,
                    config=f"wavespeed:\n  max_upload_bytes: {len(stripped) - 1}\n")
    assert done.returncode == 0, done.stderr
    [upload] = emulator.stats()["upload_log"]
    assert upload["sha256"] != hashlib.sha256(stripped).hexdigest()
    with Image.open(tmp_path / "photo-nobg.png") as out:
        assert out.size == (64, 96)  # upright, and the re-encoded upload was upright too


@pytest.mark.parametrize("orientation", [3, 6])
def test_fetch_with_a_sideways_jpeg_gives_what_remove_gave(tmp_path: Path, emulator: Emulator,
                                                          orientation: int) -> None:
    """``fetch --input`` turns the mask of the stored pixels the way ``remove`` did."""
    src = tmp_path / "photo.jpg"
    sideways_photo(src, orientation)
    done = bgremove(tmp_path, "remove", str(src), "--json", "-o", str(tmp_path / "removed"),
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)["task_id"]
    done = bgremove(tmp_path, "fetch", task, "--input", str(src), "-o",
                    str(tmp_path / "fetched"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "removed" / "photo.png") as a, \
            Image.open(tmp_path / "fetched" / "photo.png") as b:
        assert a.size == b.size and a.tobytes() == b.tobytes()
