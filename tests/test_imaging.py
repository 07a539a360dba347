"""The pipeline after loading: upload encoding, the returned alpha, composing, atomic saving."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgremove.config import OutputConfig
from bgremove.errors import ConfigError, ImageTooLargeError, OutputError, ProtocolError
from bgremove.imaging import (
    SourceImage,
    _png,
    _save,
    alpha_from_bytes,
    compose,
    encode_for_upload,
    extension_for,
    fit_alpha,
    load_image,
    parse_color,
    save_image,
    source_from_raw,
)
from bgremove.imaging._modes import icc_colour_space
from tests import images as img

MB = 1024 * 1024


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        decoded: Image.Image = im.copy()
    return decoded


# --- encode_for_upload ----------------------------------------------------------------------

def test_small_image_uploads_as_exact_png(tmp_path: Path) -> None:
    source = img.noise_image((40, 30), "RGBA")
    up = encode_for_upload(source, max_bytes=MB, max_side=8192)
    assert (up.content_type, up.filename, up.size) == ("image/png", "image.png", (40, 30))
    assert decode(up.data).tobytes() == source.tobytes()


def test_upload_carries_no_exif_gps_icc_or_text(tmp_path: Path) -> None:
    path = img.make_jpeg_with_gps_and_icc(tmp_path / "holiday.jpg")
    with Image.open(path) as original:  # the test file really carries them
        assert original.getexif().get_ifd(img.EXIF_GPS_IFD)
        assert original.info.get("icc_profile")
    src = load_image(path, max_pixels=10**7)
    src.image.info.update(exif=b"Exif\0\0junk", icc_profile=img.srgb_icc(), comment="x")
    for max_bytes in (MB, 2000):  # PNG, then the JPEG fallback
        up = encode_for_upload(src.image, max_bytes=max_bytes, max_side=8192)
        with Image.open(io.BytesIO(up.data)) as sent:
            assert not sent.getexif()
            assert "icc_profile" not in sent.info and "exif" not in sent.info
            assert not sent.getexif().get_ifd(img.EXIF_GPS_IFD)
        for marker in (b"Exif", b"iCCP", b"eXIf", b"tEXt", b"ICC_PROFILE", b"holiday"):
            assert marker not in up.data, (up.content_type, marker)


def test_over_max_bytes_falls_back_to_jpeg_95() -> None:
    source = img.photo_like((400, 300))
    png_size = len(img.encoded(source, "PNG", compress_level=1))
    up = encode_for_upload(source, max_bytes=png_size - 1, max_side=8192)
    assert up.content_type == "image/jpeg" and up.filename == "image.jpg"
    assert up.size == (400, 300) and len(up.data) <= png_size - 1
    assert up.data == img.encoded(source, "JPEG", quality=95)


def test_jpeg_fallback_flattens_alpha_onto_white() -> None:
    source = img.noise_image((64, 64), "RGBA")
    source.putalpha(0)
    up = encode_for_upload(source, max_bytes=len(img.encoded(source, "PNG")) // 2,
                           max_side=8192)
    assert up.content_type == "image/jpeg"
    flat = decode(up.data)
    assert flat.mode == "RGB"
    assert all(low >= 250 for low, _high in flat.getextrema())  # type: ignore[misc]


def test_downscales_until_it_fits_keeping_aspect() -> None:
    source = img.noise_image((600, 300))
    jpeg_size = len(img.encoded(source, "JPEG", quality=95))
    up = encode_for_upload(source, max_bytes=jpeg_size // 4, max_side=8192)
    assert up.content_type == "image/jpeg" and len(up.data) <= jpeg_size // 4
    w, h = up.size
    assert w < 600 and abs(w / h - 2) < 0.02
    assert decode(up.data).size == up.size


def test_downscales_a_side_over_max_side() -> None:
    source = img.noise_image((300, 120))
    up = encode_for_upload(source, max_bytes=MB, max_side=100)
    assert up.size == (100, 40) and up.content_type == "image/png"
    assert decode(up.data).size == (100, 40)


def test_impossible_limit_is_refused() -> None:
    with pytest.raises(ImageTooLargeError, match="max_upload_bytes"):
        encode_for_upload(img.noise_image((300, 300)), max_bytes=100, max_side=8192)


def test_png_estimate_skips_hopeless_png_but_not_a_fitting_one() -> None:
    from bgremove.imaging._upload import _png_may_fit

    flat = Image.new("RGB", (2000, 1000), img.GREY)
    noisy = img.noise_image((2000, 1000))
    assert _png_may_fit(flat, 100_000)  # compresses to almost nothing
    assert not _png_may_fit(noisy, 1_000_000)  # ~6 MB of noise
    assert encode_for_upload(flat, max_bytes=100_000, max_side=8192).content_type == "image/png"


# --- alpha_from_bytes and fit_alpha ---------------------------------------------------------

#: A pixel limit no test result reaches.
ANY = 10**8

def _rgba_with_alpha(alpha_values: list[int]) -> Image.Image:
    im = Image.new("RGBA", (len(alpha_values), 1), (9, 9, 9, 0))
    alpha = Image.new("L", im.size)
    alpha.putdata(alpha_values)
    im.putalpha(alpha)
    return im


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("WEBP", "RGBA"), ("PNG", "LA")])
def test_alpha_from_result(fmt: str, mode: str) -> None:
    values = [0, 1, 128, 254, 255]
    result = _rgba_with_alpha(values).convert(mode)
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    alpha = alpha_from_bytes(img.encoded(result, fmt, **params), max_pixels=ANY)
    assert alpha.mode == "L" and list(alpha.tobytes()) == values


def test_grey_result_is_the_mask() -> None:
    mask = Image.new("L", (3, 1))
    mask.putdata([0, 100, 255])
    assert list(alpha_from_bytes(img.encoded(mask, "PNG"), max_pixels=ANY).tobytes()) == [
        0, 100, 255]


def test_palette_result_with_transparency() -> None:
    path_bytes = io.BytesIO()
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.putdata([0, 1])
    im.save(path_bytes, "PNG", transparency=0)
    assert list(alpha_from_bytes(path_bytes.getvalue(), max_pixels=ANY).tobytes()) == [0, 255]


def test_result_without_alpha_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no alpha channel"):
        alpha_from_bytes(img.encoded(Image.new("RGB", (4, 4)), "PNG"), max_pixels=ANY)


def test_truncated_result_is_a_protocol_error() -> None:
    data = img.encoded(img.noise_image((64, 64), "RGBA"), "PNG")[:8000]
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        alpha_from_bytes(data, max_pixels=ANY)


@pytest.mark.parametrize("data", [
    b"",
    b"<html>error</html>",
    img.encoded(Image.new("LA", (4, 4)), "TIFF"),
    img.encoded(Image.new("RGBA", (4, 4)), "GIF"),
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n",
], ids=["empty", "html", "tiff", "gif", "eps"])
def test_result_other_than_png_or_webp_is_refused_unread(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a PNG or WebP image") as info:
        alpha_from_bytes(data, max_pixels=ANY)
    assert not info.value.transient


def test_result_with_more_pixels_than_allowed_is_refused_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    data = img.encoded(Image.new("RGBA", (40, 30)), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ProtocolError, match=r"40x30 \(1,200 pixels\), more than the 1,199"):
        alpha_from_bytes(data, max_pixels=1199)
    monkeypatch.undo()
    assert alpha_from_bytes(data, max_pixels=1200).size == (40, 30)


def test_fit_alpha_resizes_to_the_source_size() -> None:
    small = Image.new("L", (50, 25), 0)
    small.paste(255, (0, 0, 25, 25))
    big = fit_alpha(small, (200, 100))
    assert big.size == (200, 100) and big.mode == "L"
    assert big.getpixel((10, 50)) == 255 and big.getpixel((190, 50)) == 0
    assert fit_alpha(small, (50, 25)) is small


# --- compose --------------------------------------------------------------------------------

def _source(mode: str = "RGB", size: tuple[int, int] = (30, 20)) -> SourceImage:
    return SourceImage(image=img.noise_image(size, mode), icc_profile=None, format="PNG")


def _mask(size: tuple[int, int], box: tuple[int, int, int, int], inner: int = 255) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(inner, box)
    return mask


def test_opaque_pixels_keep_the_original_colour_exactly() -> None:
    src = _source()
    mask = _mask(src.image.size, (5, 5, 25, 15))
    mask.putpixel((6, 6), 100)
    out = compose(src, mask, OutputConfig())
    assert out.mode == "RGBA" and out.size == (30, 20)
    for (x, y) in ((5, 5), (24, 14), (6, 6), (0, 0)):
        want_alpha = mask.getpixel((x, y))
        assert out.getpixel((x, y)) == (*src.image.getpixel((x, y)), want_alpha)  # type: ignore[misc]
    assert out.getchannel("A").tobytes() == mask.tobytes()
    assert out.convert("RGB").tobytes() == src.image.tobytes()  # every colour is the original


def test_smaller_service_mask_is_fitted_to_the_source() -> None:
    src = _source(size=(60, 40))
    out = compose(src, _mask((30, 20), (0, 0, 15, 20)), OutputConfig())
    assert out.size == (60, 40)
    assert out.getpixel((5, 20))[3] == 255 and out.getpixel((55, 20))[3] == 0  # type: ignore[index]


def test_existing_alpha_is_min_of_input_and_mask() -> None:
    src = SourceImage(image=_rgba_with_alpha([0, 200, 255, 255, 90]), format="PNG")
    mask = Image.new("L", (5, 1))
    mask.putdata([255, 255, 255, 30, 100])
    out = compose(src, mask, OutputConfig())
    assert list(out.getchannel("A").tobytes()) == [0, 200, 255, 30, 90]
    out = compose(src, mask, OutputConfig(mask_only=True))
    assert list(out.tobytes()) == [0, 200, 255, 30, 90]


def test_mask_only() -> None:
    src = _source()
    mask = _mask(src.image.size, (1, 2, 3, 4), 77)
    out = compose(src, mask, OutputConfig(mask_only=True, background="red"))
    assert out.mode == "L" and out.tobytes() == mask.tobytes()
    out.putpixel((0, 0), 1)
    assert mask.getpixel((0, 0)) == 0  # a copy, not the caller's mask


def test_solid_background_flattens_to_rgb() -> None:
    src = _source()
    mask = _mask(src.image.size, (10, 0, 20, 20))
    mask.putpixel((0, 0), 128)
    out = compose(src, mask, OutputConfig(background="#00ff00"))
    assert out.mode == "RGB" and out.size == src.image.size
    assert out.getpixel((15, 10)) == src.image.getpixel((15, 10))
    assert out.getpixel((25, 10)) == (0, 255, 0)
    original = src.image.getpixel((0, 0))
    assert isinstance(original, tuple)
    expected = tuple(round((c * 128 + bg * 127) / 255)
                     for c, bg in zip(original, (0, 255, 0), strict=True))
    assert img.close(out.getpixel((0, 0)), expected, 1)


def test_crop_to_subject_with_margin_clamped() -> None:
    src = _source(size=(50, 40))
    mask = _mask((50, 40), (10, 12, 20, 30))
    out = compose(src, mask, OutputConfig(crop=True, crop_margin=3))
    assert out.size == (16, 24)
    assert out.tobytes() == compose(src, mask, OutputConfig()).crop((7, 9, 23, 33)).tobytes()
    clamped = compose(src, mask, OutputConfig(crop=True, crop_margin=100))
    assert clamped.size == (50, 40)
    edge = compose(src, _mask((50, 40), (0, 0, 5, 5)), OutputConfig(crop=True, crop_margin=2))
    assert edge.size == (7, 7)


def test_crop_with_background_and_mask_only() -> None:
    src = _source(size=(50, 40))
    mask = _mask((50, 40), (10, 12, 20, 30))
    out = compose(src, mask, OutputConfig(crop=True, background="white"))
    assert out.mode == "RGB" and out.size == (10, 18)
    assert out.tobytes() == src.image.crop((10, 12, 20, 30)).tobytes()
    assert compose(src, mask, OutputConfig(crop=True, mask_only=True)).size == (10, 18)


def test_crop_of_an_empty_mask_keeps_the_full_size() -> None:
    src = _source()
    out = compose(src, Image.new("L", (30, 20), 0), OutputConfig(crop=True, crop_margin=5))
    assert out.size == (30, 20) and out.getchannel("A").getextrema() == (0, 0)


def test_compose_does_not_modify_the_source() -> None:
    src = _source("RGBA")
    before = src.image.tobytes()
    compose(src, _mask((30, 20), (0, 0, 3, 3)), OutputConfig())
    compose(src, _mask((30, 20), (0, 0, 3, 3)), OutputConfig(crop=True))
    assert src.image.tobytes() == before


def test_source_from_raw() -> None:
    data = bytes(range(24))
    src = source_from_raw(3, 2, data, mode="RGBA")
    assert src.image.mode == "RGBA" and src.image.tobytes() == data and src.path is None
    grey = source_from_raw(2, 1, b"\x05\x06", mode="L")
    assert grey.image.mode == "RGB" and grey.image.tobytes() == b"\x05\x05\x05\x06\x06\x06"
    from bgremove.errors import InputError

    with pytest.raises(InputError, match="need 24 bytes, got 23"):
        source_from_raw(3, 2, data[:-1])
    with pytest.raises(InputError, match="mode"):
        source_from_raw(3, 2, data, mode="CMYK")


# --- parse_color ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, rgb", [
    ("#fff", (255, 255, 255)), ("#FF8000", (255, 128, 0)), ("white", (255, 255, 255)),
    ("rebeccapurple", (102, 51, 153)), ("255,255,255", (255, 255, 255)),
    (" 0, 128 ,255 ", (0, 128, 255)), ("rgb(1, 2, 3)", (1, 2, 3)),
])
def test_parse_color(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["", "#12", "nocolour", "256,0,0", "1,2", "-1,0,0",
                                  "#ff000080", "#f008"])
def test_parse_color_refuses_with_examples(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_color(text)
    assert "#ffffff" in str(info.value) and repr(text) in str(info.value)


# --- save_image -----------------------------------------------------------------------------

def test_extension_for() -> None:
    assert [extension_for(f) for f in ("png", "webp", "tiff")] == [".png", ".webp", ".tiff"]
    with pytest.raises(ValueError, match="png, webp, tiff"):
        extension_for("gif")


@pytest.mark.parametrize("fmt, pil_format", [("png", "PNG"), ("webp", "WEBP"), ("tiff", "TIFF")])
def test_save_is_lossless_and_keeps_the_icc_profile(tmp_path: Path, fmt: str,
                                                    pil_format: str) -> None:
    image = img.noise_image((21, 13), "RGBA")
    image.putalpha(255)
    dest = tmp_path / f"out{extension_for(fmt)}"
    save_image(image, dest, fmt=fmt, icc_profile=img.srgb_icc())
    with Image.open(dest) as saved:
        assert saved.format == pil_format
        assert saved.info.get("icc_profile") == img.srgb_icc()
        assert saved.convert("RGBA").tobytes() == image.tobytes()
        if fmt == "tiff":
            assert saved.info.get("compression") == "tiff_lzw"
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]


@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "L"])
@pytest.mark.parametrize("size", [(300, 217), (1, 5), (6, 1)])
def test_large_png_outputs_are_written_by_the_up_filter_writer_pixel_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
        size: tuple[int, int], parts: int) -> None:
    """The writer of photo-sized PNG outputs (here from 1 pixel on), in bands of 3 rows and
    IDAT chunks of 64 bytes, its rows compressed in one run or three at once: same pixels,
    profile and EXIF as Pillow's encoder writes."""
    monkeypatch.setattr(_save, "_FAST_PNG_PIXELS", 1)
    monkeypatch.setattr(_png, "_PARTS", parts)
    monkeypatch.setattr(_png, "_ENCODE_BYTES", 3 * size[0] * len(mode))
    monkeypatch.setattr(_png, "_IDAT_BYTES", 64)
    written: list[str] = []
    real = _png.write_png
    monkeypatch.setattr(_save, "write_png", lambda image, *a, **k: (
        written.append(image.mode), real(image, *a, **k))[1])
    image = img.noise_image(size, mode)
    icc = img.grey_icc() if mode in ("L", "LA") else img.srgb_icc()
    exif = img.exif_with(gps=False)
    exif[0x010F] = "Canon"
    dest = tmp_path / "out.png"
    save_image(image, dest, fmt="png", icc_profile=icc, exif=exif.tobytes())
    assert written == [mode]
    with Image.open(dest) as saved:
        assert saved.mode == mode and saved.size == size
        assert saved.tobytes() == image.tobytes()
        assert saved.info.get("icc_profile") == icc
        assert saved.getexif().get(0x010F) == "Canon"
    written_png = dest.read_bytes()
    assert _png.png_data_complete(written_png)  # one whole zlib stream, valid row filters
    parsed = _png.read_chunks(written_png)
    assert parsed is not None
    kinds = [chunk.kind for chunk in parsed[1]]
    assert kinds[:3] == [b"IHDR", b"iCCP", b"eXIf"] and kinds[-1] == b"IEND"
    if size[0] * size[1] > 10_000:
        assert kinds.count(b"IDAT") > 1


