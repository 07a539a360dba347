"""What ``bgremove remove`` delivers, through the real command against the emulator.

JPEG on a background, the photographer's EXIF without the location, an image with no
subject, options that contradict each other, ``--model``, ``--crop`` and ``--mask-only``
as flags, and the JPEG upload used when the lossless PNG is over the upload limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.emulator import Emulator
from tests import images as img
from tests.cli_process import bgremove

GREEN, RED = (0, 200, 0), (200, 20, 20)
BLOCK = (10, 5, 30, 25)  # the subject: a red block on the key colour (the emulator keys it out)

ARTIST, COPYRIGHT, DATE = 0x013B, 0x8298, 0x0132
MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
EXIF_IFD, GPS_IFD, LENS_MODEL, DATE_ORIGINAL = 0x8769, 0x8825, 0xA434, 0x9003


def subject(path: Path, size: tuple[int, int] = (40, 30), *, exif: Image.Exif | None = None
            ) -> Path:
    image = Image.new("RGB", size, GREEN)
    image.paste(RED, BLOCK)
    fmt = "JPEG" if path.suffix == ".jpg" else None
    extra = {"quality": 98} if fmt else {}
    image.save(path, fmt, exif=exif or Image.Exif(), **extra)
    return path


def photographer_exif() -> Image.Exif:
    exif = img.exif_with(1, gps=True)
    exif.update({ARTIST: "Ann Lens", COPYRIGHT: "(c) 2026 Ann Lens", DATE: "2026:11:29 10:00:00",
                 MAKE: "Canon", MODEL: "EOS R5"})
    exif[EXIF_IFD] = {LENS_MODEL: "RF24-70mm F2.8", DATE_ORIGINAL: "2026:11:29 09:59:58",
                      0x927C: b"vendor-maker-note"}
    return exif


def test_jpeg_deliverable_on_a_background(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), "--format", "jpg",
                    "--background", "#0000ff", emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out" / "shoe.jpg") as out:
        assert out.format == "JPEG" and out.mode == "RGB" and out.size == (40, 30)
        assert img.close(out.getpixel((2, 2)), (0, 0, 255), 6)
        assert img.close(out.getpixel((20, 15)), RED, 6)


def test_jpeg_without_a_background_is_on_white(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "--format", "jpg", emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "shoe-nobg.jpg") as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        assert img.close(out.getpixel((2, 2)), (255, 255, 255), 4)
        assert img.close(out.getpixel((20, 15)), RED, 6)


@pytest.mark.parametrize("fmt", ["png", "jpg", "tiff", "webp"])
def test_outputs_keep_the_photographers_exif_but_not_the_location(
        tmp_path: Path, emulator: Emulator, fmt: str) -> None:
    exif = photographer_exif()
    exif[ORIENTATION] = 6  # stored sideways: the output is upright and says nothing of it
    src = subject(tmp_path / "portrait.jpg", exif=exif)
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), "--format", fmt,
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    ext = {"tiff": ".tiff"}.get(fmt, f".{fmt}")
    with Image.open(tmp_path / "out" / f"portrait{ext}") as out:
        assert out.size == (30, 40)  # turned upright
        kept = out.getexif()
        assert kept.get(ARTIST) == "Ann Lens" and kept.get(COPYRIGHT) == "(c) 2026 Ann Lens"
        assert kept.get(DATE) == "2026:11:29 10:00:00"
        assert (kept.get(MAKE), kept.get(MODEL)) == ("Canon", "EOS R5")
        assert ORIENTATION not in kept
        sub = kept.get_ifd(EXIF_IFD)
        if fmt != "tiff":  # the compressing TIFF writer keeps the main tags only
            assert sub.get(LENS_MODEL) == "RF24-70mm F2.8"
            assert sub.get(DATE_ORIGINAL) == "2026:11:29 09:59:58"
        assert 0x927C not in sub
        assert GPS_IFD not in kept and not kept.get_ifd(GPS_IFD)
        assert b"Exif" not in out.info.get("xmp", b"")


def test_strip_metadata_writes_no_exif(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "portrait.jpg", exif=photographer_exif())
    done = bgremove(tmp_path, "remove", str(src), "--strip-metadata", emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "portrait-nobg.png") as out:
        assert not out.getexif() and "exif" not in out.info
    # The same through the config file.
    (tmp_path / "portrait-nobg.png").unlink()
    done = bgremove(tmp_path, "remove", str(src), emulator=emulator,
                    config="output:\n  strip_metadata: true\n")
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "portrait-nobg.png") as out:
        assert not out.getexif()


def test_an_image_with_no_subject_is_written_with_a_warning(
        tmp_path: Path, emulator: Emulator) -> None:
    empty = tmp_path / "wall.png"
    Image.new("RGB", (40, 30), GREEN).save(empty)  # all key colour: nothing is kept
    good = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(empty), str(good), emulator=emulator)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no subject" in line]
    assert warnings == [f"bgremove: {empty}: warning: no subject found: the result is fully "
                        "transparent"]
    with Image.open(tmp_path / "wall-nobg.png") as out:
        assert out.getchannel("A").getextrema() == (0, 0)

    done = bgremove(tmp_path, "remove", str(empty), str(good), "-o", str(tmp_path / "j"),
                    "--json", emulator=emulator)
    records = {Path(r["input"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    assert records["wall.png"]["status"] == "ok"
    assert records["wall.png"]["warning"] == "no subject found: the result is fully transparent"
    assert records["shoe.png"]["warning"] is None


def test_mask_only_with_a_background_is_refused_before_any_upload(
        tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "--mask-only", "--background", "red",
                    emulator=emulator)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "mask" in lines[0] and "background" in lines[0]
    assert emulator.stats()["uploads"] == 0
    assert not (tmp_path / "shoe-nobg.png").exists()


def test_model_names_the_offline_model_only(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "--model", "u2net", emulator=emulator)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "--backend local" in lines[0]
    done = bgremove(tmp_path, "remove", str(src), "--model", "nonesuch", "--backend", "local")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nonesuch" in lines[0] and "u2netp" in lines[0]
    assert emulator.stats()["uploads"] == 0


def test_crop_flag_crops_to_the_subject(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "--crop", "--crop-margin", "2",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    left, top, right, bottom = BLOCK
    with Image.open(tmp_path / "shoe-nobg.png") as out:
        assert out.size == (right - left + 4, bottom - top + 4)
        assert out.getpixel((0, 0))[3] == 0 and out.getpixel((2, 2)) == (*RED, 255)


def test_mask_only_flag_writes_the_mask(tmp_path: Path, emulator: Emulator) -> None:
    src = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(src), "--mask-only", emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "shoe-nobg.png") as out:
        assert out.mode == "L" and out.size == (40, 30)
        assert out.getpixel((0, 0)) == 0 and out.getpixel((20, 15)) == 255


def test_a_photo_over_the_upload_limit_is_sent_as_jpeg(tmp_path: Path,
                                                     emulator: Emulator) -> None:
    """The lossless PNG of this photo is over the limit and its JPEG is under it."""
    width, height = 160, 120
    photo = Image.new("RGB", (width, height), GREEN)
    grain = Image.effect_noise((width // 2, height // 2), 40).convert("L").point(
        lambda v: 120 + v // 4)
    photo.paste(Image.merge("RGB", (grain, grain, grain)), (width // 4, height // 4))
    src = tmp_path / "grain.png"
    photo.save(src)
    done = bgremove(tmp_path, "remove", str(src), emulator=emulator,
                    config="wavespeed:\n  max_upload_bytes: 5000\n")
    assert done.returncode == 0, done.stderr
    media = emulator._media.values()
    assert len(media) == 1
    assert media[0].content_type == "image/jpeg" and media[0].filename.endswith(".jpg")
    assert media[0].data.startswith(b"\xff\xd8")
    with Image.open(io_bytes(media[0].data)) as sent:
        assert sent.format == "JPEG" and sent.size == (width, height)
    with Image.open(tmp_path / "grain-nobg.png") as out:
        assert out.size == (width, height)
        assert out.getpixel((2, 2))[3] == 0
        inside = out.getpixel((width // 2, height // 2))
        assert inside[3] == 255 and inside[:3] == photo.getpixel((width // 2, height // 2))


def io_bytes(data: bytes) -> object:
    import io

    return io.BytesIO(data)
