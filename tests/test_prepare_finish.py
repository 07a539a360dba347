"""The prepare and finish stages of one file, against the emulator on 127.0.0.1.

prepare: a JPEG or PNG goes up as the file's own bytes minus its metadata (no GPS), pixels
identical, the orientation kept for the mask; what cannot go up as it is is re-encoded.
finish: the output is pixel-exact (the original's pixels, the service's mask turned upright)
on full-size and capped results, orientation 1 and 6; the fast path writes the service's
PNG data byte for byte; a file changed between the two is refused and nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import threading
import time
import weakref
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps, PngImagePlugin

from bgremove.config import OutputConfig
from bgremove.contract import Prepared, Result
from bgremove.emulator import Emulator
from bgremove.emulator.model import cutout_png, keyout_alpha
from bgremove.errors import (
    CancelledError,
    InputChangedError,
    OutputError,
    ProtocolError,
    UnreadableImageError,
)
from bgremove.imaging import (
    SourceImage,
    _finish,
    apply_orientation,
    finish_file,
    load_image,
    prepare_file,
    result_alpha,
    strip_jpeg_metadata,
)
from bgremove.imaging._png import png_data_complete, read_chunks, strip_png_metadata
from bgremove.jobs import JobResult
from bgremove.stages import FileJob
from bgremove.wavespeed import WaveSpeedClient
from tests import images as img
from tests.cli_process import bgremove
from tests.conftest import configured

LIMITS = {"max_pixels": 10**8, "max_upload_bytes": 30 * 2**20, "max_upload_side": 8192}
KEY = (0, 200, 0)
MAKE = 0x010F


def photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A key-colour background with an off-centre, textured subject: the subject's place
    tells a mask turned the wrong way apart, and its texture makes every pixel count."""
    stored = Image.new("RGB", size, KEY)
    subject = img.photo_like((size[0] // 3, size[1] // 3))
    stored.paste(subject, (size[0] // 12, size[1] // 2))
    return stored


def camera_exif(orientation: int) -> Image.Exif:
    exif = img.exif_with(orientation, gps=True)
    exif[MAKE] = "Canon"
    return exif


def save_jpeg(path: Path, orientation: int) -> Path:
    photo().save(path, "JPEG", quality=100, exif=camera_exif(orientation),
                 icc_profile=img.srgb_icc(), comment=b"at home")
    return path


def save_png(path: Path, orientation: int, image: Image.Image | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "at home")
    info.add_text("Location", "48N 2E", zip=True)
    info.add_itxt("Title", "holiday")
    info.add(b"tIME", b"\x07\xea\x0b\x1e\x09\x00\x00")
    (image or photo()).save(path, "PNG", exif=camera_exif(orientation),
                            icc_profile=img.srgb_icc(), pnginfo=info, dpi=(300, 300))
    return path


def served(emulator: Emulator, prepared: Prepared) -> Result:
    """The remote stage, plainly: upload, submit in sync mode, download."""
    config = configured(emulator)
    with WaveSpeedClient(config.wavespeed) as client:
        ctx = client.context()
        ctx.upload_pixels = prepared.upload.size[0] * prepared.upload.size[1]
        upload = prepared.upload
        url = client.upload(upload.data, upload.filename, upload.content_type, ctx=ctx)
        prediction = client.run(url, sync=True, ctx=ctx)
        data = client.download_output(prediction, ctx=ctx)
        return Result("wavespeed", data=data, max_pixels=client.output_limits(ctx).max_pixels,
                      task_id=prediction.id)


def upright_original(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def idat(png: bytes) -> bytes:
    parsed = read_chunks(png)
    assert parsed is not None
    return b"".join(bytes(chunk.data) for chunk in parsed[1] if chunk.kind == b"IDAT")


def chunk_kinds(png: bytes) -> list[bytes]:
    parsed = read_chunks(png)
    assert parsed is not None
    return [chunk.kind for chunk in parsed[1]]


def has_gps(exif: Image.Exif) -> bool:
    return img.EXIF_GPS_IFD in exif


# --- prepare ------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_jpeg_goes_up_as_its_own_bytes_minus_metadata(tmp_path: Path, orientation: int
                                                        ) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", orientation)
    data = src.read_bytes()
    prepared = prepare_file(src, **LIMITS)

    assert prepared.upload.data == strip_jpeg_metadata(data)
    assert len(prepared.upload.data) < len(data)
    assert (prepared.upload.content_type, prepared.upload.filename) == ("image/jpeg",
                                                                        "image.jpg")
    assert prepared.digest == hashlib.sha256(data).hexdigest()
    assert prepared.orientation == orientation
    assert prepared.upload.size == (96, 64)
    assert prepared.size == ((64, 96) if orientation == 6 else (96, 64))
    for secret in (b"Exif", b"Canon", b"at home"):
        assert secret not in prepared.upload.data
    with Image.open(io.BytesIO(prepared.upload.data)) as sent, Image.open(src) as original:
        assert not sent.getexif()
        assert sent.tobytes() == original.tobytes()


def test_a_phone_mpo_goes_up_as_its_first_picture_minus_metadata(tmp_path: Path) -> None:
    src = tmp_path / "phone.jpg"
    second = photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    photo().save(src, "MPO", save_all=True, append_images=[second], exif=camera_exif(6))
    data = src.read_bytes()
    prepared = prepare_file(src, **LIMITS)
    assert prepared.upload.data == strip_jpeg_metadata(data)
    assert len(prepared.upload.data) < len(data) // 2 + 500  # the second picture stays home
    assert prepared.orientation == 6 and prepared.size == (64, 96)
    with Image.open(io.BytesIO(prepared.upload.data)) as sent, Image.open(src) as original:
        assert original.format == "MPO" and sent.format == "JPEG" and not sent.getexif()
        assert sent.tobytes() == original.tobytes()


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_png_goes_up_as_its_own_chunks_minus_metadata(tmp_path: Path, orientation: int
                                                        ) -> None:
    src = save_png(tmp_path / "photo.png", orientation)
    data = src.read_bytes()
    kinds = chunk_kinds(data)
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME", b"iCCP", b"pHYs"):
        assert kind in kinds  # the file has them all...
    prepared = prepare_file(src, **LIMITS)
    sent = prepared.upload.data
    assert chunk_kinds(sent) == [b"IHDR", b"IDAT", b"IEND"]  # ...the upload none of them
    assert idat(sent) == idat(data)  # the image data byte for byte: nothing re-encoded
    assert (prepared.upload.content_type, prepared.upload.filename) == ("image/png",
                                                                        "image.png")
    assert prepared.orientation == orientation
    assert prepared.size == ((64, 96) if orientation == 6 else (96, 64))
    for secret in (b"at home", b"holiday", b"Exif", b"MM\x00*", b"Canon"):
        assert secret not in sent
    with Image.open(io.BytesIO(sent)) as up, Image.open(src) as original:
        assert not up.getexif() and not up.info
        assert up.tobytes() == original.tobytes()


def test_a_palette_png_keeps_its_palette_and_transparency(tmp_path: Path) -> None:
    src = img.make_palette_png_with_transparency(tmp_path / "p.png")
    prepared = prepare_file(src, **LIMITS)
    assert chunk_kinds(prepared.upload.data) == [b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(prepared.upload.data)) as up, Image.open(src) as original:
        assert up.convert("RGBA").tobytes() == original.convert("RGBA").tobytes()


@pytest.mark.parametrize("make", [img.make_png48, img.make_png16_grey], ids=["rgb16", "grey16"])
def test_a_16_bit_png_is_re_encoded(tmp_path: Path, make: object) -> None:
    src = make(tmp_path / "deep.png")  # type: ignore[operator]
    prepared = prepare_file(src, **LIMITS)
    assert prepared.upload.data != strip_png_metadata(src.read_bytes())
    with Image.open(io.BytesIO(prepared.upload.data)) as up:
        assert up.mode in ("RGB", "RGBA", "L") and up.size == prepared.size
    assert prepared.orientation == 1


def test_over_the_upload_limit_the_upright_pixels_are_re_encoded(tmp_path: Path) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 6)
    stripped = strip_jpeg_metadata(src.read_bytes())
    assert stripped is not None
    prepared = prepare_file(src, **{**LIMITS, "max_upload_bytes": len(stripped) - 1})
    assert prepared.upload.data != stripped
    assert prepared.orientation == 1 and prepared.upload.size == prepared.size == (64, 96)


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_a_truncated_file_is_refused_at_prepare_like_load_image(tmp_path: Path, kind: str
                                                                ) -> None:
    src = img.make_truncated(tmp_path / f"cut.{kind.lower()}", kind)
    with pytest.raises(UnreadableImageError) as prepared:
        prepare_file(src, **LIMITS)
    with pytest.raises(UnreadableImageError) as loaded:
        load_image(src, max_pixels=10**8)
    assert str(src) in str(prepared.value)
    assert str(prepared.value).split(" (")[0] == str(loaded.value).split(" (")[0]


def test_a_jpeg_whose_scan_does_not_decode_is_refused_at_prepare(tmp_path: Path) -> None:
    """Its segments are clear (it would go up as it is), but its scan names a Huffman table
    that is not there: only decoding the data finds that."""
    data = bytearray(img.encoded(photo(), "JPEG"))
    sos = data.index(b"\xff\xda")
    data[sos + 6] = 0x22  # the first component's DC/AC tables: 2 and 2, never defined
    src = tmp_path / "broken.jpg"
    src.write_bytes(data)
    assert strip_jpeg_metadata(bytes(data)) is not None
    with pytest.raises(UnreadableImageError, match="truncated or corrupt") as err:
        prepare_file(src, **LIMITS)
    assert str(src) in str(err.value)


def _png(header: bytes, raw: bytes, idats: list[bytes] | None = None) -> bytes:
    """A PNG of ``header`` (IHDR's payload) and the rows ``raw`` (or ready ``idats``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + \
            zlib.crc32(kind + data).to_bytes(4, "big")
    data = b"".join(chunk(b"IDAT", idat) for idat in (idats or [zlib.compress(raw)]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


RGB_2X2 = (2).to_bytes(4, "big") * 2 + bytes((8, 2, 0, 0, 0))


@pytest.mark.parametrize(("raw", "complete"), [
    (b"\x00" + bytes(6) + b"\x01" + bytes(6), True),
    (b"\x00" + bytes(6) + b"\x05" + bytes(6), False),  # filter type 5 does not exist
    (b"\x00" + bytes(6) + b"\x00" + bytes(5), False),  # one byte short
    (b"\x00" + bytes(6) + b"\x00" + bytes(7), False),  # one byte over
], ids=["good", "bad-filter", "short", "long"])
def test_the_png_data_check(tmp_path: Path, raw: bytes, complete: bool) -> None:
    png = _png(RGB_2X2, raw)
    assert png_data_complete(png) is complete
    src = tmp_path / "small.png"
    src.write_bytes(png)  # every chunk well-formed: only its data says whether it decodes
    if complete:
        assert prepare_file(src, **LIMITS).upload.data == png
    else:
        with pytest.raises(UnreadableImageError, match="truncated or corrupt"):
            prepare_file(src, **LIMITS)


@pytest.mark.parametrize("idat_size", [1, 1 << 16])
def test_the_png_data_check_takes_any_split_of_a_long_stream(idat_size: int) -> None:
    """341x2048 RGB is exactly 2 MiB of rows (the check inflates 1 MiB at a time), here
    from a few KB of data cut into IDAT chunks of 1 byte or 64 KB."""
    width, height = 341, 2048
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, 2, 0, 0, 0))
    data = zlib.compress(b"".join(b"\x02" + bytes(3 * width) for _ in range(height)), 9)

    def png(stream: bytes) -> bytes:
        idats = [stream[i:i + idat_size] for i in range(0, len(stream), idat_size)]
        return _png(header, b"", idats)

    assert png_data_complete(png(data))
    assert not png_data_complete(png(data[:-8]))  # the stream cut short, chunks well-formed


def test_a_png_with_a_bad_crc_or_an_odd_kind_is_not_sent_as_it_is(tmp_path: Path) -> None:
    good = _png(RGB_2X2, bytes(14))
    assert strip_png_metadata(good) is not None
    assert strip_png_metadata(good[:-1] + b"\x00") is None  # IEND's CRC broken
    interlaced = _png(RGB_2X2[:-1] + b"\x01", bytes(14))
    assert strip_png_metadata(interlaced) is None
    frames = io.BytesIO()
    photo().save(frames, "PNG", save_all=True, append_images=[photo()])
    assert strip_png_metadata(frames.getvalue()) is None  # animated


def damaged(png: bytes, kind: bytes) -> bytes:
    """``png`` with the CRC of its first ``kind`` chunk wrong."""
    parsed = read_chunks(png)
    assert parsed is not None
    chunk = next(c for c in parsed[1] if c.kind == kind)
    return png[:chunk.end - 4] + bytes(b ^ 0xFF for b in png[chunk.end - 4:chunk.end]) \
        + png[chunk.end:]


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"])
def test_a_png_with_a_damaged_ancillary_chunk_is_read_without_it(tmp_path: Path, kind: bytes
                                                                 ) -> None:
    good = save_png(tmp_path / "good.png", 1).read_bytes()
    src = tmp_path / "photo.png"
    src.write_bytes(damaged(good, kind))
    prepared = prepare_file(src, **LIMITS)
    assert prepared.digest == hashlib.sha256(src.read_bytes()).hexdigest()  # the file's own
    assert chunk_kinds(prepared.upload.data) == [b"IHDR", b"IDAT", b"IEND"]
    assert idat(prepared.upload.data) == idat(good)  # still its own bytes, not re-encoded
    source = load_image(src, max_pixels=10**8)
    assert source.image.tobytes() == load_image(tmp_path / "good.png", max_pixels=10**8
                                                ).image.tobytes()


def test_a_png_with_a_damaged_text_chunk_is_cut_out(tmp_path: Path, emulator: Emulator) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "before the image data")
    src = tmp_path / "photo.png"
    stored = photo()
    stored.save(src, "PNG", pnginfo=info)
    src.write_bytes(damaged(src.read_bytes(), b"tEXt"))
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["bgremove: 1 image: 1 done"]
    with Image.open(tmp_path / "out" / "photo.png") as out:
        rgba = out.convert("RGBA")
    opaque = [p[:3] for p in img.pixels(rgba) if p[3] == 255]
    pairs = zip(img.pixels(stored), img.pixels(rgba), strict=True)
    assert opaque and opaque == [p for p, q in pairs if q[3] == 255]  # the photo's own


@pytest.mark.parametrize("kind", [b"IHDR", b"PLTE", b"IDAT", b"IEND"])
def test_a_png_with_a_damaged_critical_chunk_is_refused(tmp_path: Path, kind: bytes) -> None:
    src = tmp_path / "photo.png"
    image = photo().convert("P") if kind == b"PLTE" else photo()
    image.save(src, "PNG")
    src.write_bytes(damaged(src.read_bytes(), kind))
    want = f"{src}: the PNG is damaged: its {kind.decode()} chunk fails its checksum"
    with pytest.raises(UnreadableImageError, match="damaged") as refused:
        prepare_file(src, **LIMITS)
    assert str(refused.value) == want
    with pytest.raises(UnreadableImageError, match="damaged"):
        load_image(src, max_pixels=10**8)


def test_remove_refuses_a_png_with_a_damaged_image_chunk_in_one_line(
        tmp_path: Path, emulator: Emulator) -> None:
    src = tmp_path / "photo.png"
    photo().save(src, "PNG")
    data = damaged(src.read_bytes(), b"IDAT")
    src.write_bytes(data)
    done = bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emulator)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"bgremove: error: {src}: the PNG is damaged: its IDAT chunk fails its checksum",
        "bgremove: 1 image: 0 done, 1 failed"]
    assert src.read_bytes() == data and not (tmp_path / "out" / "photo.png").exists()


# --- finish -------------------------------------------------------------------------------


def oracle(src: Path, service_alpha: Image.Image, orientation: int) -> Image.Image:
    """What the output must be: the upright original's pixels, the service's mask turned
    upright (and resized like ``fit_alpha`` when the service answered smaller)."""
    upright = upright_original(src)
    alpha = apply_orientation(service_alpha, orientation)
    if alpha.size != upright.size:
        alpha = alpha.resize(upright.size, Image.Resampling.LANCZOS)
    want = upright.convert("RGBA")
    want.putalpha(alpha)
    return want


@pytest.mark.parametrize("apart", [False, True], ids=["in-turn", "decoded-apart"])
@pytest.mark.parametrize("kind", ["jpg", "png"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_finish_is_pixel_exact_on_a_full_size_result(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, orientation: int,
        kind: str, apart: bool) -> None:
    """``apart``: the service's result decoded on a thread beside the input (as a large
    one is)."""
    monkeypatch.setattr(_finish, "_DECODE_APART_BYTES", 0 if apart else 1 << 40)
    src = (save_jpeg if kind == "jpg" else save_png)(tmp_path / f"photo.{kind}", orientation)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    dst = tmp_path / "out" / "photo.png"
    assert finish_file(prepared, result, src, dst, OutputConfig()) is None

    with Image.open(io.BytesIO(result.data or b"")) as answer:
        assert answer.size == prepared.upload.size  # as stored: not upright
        want = oracle(src, answer.getchannel("A"), orientation)
    with Image.open(dst) as out:
        assert out.mode == "RGBA" and out.size == prepared.size
        assert out.tobytes() == want.tobytes()
        # the input's profile and its EXIF minus the location travel to the output
        assert out.info.get("icc_profile") == img.srgb_icc()
        exif = out.getexif()
        assert exif.get(MAKE) == "Canon"
        assert not has_gps(exif) and img.EXIF_ORIENTATION not in exif
    # The subject is opaque and the key colour transparent: the mask is not all one value.
    assert want.getchannel("A").getextrema() == (0, 255)


@pytest.mark.parametrize("orientation", [1, 6])
def test_the_fast_path_writes_the_service_png_data_as_it_came(
        tmp_path: Path, emulator: Emulator, orientation: int) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", orientation)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    dst = tmp_path / "photo.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    written = dst.read_bytes()
    if orientation == 1:  # nothing to change: the service's image data, byte for byte
        assert idat(written) == idat(result.data or b"")
        assert chunk_kinds(written) == [b"IHDR", b"iCCP", b"eXIf", b"IDAT", b"IEND"]
    else:  # turned upright: encoded again
        assert idat(written) != idat(result.data or b"")


@pytest.mark.parametrize("orientation", [1, 6])
def test_finish_is_pixel_exact_on_a_capped_result(tmp_path: Path, emulator_factory: object,
                                                  orientation: int) -> None:
    emu = emulator_factory(output_max_side=40)  # type: ignore[operator]
    src = save_jpeg(tmp_path / "photo.jpg", orientation)
    prepared = prepare_file(src, **LIMITS)
    result = served(emu, prepared)
    dst = tmp_path / "photo.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    with Image.open(io.BytesIO(result.data or b"")) as answer:
        assert max(answer.size) == 40  # the model answered smaller than the photo
        want = oracle(src, answer.getchannel("A"), orientation)
    with Image.open(dst) as out:
        assert out.size == prepared.size and out.tobytes() == want.tobytes()


def test_a_re_encoded_input_is_finished_pixel_exact_too(tmp_path: Path,
                                                       emulator: Emulator) -> None:
    """A WebP is not sent as it is: its upright pixels go up as a lossless PNG, and the
    service's answer, being those pixels, is written as it came."""
    src = img.make_webp(tmp_path / "photo.webp", photo())
    prepared = prepare_file(src, **LIMITS)
    assert prepared.upload.content_type == "image/png" and prepared.orientation == 1
    result = served(emulator, prepared)
    dst = tmp_path / "photo.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    assert idat(dst.read_bytes()) == idat(result.data or b"")
    with Image.open(io.BytesIO(result.data or b"")) as answer:
        want = oracle(src, answer.getchannel("A"), 1)
    with Image.open(dst) as out:
        assert out.tobytes() == want.tobytes()


def test_a_16_bit_input_keeps_its_16_bit_samples_through_the_finish(tmp_path: Path,
                                                                    emulator: Emulator) -> None:
    src = img.make_png48(tmp_path / "deep.png")
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    parsed = read_chunks(dst.read_bytes())
    assert parsed is not None
    header = parsed[0]
    assert (header.bit_depth, header.colour_type) == (16, 6)  # 16-bit RGBA, not the fast path


def test_options_that_change_pixels_take_the_compose_path(tmp_path: Path,
                                                          emulator: Emulator) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    dst = tmp_path / "flat.png"
    finish_file(prepared, result, src, dst, OutputConfig(background="#ffffff"))
    upright = upright_original(src)
    with Image.open(io.BytesIO(result.data or b"")) as answer:
        alpha = answer.getchannel("A")
    want = Image.new("RGB", upright.size, (255, 255, 255))
    want.paste(upright, (0, 0), alpha)
    with Image.open(dst) as out:
        assert out.mode == "RGB" and out.tobytes() == want.tobytes()


@pytest.mark.parametrize("where", ["everywhere", "last-pixel", "first-pixel"])
def test_a_service_that_changed_the_colours_gets_the_original_pixels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The fast path is only taken when the service's colours are all the original's: here
    it re-touched every pixel, or only the last (first) one of a picture compared in bands
    of 64 rows, its last band shorter."""
    monkeypatch.setattr(_finish, "_COMPARE_BYTES", 4 * 96 * 64)
    src = save_png(tmp_path / "photo.png", 1, image=photo((96, 700)))
    prepared = prepare_file(src, **LIMITS)
    with Image.open(src) as opened:
        original = opened.convert("RGB")
    if where == "everywhere":
        touched = original.point(lambda v: min(255, v + 1))
    else:
        touched = original.copy()
        where_xy = (95, 699) if where == "last-pixel" else (0, 0)
        r, g, b = original.getpixel(where_xy)  # type: ignore[misc]
        touched.putpixel(where_xy, (r, g, b ^ 1))
    alpha = keyout_alpha(original)
    result = Result("wavespeed", data=cutout_png(touched, alpha), max_pixels=96 * 700)
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    want = original.convert("RGBA")
    want.putalpha(alpha)
    with Image.open(dst) as out:
        assert out.tobytes() == want.tobytes()


def test_a_local_alpha_is_turned_and_applied(tmp_path: Path) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 6)
    prepared = prepare_file(src, **LIMITS)
    with Image.open(io.BytesIO(prepared.upload.data)) as stored:
        mask = keyout_alpha(stored)  # a local model works on the stored pixels too
    result = Result("local", alpha=mask)
    assert result_alpha(result, prepared.orientation).tobytes() == \
        apply_orientation(mask, 6).tobytes()
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    with Image.open(dst) as out:
        assert out.tobytes() == oracle(src, mask, 6).tobytes()


def test_an_empty_cut_out_is_written_with_a_warning(tmp_path: Path) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    prepared = prepare_file(src, **LIMITS)
    result = Result("local", alpha=Image.new("L", prepared.upload.size, 0))
    warning = finish_file(prepared, result, src, tmp_path / "out.png", OutputConfig())
    assert warning is not None and "no subject" in warning
    assert (tmp_path / "out.png").exists()


@pytest.mark.parametrize("apart", [False, True], ids=["in-turn", "decoded-apart"])
def test_a_result_over_its_pixel_limit_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apart: bool) -> None:
    monkeypatch.setattr(_finish, "_DECODE_APART_BYTES", 0 if apart else 1 << 40)
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    prepared = prepare_file(src, **LIMITS)
    big = Image.new("RGBA", (2000, 2000))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    result = Result("wavespeed", data=buffer.getvalue(), max_pixels=96 * 64 * 4)
    with pytest.raises(ProtocolError, match="refused before decoding"):
        finish_file(prepared, result, src, tmp_path / "out.png", OutputConfig())
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("given", [False, True], ids=["read", "data"])
def test_a_file_changed_after_its_upload_is_not_finished(tmp_path: Path, emulator: Emulator,
                                                         given: bool) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)
    # Replaced while its task ran: same name, same size in pixels, other pixels.
    photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src, "JPEG", quality=100)
    dst = tmp_path / "out" / "photo.png"
    with pytest.raises(InputChangedError, match="changed while it was being processed") as err:
        finish_file(prepared, result, src, dst, OutputConfig(),
                    data=src.read_bytes() if given else None)
    assert str(src) in str(err.value) and err.value.kind == "changed"
    assert not dst.parent.exists() or not any(dst.parent.iterdir())


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_file_job_warmed_ahead_decodes_its_input_once_and_writes_the_same(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
        orientation: int) -> None:
    """``FileJob.warm`` (run while the task waits) decodes the input; the finish then only
    checks the file is the one prepared and decodes the service's result."""
    src = save_jpeg(tmp_path / "photo.jpg", orientation)
    config = configured(emulator)
    decodes: list[Path] = []
    real = _finish.load_image
    monkeypatch.setattr(_finish, "load_image", lambda path, **kw: (
        decodes.append(Path(path)), real(path, **kw))[1])
    ended: list[JobResult] = []
    job = FileJob(src, tmp_path / "out.png", config, done=ended.append)
    prepared = job.prepare()
    result = served(emulator, prepared)
    job.warm(prepared)
    assert decodes == [src]
    job.finish(prepared, result)
    assert decodes == [src] and ended[0].status == "ok"
    with Image.open(io.BytesIO(result.data or b"")) as answer:
        want = oracle(src, answer.getchannel("A"), orientation)
    with Image.open(tmp_path / "out.png") as out:
        assert out.tobytes() == want.tobytes()
    job.warm(prepared)  # too late: the finish has begun, nothing is decoded
    assert decodes == [src]


@pytest.mark.parametrize("when", ["before-warm", "after-warm"])
def test_a_file_changed_around_its_warm_is_not_finished(tmp_path: Path, emulator: Emulator,
                                                         when: str) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    config = configured(emulator)
    ended: list[JobResult] = []
    dst = tmp_path / "out" / "photo.png"
    job = FileJob(src, dst, config, done=ended.append)
    prepared = job.prepare()
    result = served(emulator, prepared)
    if when == "after-warm":
        job.warm(prepared)
    photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src, "JPEG", quality=100)
    if when == "before-warm":
        with pytest.raises(InputChangedError):
            job.warm(prepared)
    with pytest.raises(InputChangedError, match="changed while it was being processed"):
        job.finish(prepared, result)
    assert not dst.parent.exists() or not any(dst.parent.iterdir())


def _weakly_held_sources(monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None
                         ) -> list[weakref.ref[SourceImage]]:
    """Weak references to what ``FileJob.warm`` decodes (after ``gate`` is set, if given)."""
    import bgremove.imaging

    refs: list[weakref.ref[SourceImage]] = []
    real = bgremove.imaging.load_source

    def noted(prepared: Prepared, src: Path) -> SourceImage:
        source = real(prepared, src)
        refs.append(weakref.ref(source))
        if gate is not None:
            assert gate.wait(30)
        return source

    monkeypatch.setattr(bgremove.imaging, "load_source", noted)
    return refs


def test_a_job_failing_while_it_is_warmed_keeps_nothing_it_decoded(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode ahead ends after the job has failed (cancelled while its task waited): its
    pixels are not kept (a batch keeps its results; a failed job's must be small)."""
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    gate = threading.Event()
    refs = _weakly_held_sources(monkeypatch, gate)
    ended: list[JobResult] = []
    job = FileJob(src, tmp_path / "out.png", configured(emulator), done=ended.append)
    prepared = job.prepare()
    warming = threading.Thread(target=job.warm, args=(prepared,))
    warming.start()
    deadline = time.monotonic() + 30
    while not refs:
        assert time.monotonic() < deadline, "the warm never decoded"
        time.sleep(0.01)
    job.failed(CancelledError("cancelled"))
    gate.set()
    warming.join(30)
    assert ended[0].status == "failed"
    assert refs[0]() is None, "the failed job still holds its decoded input"


def test_a_failed_finish_keeps_no_decoded_image_in_its_result(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output cannot be written: the job's result says why, and holds no traceback (its
    frames would keep the decoded input, the cut-out and the service's answer alive)."""
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    refs = _weakly_held_sources(monkeypatch)
    (tmp_path / "blocker").write_bytes(b"a file where the output folder goes")
    ended: list[JobResult] = []
    job = FileJob(src, tmp_path / "blocker" / "out.png", configured(emulator),
                  done=ended.append)
    prepared = job.prepare()
    result = served(emulator, prepared)
    job.warm(prepared)
    try:
        job.finish(prepared, result)
    except OutputError as exc:
        job.failed(exc)
    error = ended[0].error
    assert isinstance(error, OutputError) and "cannot write" in str(error)
    assert error.__traceback__ is None and error.__cause__ is not None
    assert error.__cause__.__traceback__ is None  # the OS error's frames held the cut-out
    assert refs and refs[0]() is None, "the failed result still holds the decoded input"


# --- the same choice everywhere: remove, fetch --input ------------------------------------


@pytest.mark.parametrize("orientation", [3, 6])
def test_remove_and_fetch_send_and_turn_a_png_as_prepare_does(tmp_path: Path, emulator: Emulator,
                                                              orientation: int) -> None:
    src = save_png(tmp_path / "photo.png", orientation)
    prepared = prepare_file(src, **LIMITS)
    done = bgremove(tmp_path, "remove", str(src), "--json", "-o", str(tmp_path / "removed"),
                    emulator=emulator)
    assert done.returncode == 0, done.stderr
    [upload] = emulator.stats()["upload_log"]
    assert upload["sha256"] == hashlib.sha256(prepared.upload.data).hexdigest()
    task = json.loads(done.stdout)["task_id"]
    done = bgremove(tmp_path, "fetch", task, "--input", str(src), "-o",
                    str(tmp_path / "fetched"), emulator=emulator)
    assert done.returncode == 0, done.stderr
    with Image.open(io.BytesIO(prepared.upload.data)) as stored:
        want = oracle(src, keyout_alpha(stored), orientation)
    for folder in ("removed", "fetched"):
        with Image.open(tmp_path / folder / "photo.png") as out:
            assert out.size == prepared.size and out.tobytes() == want.tobytes(), folder


def test_remove_refuses_a_file_changed_while_its_task_ran(tmp_path: Path,
                                                          emulator_factory: object) -> None:
    """The race as a user meets it: the photo is replaced while the service works on it."""
    emu = emulator_factory(delay=600.0)  # type: ignore[operator]
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    done: list[subprocess.CompletedProcess[str]] = []
    runner = threading.Thread(target=lambda: done.append(
        bgremove(tmp_path, "remove", str(src), "-o", str(tmp_path / "out"), emulator=emu)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while emu.stats()["tasks_submitted"] < 1:  # the task is running at the service
            assert time.monotonic() < deadline, "the task was never submitted"
            time.sleep(0.02)
        photo().transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(src, "JPEG", quality=100)
    finally:
        emu.end_delays()
        runner.join(120)
    [result] = done
    assert result.returncode != 0
    assert "changed while it was being processed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "photo.png").exists()