@pytest.mark.parametrize("deep", [False, True], ids=["8-bit", "16-bit"])
def test_a_tiff_keeps_the_exif_sub_ifd_and_its_pixels(tmp_path: Path, deep: bool) -> None:
    from PIL.TiffImagePlugin import IFDRational

    from bgremove.imaging._deep import DeepImage

    exif = Image.Exif()
    exif.update({0x010F: "Canon", 0x013B: "Ann Lens"})
    exif[0x8769] = {0x9003: "2026:11:29 09:59:58", 0x829A: IFDRational(1, 250), 0x8827: 400}
    image = img.noise_image((21, 13), "RGBA")
    saved_image: Image.Image | DeepImage = image
    if deep:
        saved_image = DeepImage("RGBA", [band.convert("I").point(lambda v: v * 257)
                                         for band in image.split()])
    dest = tmp_path / "out.tiff"
    save_image(saved_image, dest, fmt="tiff", icc_profile=img.srgb_icc(), exif=exif.tobytes())
    with Image.open(dest) as saved:
        kept = saved.getexif()
        assert kept.get(0x013B) == "Ann Lens"
        assert dict(kept.get_ifd(0x8769)) == {0x9003: "2026:11:29 09:59:58",
                                              0x829A: IFDRational(1, 250), 0x8827: 400}
        if not deep:
            assert saved.info.get("compression") == "tiff_lzw"
            assert saved.info.get("icc_profile") == img.srgb_icc()
            assert saved.tobytes() == image.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]


