"""load_image: every input kind it must take, and every bad input it must refuse clearly."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from bgremove.errors import ImageTooLargeError, InputNotFoundError, UnreadableImageError
from bgremove.imaging import load_image
from bgremove.imaging._modes import icc_colour_space
from tests import images as img

MAX = 10_000_000


def load(path: Path, max_pixels: int = MAX) -> tuple[Image.Image, bytes | None, str | None]:
    src = load_image(path, max_pixels=max_pixels)
    assert src.image.mode in ("RGB", "RGBA")
    assert src.path == path
    return src.image, src.icc_profile, src.format


# --- formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, suffix, writer", [
    ("PNG", ".png", lambda im, p: im.save(p, "PNG")),
    ("WEBP", ".webp", lambda im, p: img.make_webp(p, im)),
    ("TIFF", ".tif", lambda im, p: img.make_tiff(p, im)),
    ("BMP", ".bmp", lambda im, p: img.make_bmp(p, im)),
])
def test_lossless_formats_load_pixel_exact(tmp_path: Path, fmt: str, suffix: str,
                                           writer: object) -> None:
    original = img.noise_image((23, 17))
    path = tmp_path / f"in{suffix}"
    writer(original, path)  # type: ignore[operator]
    image, icc, got_fmt = load(path)
    assert got_fmt == fmt
    assert image.mode == "RGB" and image.tobytes() == original.tobytes()
    assert icc is None


def test_jpeg_loads_close_to_the_original(tmp_path: Path) -> None:
    original = Image.new("RGB", (32, 32), (200, 60, 30))
    original.save(tmp_path / "a.jpg", "JPEG", quality=95)
    image, _, fmt = load(tmp_path / "a.jpg")
    assert fmt == "JPEG" and image.size == (32, 32)
    assert img.close(image.getpixel((16, 16)), (200, 60, 30), 3)


def test_webp_with_alpha_keeps_alpha(tmp_path: Path) -> None:
    original = img.noise_image((9, 7), "RGBA")
    image, _, _ = load(img.make_webp(tmp_path / "a.webp", original))
    assert image.mode == "RGBA"
    # Lossless WebP may change the colour of fully transparent pixels; compare the rest.
    for got, want in zip(img.pixels(image), img.pixels(original), strict=True):
        assert got[3] == want[3]
        if want[3]:
            assert got == want


def test_gif_uses_the_first_frame(tmp_path: Path) -> None:
    image, _, fmt = load(img.make_animated_gif(tmp_path / "anim.gif"))
    assert fmt == "GIF" and image.size == (4, 2)
    assert set(img.pixels(image)) == {img.RED}


def test_gif_transparency_becomes_alpha(tmp_path: Path) -> None:
    image, _, _ = load(img.make_gif_with_transparency(tmp_path / "t.gif"))
    assert image.mode == "RGBA"
    assert img.pixels(image)[0][3] == 0 and img.pixels(image)[1] == (*img.RED, 255)


# --- colour modes ---------------------------------------------------------------------------

def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    image, _, _ = load(img.make_palette_png_with_transparency(tmp_path / "p.png"))
    assert image.mode == "RGBA"
    assert img.pixels(image) == [(0, 0, 0, 0), (*img.RED, 255), (*img.GREEN, 255),
                                 (*img.BLUE, 255)]


def test_palette_without_transparency_becomes_rgb(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([*img.RED, *img.BLUE])
    im.putdata([1, 0])
    im.save(tmp_path / "p.png")
    image, _, _ = load(tmp_path / "p.png")
    assert image.mode == "RGB" and img.pixels(image) == [img.BLUE, img.RED]


def test_la_becomes_rgba(tmp_path: Path) -> None:
    image, _, _ = load(img.make_la_png(tmp_path / "la.png"))
    assert img.pixels(image) == [(0, 0, 0, 0), (100, 100, 100, 128), (255, 255, 255, 255)]


def test_rgba_is_kept_exactly(tmp_path: Path) -> None:
    image, _, _ = load(img.make_rgba_png(tmp_path / "rgba.png"))
    assert img.pixels(image) == list(img.RGBA_PIXELS)


def test_fully_opaque_alpha_is_dropped(tmp_path: Path) -> None:
    Image.new("RGBA", (3, 2), (1, 2, 3, 255)).save(tmp_path / "o.png")
    image, _, _ = load(tmp_path / "o.png")
    assert image.mode == "RGB" and set(img.pixels(image)) == {(1, 2, 3)}


def test_grey_and_one_bit(tmp_path: Path) -> None:
    Image.new("L", (2, 1), 77).save(tmp_path / "l.png")
    image, _, _ = load(tmp_path / "l.png")
    assert img.pixels(image) == [(77, 77, 77)] * 2
    image, _, _ = load(img.make_1bit_png(tmp_path / "one.png"))
    assert img.pixels(image) == [(0, 0, 0), (255, 255, 255)] * 2


@pytest.mark.parametrize("builder", [
    img.make_png16_grey,
    img.make_tiff16_grey,
    lambda p: img.make_tiff16_grey(p, big_endian=True),
    img.make_int32_tiff,
], ids=["png-I;16", "tiff-I;16", "tiff-I;16B", "tiff-I"])
def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path, builder: object) -> None:
    image, _, _ = load(builder(tmp_path / "g16.img"))  # type: ignore[operator]
    assert [p[0] for p in img.pixels(image)] == list(img.GREY16_EXPECTED)


@pytest.mark.parametrize("builder", [img.make_png48, img.make_tiff48], ids=["png", "tiff"])
def test_48bit_rgb_is_scaled(tmp_path: Path, builder: object) -> None:
    image, _, _ = load(builder(tmp_path / "rgb48.img"))  # type: ignore[operator]
    assert image.mode == "RGB" and img.pixels(image) == list(img.RGB48_EXPECTED)


def test_64bit_rgba_png(tmp_path: Path) -> None:
    image, _, _ = load(img.make_png48(tmp_path / "rgba64.png", alpha=32768))
    assert img.pixels(image) == [(*px, 128) for px in img.RGB48_EXPECTED]


def test_float_image(tmp_path: Path) -> None:
    image, _, _ = load(img.make_float_tiff(tmp_path / "f.tif"))
    assert [p[0] for p in img.pixels(image)] == [0, 128, 255]


def test_cmyk_with_profile_is_converted_through_it(tmp_path: Path) -> None:
    image, icc, fmt = load(img.make_cmyk_tiff(tmp_path / "c.tif"))
    assert fmt == "TIFF" and image.mode == "RGB"
    cyan, white = image.getpixel((0, 0)), image.getpixel((31, 0))
    assert img.close(cyan, img.PRINT_CYAN, 6)
    assert white == (255, 255, 255)
    # The profile kept describes the RGB pixels we hold, not the CMYK file.
    assert icc is not None and icc_colour_space(icc) == "RGB"
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.profile_description == \
        "sRGB built-in"


def test_cmyk_jpeg_with_profile(tmp_path: Path) -> None:
    image, icc, _ = load(img.make_cmyk_jpeg(tmp_path / "c.jpg"))
    cyan = image.getpixel((4, 8))
    assert img.close(cyan, img.PRINT_CYAN, 8)
    assert icc_colour_space(icc) == "RGB"


def test_cmyk_without_profile_uses_the_plain_formula(tmp_path: Path) -> None:
    image, icc, _ = load(img.make_cmyk_jpeg(tmp_path / "c.jpg", icc=False))
    cyan = image.getpixel((4, 8))
    assert img.close(cyan, (0, 255, 255), 4)
    assert icc is None


def test_grey_with_grey_profile_gets_srgb(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 200).save(tmp_path / "g.png", icc_profile=img.grey_icc())
    image, icc, _ = load(tmp_path / "g.png")
    assert icc_colour_space(icc) == "RGB" and image.mode == "RGB"
    r, g, b = image.getpixel((0, 0))  # type: ignore[misc]
    assert r == g == b and abs(r - 200) <= 3  # gamma 2.2 is close to sRGB


def test_rgb_icc_profile_is_kept_byte_for_byte(tmp_path: Path) -> None:
    path = img.make_jpeg_with_gps_and_icc(tmp_path / "gps.jpg")
    _, icc, _ = load(path)
    assert icc == img.srgb_icc()


def test_mismatched_profile_is_dropped(tmp_path: Path) -> None:
    img.noise_image((4, 4)).save(tmp_path / "x.png", icc_profile=img.cmyk_icc())
    _, icc, _ = load(tmp_path / "x.png")
    assert icc is None


def test_loaded_image_carries_no_file_metadata(tmp_path: Path) -> None:
    image, _, _ = load(img.make_jpeg_with_gps_and_icc(tmp_path / "gps.jpg"))
    assert image.info == {}


# --- orientation ----------------------------------------------------------------------------

# Where the stored top-left red block and the green block beside it must appear once the
# image is shown upright, per the EXIF specification's meaning of each value (stored 48x32,
# blocks of 16): (upright size, red block's top-left, green block's top-left).
UPRIGHT = {
    1: ((48, 32), (0, 0), (16, 0)),
    2: ((48, 32), (32, 0), (16, 0)),   # mirrored left-right
    3: ((48, 32), (32, 16), (16, 16)),  # rotated 180
    4: ((48, 32), (0, 16), (16, 16)),  # mirrored top-bottom
    5: ((32, 48), (0, 0), (0, 16)),    # mirrored along the main diagonal
    6: ((32, 48), (16, 0), (16, 16)),  # needs 90° clockwise
    7: ((32, 48), (16, 32), (16, 16)),  # mirrored along the other diagonal
    8: ((32, 48), (0, 32), (0, 16)),   # needs 90° counter-clockwise
}


def _block_colour(image: Image.Image, corner: tuple[int, int]) -> tuple[int, ...]:
    return image.getpixel((corner[0] + 8, corner[1] + 8))  # type: ignore[return-value]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_is_applied_pixel_exact(tmp_path: Path, orientation: int) -> None:
    image, _, _ = load(img.make_png_with_exif_orientation(tmp_path / "o.png", orientation))
    size, red, green = UPRIGHT[orientation]
    expected = Image.new("RGB", size, img.GREY)
    expected.paste(img.RED, (*red, red[0] + 16, red[1] + 16))
    expected.paste(img.GREEN, (*green, green[0] + 16, green[1] + 16))
    assert image.size == size
    assert image.tobytes() == expected.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    image, _, _ = load(img.make_jpeg_with_exif_orientation(tmp_path / "o.jpg", orientation))
    size, red, green = UPRIGHT[orientation]
    assert image.size == size
    for corner, want in ((red, img.RED), (green, img.GREEN)):
        got = _block_colour(image, corner)
        assert img.close(got, want, 8), (corner, got, want)


def test_invalid_orientation_value_is_ignored(tmp_path: Path) -> None:
    img.marker_image().save(tmp_path / "o.png", exif=img.exif_with(9))
    image, _, _ = load(tmp_path / "o.png")
    assert image.tobytes() == img.marker_image().tobytes()


# --- refused inputs -------------------------------------------------------------------------

def _refused(path: Path, error: type[Exception], *words: str, max_pixels: int = MAX) -> str:
    with pytest.raises(error) as info:
        load_image(path, max_pixels=max_pixels)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "nope.jpg", InputNotFoundError, "no such file")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    _refused(tmp_path / "dir.jpg", InputNotFoundError, "folder")


def test_zero_byte_file(tmp_path: Path) -> None:
    _refused(img.make_zero_byte(tmp_path / "empty.png"), UnreadableImageError, "empty")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    _refused(img.make_text_as_jpg(tmp_path / "notes.jpg"), UnreadableImageError,
             "not an image", "JPEG, PNG, WebP, TIFF, BMP, GIF")


def test_other_format_is_named(tmp_path: Path) -> None:
    _refused(img.make_unsupported(tmp_path / "old.pcx"), UnreadableImageError,
             "PCX images are not accepted", "accepted formats")


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "TIFF", "WEBP", "GIF", "BMP"])
def test_truncated_file_is_caught_at_load(tmp_path: Path, kind: str) -> None:
    _refused(img.make_truncated(tmp_path / f"cut.{kind.lower()}", kind), UnreadableImageError)


def test_decompression_bomb_over_pillows_hard_limit(tmp_path: Path) -> None:
    path = img.make_decompression_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    _refused(path, ImageTooLargeError, "decompression bomb")


def test_bomb_warning_range_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between Pillow's limit and twice it Pillow only warns; it must still be refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = img.make_png_header_only(tmp_path / "warn.png", (40, 40))
    _refused(path, ImageTooLargeError, "decompression bomb", max_pixels=1000)


def test_pillow_limit_follows_max_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A limit above Pillow's own must not be cut short by Pillow.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    img.noise_image((40, 40)).save(tmp_path / "ok.png")
    image, _, _ = load(tmp_path / "ok.png", max_pixels=1600)
    assert image.size == (40, 40)


def test_over_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = img.make_png_header_only(tmp_path / "big.png", (5000, 4000))
    message = _refused(path, ImageTooLargeError, "5000x4000", "input.max_pixels",
                       max_pixels=1_000_000)
    assert "20,000,000 pixels" in message


@pytest.mark.parametrize("name", ["ünïcødé 写真.jpg", "with spaces.png", "-dash.webp"])
def test_unicode_and_spaces_in_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix]
    Image.new("RGB", (5, 3), img.BLUE).save(path, fmt)
    image, _, _ = load(path)
    assert image.size == (5, 3)
    bad = tmp_path / f"bad {name}"
    bad.write_bytes(b"garbage")
    _refused(bad, UnreadableImageError)
