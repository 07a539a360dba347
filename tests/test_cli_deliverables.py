"""What ``bgremove remove`` delivers, through the real command against the emulator.

JPEG on a background, the photographer's EXIF without the location, an image with no
subject, options that contradict each other, ``--model``, ``--crop`` and ``--mask-only``
as flags, and the JPEG upload used when the lossless PNG is over the upload limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from bgremove.emulator import Emulator
from bgremove.imaging import encode_for_upload, load_image
from tests import images as img
from tests.cli_process import bgremove

GREEN, RED = (0, 200, 0), (200, 20, 20)
BLOCK = (10, 5, 30, 25)  # the subject: a red block on the key colour (the emulator keys it out)

ARTIST, COPYRIGHT, DATE = 0x013B, 0x8298, 0x0132
MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
EXIF_IFD, GPS_IFD, LENS_MODEL, DATE_ORIGINAL = 0x8769, 0x8825, 0xA434, 0x9003
EXPOSURE_TIME, F_NUMBER, ISO = 0x829A, 0x829D, 0x8827


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
                      EXPOSURE_TIME: IFDRational(1, 250), F_NUMBER: IFDRational(28, 10), ISO: 400,
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
        assert sub.get(LENS_MODEL) == "RF24-70mm F2.8"
        assert sub.get(DATE_ORIGINAL) == "2026:11:29 09:59:58"
        assert (sub.get(EXPOSURE_TIME), sub.get(F_NUMBER), sub.get(ISO)) == (
            Fraction(1, 250), Fraction(28, 10), 400)
        assert 0x927C not in sub
        if fmt == "tiff":  # the sub-IFD added after the compressed image: still a sound file
            assert out.info["compression"] == "tiff_lzw"
            out.load()
        assert GPS_IFD not in kept and not kept.get_ifd(GPS_IFD)
        assert b"Exif" not in out.info.get("xmp", b"")


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'exif:GPSLatitude="48,51.5N"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("fmt", ["png", "jpg", "tiff", "webp"])
def test_an_xmp_holding_only_the_location_is_not_carried(tmp_path: Path, emulator: Emulator,
                                                         fmt: str) -> None:
    """XMP can hold the location again (README: what is kept): with nothing else in it, no
    output format gets any (tests/test_metadata_carried.py: the fields that are carried)."""
    src = tmp_path / "portrait.jpg"
    image = Image.new("RGB", (40, 30), GREEN)
    image.paste(RED, BLOCK)
    image.save(src, "JPEG", quality=98, xmp=XMP, exif=photographer_exif())
    with Image.open(src) as check:
        assert check.info.get("xmp") == XMP
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), "--format", fmt,
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    written = next((tmp_path / "out").iterdir())
    assert b"GPSLatitude" not in written.read_bytes() and b"xmpmeta" not in written.read_bytes()
    with Image.open(written) as out:
        assert "xmp" not in out.info and out.getexif().get(ARTIST) == "Ann Lens"


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


def _with_damaged_exif(path: Path, damage: str) -> Path:
    """A JPEG whose EXIF block (big-endian, as some cameras write) is damaged: its main IFD
    says it has more entries than the block holds, or a value lies past the block's end;
    "cmyk": the first damage in a CMYK JPEG (decoded and re-encoded for upload)."""
    head = b"MM\x00*" + struct.pack(">L", 8)
    if damage in ("entries", "cmyk"):
        tiff = head + struct.pack(">H", 5) + struct.pack(">HHL4s", MAKE, 2, 4, b"Cam\x00")
    else:
        tiff = head + struct.pack(">H", 2) + struct.pack(">HHL4s", MAKE, 2, 4, b"Cam\x00") \
            + struct.pack(">HHLL", ARTIST, 2, 400, 38) + struct.pack(">L", 0)
    payload = b"Exif\x00\x00" + tiff
    data = img.make_cmyk_jpeg(path).read_bytes() if damage == "cmyk" \
        else subject(path).read_bytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
                     + data[2:])
    return path


@pytest.mark.parametrize("damage", ["entries", "value", "cmyk"])
def test_a_damaged_exif_block_is_dropped_with_one_line(
        tmp_path: Path, emulator: Emulator, damage: str) -> None:
    src = _with_damaged_exif(tmp_path / "broken.jpg", damage)
    done = bgremove(tmp_path, "remove", str(src), emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "warn(" not in done.stderr  # no raw Python text
    assert [line for line in done.stderr.splitlines() if "EXIF" in line] == [
        f"bgremove: warning: {src}: its EXIF data is damaged; the cut-out is written without it"]
    with Image.open(tmp_path / "broken-nobg.png") as out:
        assert not out.getexif() and "exif" not in out.info
        assert out.size == ((32, 16) if damage == "cmyk" else (40, 30))


def test_an_image_with_no_subject_is_written_with_a_warning(
        tmp_path: Path, emulator: Emulator) -> None:
    empty = tmp_path / "wall.png"
    Image.new("RGB", (40, 30), GREEN).save(empty)  # all key colour: nothing is kept
    good = subject(tmp_path / "shoe.png")
    done = bgremove(tmp_path, "remove", str(empty), str(good), emulator=emulator)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert warnings == [f"bgremove: warning: {empty}: no subject found: the result is fully "
                        "transparent"]
    assert done.stderr.splitlines()[-1] == "bgremove: 2 images: 2 done; 1 with no subject found"
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
    [upload] = emulator.stats()["upload_log"]
    assert upload["content_type"] == "image/jpeg" and upload["filename"].endswith(".jpg")
    # The bytes sent are the JPEG encoding of the full-size photo.
    jpeg = encode_for_upload(load_image(src, max_pixels=10**6).image, max_bytes=5000,
                             max_side=8192).data
    with Image.open(io.BytesIO(jpeg)) as sent:
        assert sent.format == "JPEG" and sent.size == (width, height)
    assert upload["sha256"] == hashlib.sha256(jpeg).hexdigest()
    assert emulator.tasks_for(jpeg) == 1
    with Image.open(tmp_path / "grain-nobg.png") as out:
        assert out.size == (width, height)
        assert out.getpixel((2, 2))[3] == 0
        inside = out.getpixel((width // 2, height // 2))
        assert inside[3] == 255 and inside[:3] == photo.getpixel((width // 2, height // 2))


# --- 16-bit inputs ------------------------------------------------------------------------------

KEY16, RED16 = (0, 200 * 257, 0), (51_400 + 123, 5_140 + 77, 5_140 + 201)  # low bytes that matter


def deep_subject(width: int = 40, height: int = 30, alpha: int | None = None
                 ) -> list[list[tuple[int, ...]]]:
    """16-bit samples: the key colour with a block whose low bytes are not zero, and a ramp."""
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            px: tuple[int, ...] = RED16 if BLOCK[0] <= x < BLOCK[2] and BLOCK[1] <= y < BLOCK[3] \
                else KEY16
            if y == 10 and BLOCK[0] <= x < BLOCK[2]:
                px = (40_000 + x * 97, 30_000 + x * 13, 20_000 + x)  # a ramp inside the subject
            row.append(px + (() if alpha is None else (alpha,)))
        rows.append(row)
    return rows


def write_png16(path: Path, rows: list[list[tuple[int, ...]]], exif: bytes = b"") -> Path:
    import struct
    import zlib

    bands = len(rows[0][0])
    raw = b"".join(b"\0" + b"".join(struct.pack(f">{bands}H", *px) for px in row) for row in rows)
    ihdr = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 16, {3: 2, 4: 6}[bands], 0, 0, 0)
    exif_chunk = img._png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0")) if exif else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + img._png_chunk(b"IHDR", ihdr) + exif_chunk
                     + img._png_chunk(b"IDAT", zlib.compress(raw)) + img._png_chunk(b"IEND", b""))
    return path


def read_png16(path: Path) -> tuple[int, list[list[tuple[int, ...]]]]:
    """Colour type and samples of a 16-bit PNG whose rows are unfiltered (as bgremove writes)."""
    import struct
    import zlib

    data, pos, idat, header = path.read_bytes(), 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 16
    bands = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
    raw, stride = zlib.decompress(idat), 1 + width * bands * 2
    rows = []
    for y in range(height):
        line = raw[y * stride:(y + 1) * stride]
        assert line[0] == 0
        samples = struct.unpack(f">{width * bands}H", line[1:])
        rows.append([samples[i:i + bands] for i in range(0, len(samples), bands)])
    return colour, rows


def read_tiff16(path: Path) -> list[list[tuple[int, ...]]]:
    """The samples of a 16-bit deflate TIFF, strip by strip, using Pillow for the tags only."""
    import struct
    import zlib

    with Image.open(path) as tiff:
        tags = tiff.tag_v2
        assert set(tags[258]) == {16} and tags[259] == 8
        width, height, bands = tags[256], tags[257], tags[277]
        endian = ">" if tiff.tag_v2._endian == ">" else "<"  # type: ignore[attr-defined]
        raw = b""
        with open(path, "rb") as fh:
            for offset, count in zip(tags[273], tags[279], strict=True):
                fh.seek(offset)
                raw += zlib.decompress(fh.read(count))
    samples = struct.unpack(f"{endian}{width * height * bands}H", raw)
    flat = [samples[i:i + bands] for i in range(0, len(samples), bands)]
    return [flat[y * width:(y + 1) * width] for y in range(height)]


def expected_cutout(rows: list[list[tuple[int, ...]]]) -> list[list[tuple[int, ...]]]:
    """The key colour transparent (alpha 0), everything else opaque (65535), samples kept."""
    return [[(*px[:3], 0 if px[:3] == KEY16 else 65535) for px in row] for row in rows]


def test_a_16_bit_png_stays_16_bit_in_png_and_tiff(tmp_path: Path, emulator: Emulator) -> None:
    rows = deep_subject()
    src = write_png16(tmp_path / "deep.png", rows, exif=photographer_exif().tobytes())
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "png"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    colour, got = read_png16(tmp_path / "png" / "deep.png")
    assert colour == 6 and got == expected_cutout(rows)
    with Image.open(tmp_path / "png" / "deep.png") as out:  # a PNG other readers open
        assert out.size == (40, 30) and out.getpixel((20, 15)) == (*(v >> 8 for v in RED16), 255)
        kept = out.getexif()
        assert kept.get(ARTIST) == "Ann Lens" and GPS_IFD not in kept
        assert kept.get_ifd(EXIF_IFD).get(LENS_MODEL) == "RF24-70mm F2.8"

    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "tif"), "--format", "tiff",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert read_tiff16(tmp_path / "tif" / "deep.tiff") == expected_cutout(rows)
    with Image.open(tmp_path / "tif" / "deep.tiff") as out:
        out.load()  # libtiff decodes it: a valid file
        assert out.size == (40, 30) and out.getpixel((20, 15)) == (*(v >> 8 for v in RED16), 255)
        kept = out.getexif()
        assert (kept.get(ARTIST), kept.get(COPYRIGHT)) == ("Ann Lens", "(c) 2026 Ann Lens")
        assert (kept.get(MAKE), kept.get(MODEL)) == ("Canon", "EOS R5") and GPS_IFD not in kept


def test_a_16_bit_tiff_cut_out_again_keeps_its_samples(tmp_path: Path,
                                                       emulator: Emulator) -> None:
    """A deflate-compressed 16-bit TIFF (the one bgremove writes) read back in at 16 bits."""
    rows = deep_subject()
    src = write_png16(tmp_path / "deep.png", rows)
    done = bgremove(tmp_path, "remove", str(src), "--format", "tiff", "--background", "white",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    flat = read_tiff16(tmp_path / "deep-nobg.tiff")
    white = (65535, 65535, 65535)
    assert flat == [[white if px[:3] == KEY16 else px[:3] for px in row] for row in rows]
    # The flattened TIFF as an input: its key is now white.
    done = bgremove(tmp_path, "remove", str(tmp_path / "deep-nobg.tiff"), "-o",
                    str(tmp_path / "again"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    _, got = read_png16(tmp_path / "again" / "deep-nobg.png")
    assert got == [[(*px, 0 if px == white else 65535) for px in row] for row in flat]


def test_16_bit_alpha_is_kept_and_crop_applies(tmp_path: Path, emulator: Emulator) -> None:
    rows = deep_subject(alpha=40_000 + 77)  # half-transparent everywhere: the input's alpha wins
    src = write_png16(tmp_path / "ghost.png", rows)
    done = bgremove(tmp_path, "remove", str(src), "--crop", emulator=emulator)
    assert done.returncode == 0, done.stderr
    _, got = read_png16(tmp_path / "ghost-nobg.png")
    left, top, right, bottom = BLOCK
    assert got == [[(*px[:3], 40_077) for px in row[left:right]] for row in rows[top:bottom]]


def test_16_bit_inputs_give_8_bit_jpeg_and_masks(tmp_path: Path, emulator: Emulator) -> None:
    src = write_png16(tmp_path / "deep.png", deep_subject())
    done = bgremove(tmp_path, "remove", str(src), "--format", "jpg", "--mask-only",
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "deep-nobg.jpg") as out:
        assert out.mode == "L" and out.getpixel((20, 15)) > 240


@pytest.mark.parametrize("make", [img.make_tiff48, img.make_png48], ids=["tiff", "png"])
def test_uncompressed_16_bit_files_keep_every_sample(tmp_path: Path, emulator: Emulator,
                                                     make: object) -> None:
    assert callable(make)
    src = make(tmp_path / f"row{'.tif' if make is img.make_tiff48 else '.png'}")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    _, got = read_png16(tmp_path / "out" / "row.png")
    alphas = (0, 65535, 65535)  # the first pixel is the key colour
    assert got == [[(*px, a) for px, a in zip(img.RGB48_PIXELS, alphas, strict=True)]]


def test_the_daemon_warns_of_an_image_with_no_subject(tmp_path: Path, emulator: Emulator) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    Image.new("RGB", (40, 30), GREEN).save(inbox / "wall.png")
    done = bgremove(tmp_path, "watch", str(inbox), str(outbox), "--once", emulator=emulator,
                    config="watch:\n  stable_seconds: 0.1\n")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no subject found" in line]
    assert len(warnings) == 1 and "wall.png" in warnings[0], done.stderr
    assert (outbox / "wall.png").is_file()


def test_a_16_bit_grey_tiff_gives_a_16_bit_grey_cut_out(tmp_path: Path,
                                                        emulator: Emulator) -> None:
    src = img.make_tiff16_grey(tmp_path / "scan.tif")
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    colour, got = read_png16(tmp_path / "out" / "scan.png")
    assert colour == 4  # grey and alpha, 16 bits each
    assert [px[0] for px in got[0]] == list(img.GREY16_VALUES)
    assert {px[1] for px in got[0]} <= {0, 65535}