def test_rgb_profile_is_not_put_on_a_grey_mask(tmp_path: Path) -> None:
    mask = Image.new("L", (4, 4), 200)
    save_image(mask, tmp_path / "m.png", fmt="png", icc_profile=img.srgb_icc())
    with Image.open(tmp_path / "m.png") as saved:
        assert saved.mode == "L" and "icc_profile" not in saved.info
    save_image(mask, tmp_path / "g.png", fmt="png", icc_profile=img.grey_icc())
    with Image.open(tmp_path / "g.png") as saved:
        assert icc_colour_space(saved.info.get("icc_profile")) == "GRAY"


def test_mask_only_saves_in_every_format(tmp_path: Path) -> None:
    mask = Image.new("L", (5, 5), 0)
    mask.putpixel((2, 2), 255)
    for fmt in ("png", "webp", "tiff"):
        save_image(mask, tmp_path / f"m{extension_for(fmt)}", fmt=fmt, icc_profile=None)
        with Image.open(tmp_path / f"m{extension_for(fmt)}") as saved:
            assert saved.convert("L").tobytes() == mask.tobytes()


def test_save_creates_folders_and_replaces_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "new folder" / "ünï.png"
    save_image(Image.new("RGB", (2, 2), img.RED), dest, fmt="png", icc_profile=None)
    save_image(Image.new("RGB", (3, 3), img.BLUE), dest, fmt="png", icc_profile=None)
    with Image.open(dest) as saved:
        assert saved.size == (3, 3)
    assert [p.name for p in dest.parent.iterdir()] == ["ünï.png"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


class _FailingFile(io.RawIOBase):
    """Stands in for the temp file: accepts ``budget`` bytes, then fails like a full disk."""

    def __init__(self, real: Any, budget: int) -> None:
        self.real, self.budget = real, budget

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.budget < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(data)
        return int(self.real.write(data))

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()
        super().close()


def test_error_mid_save_leaves_no_temp_and_keeps_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"previous result")
    real_fdopen = os.fdopen
    written: list[int] = []

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        real = real_fdopen(fd, mode, *args, **kwargs)
        written.append(1)
        return _FailingFile(real, budget=5000)

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OutputError) as info:
        save_image(img.noise_image((200, 200)), dest, fmt="png", icc_profile=None)
    assert written, "the failing file was not used"
    message = str(info.value)
    assert str(dest) in message and "No space left" in message and "disk is full" in message
    assert dest.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_fsync_failure_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match="Input/output error"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "x.tiff", fmt="tiff", icc_profile=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ are Linux here")
def test_real_file_size_limit_mid_write(tmp_path: Path) -> None:
    """A real failing write (RLIMIT_FSIZE) in a child process: no partial or temp file."""
    dest = tmp_path / "big.png"
    dest.write_bytes(b"old")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        from bgremove.errors import OutputError
        from bgremove.imaging import save_image
        from tests.images import noise_image
        try:
            save_image(noise_image((300, 300)), {str(dest)!r}, fmt="png", icc_profile=None)
        except OutputError as exc:
            print(exc)
            sys.exit(3)
    """)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert str(dest) in done.stdout and "File too large" in done.stdout
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["big.png"]


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    if os.name == "posix" and os.geteuid() == 0:
        folder = Path("/sys/kernel")  # even root cannot create files here
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    dest = folder / "out.png"
    with pytest.raises(OutputError) as info:
        save_image(Image.new("RGB", (2, 2)), dest, fmt="png", icc_profile=None)
    assert str(dest) in str(info.value) and "permission" in str(info.value).lower()
    assert not dest.exists()


def test_output_folder_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    dest = blocker / "out.png"
    with pytest.raises(OutputError) as info:
        save_image(Image.new("RGB", (2, 2)), dest, fmt="png", icc_profile=None)
    assert str(dest) in str(info.value)
    assert blocker.read_text() == "a file"


def test_webp_size_limit_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="png or tiff"):
        save_image(Image.new("L", (16384, 1)), tmp_path / "w.webp", fmt="webp", icc_profile=None)
    assert list(tmp_path.iterdir()) == []


# --- the whole chain ------------------------------------------------------------------------

def test_load_compose_save_keeps_pixels_profile_and_orientation(tmp_path: Path) -> None:
    src_path = tmp_path / "in put.png"
    original = img.marker_image()
    original.save(src_path, exif=img.exif_with(6), icc_profile=img.srgb_icc())
    src = load_image(src_path, max_pixels=10**7)
    up = encode_for_upload(src.image, max_bytes=MB, max_side=8192)
    sent = decode(up.data)
    # A service that keeps the red block, returned at half size as an RGBA cut-out.
    keep = Image.new("L", sent.size, 0)
    keep.paste(255, (16, 0, 32, 16))
    result = sent.convert("RGBA")
    result.putalpha(keep)
    alpha = alpha_from_bytes(img.encoded(result.resize((16, 24)), "PNG"), max_pixels=ANY)
    out = compose(src, alpha, replace(OutputConfig(), crop=True))
    dest = tmp_path / f"out{extension_for('png')}"
    save_image(out, dest, fmt="png", icc_profile=src.icc_profile)
    with Image.open(dest) as saved:
        assert saved.info["icc_profile"] == img.srgb_icc()
        got = saved.convert("RGBA")
    # The upscaled mask blurs a few pixels past the block; the crop follows the mask.
    assert 16 <= got.width <= 24 and 16 <= got.height <= 24
    opaque = [px[:3] for px in img.pixels(got) if px[3] == 255]
    assert len(opaque) >= 12 * 12 and set(opaque) == {img.RED}


def test_emulator_keyout_is_predictable_pixel_for_pixel(tmp_path: Path) -> None:
    """Upload bytes -> the emulator's model -> result bytes -> compose, without a server.

    The upload is lossless, so the key-out computed on the original pixels predicts every
    output pixel; and no EXIF reaches the service, so it does not rotate the image again.
    """
    from bgremove.emulator.model import cutout_png, decode_image, keyout_alpha

    path = tmp_path / "shot.png"
    stored = img.marker_image()
    stored.save(path, exif=img.exif_with(8))
    src = load_image(path, max_pixels=10**7)
    assert src.image.size == (32, 48)
    up = encode_for_upload(src.image, max_bytes=MB, max_side=8192)
    seen = decode_image(up.data)
    assert seen.size == (32, 48) and seen.tobytes() == src.image.tobytes()
    alpha = alpha_from_bytes(cutout_png(seen, keyout_alpha(seen)), max_pixels=ANY)
    out = compose(src, alpha, OutputConfig())
    expected = src.image.convert("RGBA")
    expected.putalpha(keyout_alpha(src.image))
    assert out.tobytes() == expected.tobytes()
    # Upright, the grey corner is the key colour; the red and green blocks stay opaque.
    assert out.getpixel((0, 0)) == (*img.GREY, 0)
    assert out.getpixel((8, 40)) == (*img.RED, 255)
    assert out.getpixel((8, 24)) == (*img.GREEN, 255)


def test_background_under_an_input_that_was_half_transparent() -> None:
    src = SourceImage(image=_rgba_with_alpha([128, 255]), format="PNG")
    out = compose(src, Image.new("L", (2, 1), 255), OutputConfig(background="0,0,255"))
    assert out.getpixel((1, 0)) == (9, 9, 9)  # opaque: the original colour
    blend = round(9 * 128 / 255)  # alpha 128 of colour 9 over blue
    assert img.close(out.getpixel((0, 0)), (blend, blend, round((9 * 128 + 255 * 127) / 255)), 1)


def test_decode_image_turns_pillows_bomb_warning_into_its_value_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove.imaging import decode_image

    # Pillow's own limit as a process that never prepared an input has it (bgremove fetch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    header = img.make_png_header_only(tmp_path / "big.png", (10_000, 10_000)).read_bytes()
    with pytest.raises(ValueError, match="cannot decode the image"):
        decode_image(header, max_pixels=200_000_000)  # 100 MP: the warning, not the error


def test_decode_image_of_a_result_takes_png_or_webp_within_the_pixel_limit() -> None:
    from bgremove.imaging import decode_image

    png = img.encoded(Image.new("RGBA", (40, 30)), "PNG")
    assert decode_image(png, max_pixels=1200).size == (40, 30)
    with pytest.raises(ValueError, match="more than the 1,199 pixels"):
        decode_image(png, max_pixels=1199)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n"
    with pytest.raises(ValueError):
        decode_image(eps, max_pixels=ANY)
    jpeg = img.encoded(Image.new("RGB", (4, 4)), "JPEG")
    with pytest.raises(ValueError):
        decode_image(jpeg, max_pixels=ANY)  # our own uploads only, when asked for
    assert decode_image(jpeg, max_pixels=ANY, formats=("PNG", "JPEG")).size == (4, 4)
