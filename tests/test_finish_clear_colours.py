"""The finish's fast path with a service that zeroes the colours of its clear pixels.

Many services send 0,0,0 under alpha 0. Such a cut-out is still written as it came when
every pixel with alpha > 0 has the photo's colour and every one with alpha 0 is 0,0,0;
anything else (premultiplied colours where alpha is partial, one clear pixel with another
colour, one shown pixel off by one) is composed from the photo's own pixels. The emulator
plays such services (``output_colours``, ``bgremove emulator --output-colours``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageFilter

from bgremove.config import OutputConfig
from bgremove.contract import Result
from bgremove.emulator import Emulator, EmulatorOptions
from bgremove.emulator import service as service_module
from bgremove.emulator.model import cutout_png, keyout_alpha
from bgremove.errors import ConfigError
from bgremove.imaging import _finish, finish_file, prepare_file
from tests import images as img
from tests.cli_process import bgremove
from tests.test_emulator import api_client, served_cli
from tests.test_prepare_finish import (
    KEY,
    LIMITS,
    chunk_kinds,
    idat,
    oracle,
    save_jpeg,
    save_png,
    served,
)

SIZE = (96, 700)
BAND_ROWS = 64  # with ``small_bands``: 11 bands, the last one shorter


def scene(size: tuple[int, int] = SIZE) -> Image.Image:
    """The key colour with a textured bar down the middle: every band of rows has clear
    pixels (the key, not 0,0,0) and shown ones."""
    image = Image.new("RGB", size, KEY)
    bar = img.photo_like((size[0] // 3, size[1]))
    image.paste(bar, (size[0] // 3, 0))
    return image


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_finish, "_COMPARE_BYTES", 4 * SIZE[0] * BAND_ROWS)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The outcomes of the check for zeroed clear colours, in the order it ran."""
    seen: list[bool] = []
    real = _finish._shown_and_zeroed

    def noted(service: Image.Image, original: Image.Image) -> bool:
        seen.append(real(service, original))
        return seen[-1]

    monkeypatch.setattr(_finish, "_shown_and_zeroed", noted)
    return seen


def soft_alpha(image: Image.Image) -> Image.Image:
    """The key-out with blurred edges: partial alpha along every edge of the subject."""
    return keyout_alpha(image).filter(ImageFilter.GaussianBlur(2))


@pytest.fixture
def soft_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulators started from now on cut out with ``soft_alpha``."""
    monkeypatch.setattr(service_module, "load_model", lambda name: (soft_alpha, lambda: None))


def partly_clear(png: bytes) -> int:
    """How many pixels of ``png`` have an alpha neither 0 nor 255."""
    return sum(1 for a in decoded(png).getchannel("A").tobytes() if 0 < a < 255)


def decoded(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as opened:
        return opened.convert("RGBA")


def encoded(image: Image.Image) -> bytes:
    return img.encoded(image, "PNG")


def composed(src: Path, png: bytes) -> Image.Image:
    """What the compose path writes: the photo's colours everywhere, the service's alpha."""
    return oracle(src, decoded(png).getchannel("A"), 1)


def zeroed(image: Image.Image) -> Image.Image:
    """``image`` (RGBA) with the colours under alpha 0 made 0,0,0."""
    out = Image.new("RGBA", image.size)
    out.paste(image, None, image.getchannel("A").point([0] + [255] * 255, "1"))
    return out


def assert_kept(dst: Path, png: bytes) -> None:
    """The fast path was taken: the service's image data, byte for byte."""
    written = dst.read_bytes()
    assert idat(written) == idat(png)
    assert chunk_kinds(written)[:2] == [b"IHDR", b"iCCP"]


# --- the emulator's colours ----------------------------------------------------------------


@pytest.mark.parametrize(("colours", "want"), [
    ("input", [(10, 20, 30, 0), (200, 100, 50, 255), (255, 255, 255, 128), (7, 7, 7, 1)]),
    ("zero-clear", [(0, 0, 0, 0), (200, 100, 50, 255), (255, 255, 255, 128), (7, 7, 7, 1)]),
    ("premultiplied", [(0, 0, 0, 0), (200, 100, 50, 255), (128, 128, 128, 128), (0, 0, 0, 1)]),
])
def test_the_emulators_output_colours(colours: str, want: list[tuple[int, ...]]) -> None:
    image = Image.new("RGB", (4, 1))
    image.putdata([(10, 20, 30), (200, 100, 50), (255, 255, 255), (7, 7, 7)])
    alpha = Image.new("L", (4, 1))
    alpha.putdata([0, 255, 128, 1])
    assert img.pixels(decoded(cutout_png(image, alpha, 0, colours))) == want


def test_unknown_output_colours_are_refused() -> None:
    with pytest.raises(ConfigError, match="output_colours"):
        EmulatorOptions(output_colours="black")


# --- a service that zeroes clear colours: kept as it came --------------------------------


@pytest.mark.parametrize("apart", [False, True], ids=["in-turn", "decoded-apart"])
@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_zeroed_clear_colours_are_written_as_they_came(
        tmp_path: Path, emulator_factory: Callable[..., Emulator],
        monkeypatch: pytest.MonkeyPatch, checks: list[bool], kind: str, apart: bool) -> None:
    monkeypatch.setattr(_finish, "_DECODE_APART_BYTES", 0 if apart else 1 << 40)
    emu = emulator_factory(output_colours="zero-clear")
    src = (save_jpeg if kind == "jpg" else save_png)(tmp_path / f"photo.{kind}", 1)
    prepared = prepare_file(src, **LIMITS)
    result = served(emu, prepared)
    png = result.data or b""
    answer = decoded(png)
    alpha = answer.getchannel("A")
    assert alpha.getextrema() == (0, 255) and answer.size == prepared.size
    # The service zeroed what it made clear, where the photo has the key colour:
    want = composed(src, png)
    assert answer.tobytes() != want.tobytes() and answer.tobytes() == zeroed(want).tobytes()

    dst = tmp_path / "out.png"
    assert finish_file(prepared, result, src, dst, OutputConfig()) is None
    assert_kept(dst, png)
    assert checks == [True]  # the strict comparison failed, the zeroed rule held
    with Image.open(dst) as out:
        assert out.mode == "RGBA" and out.size == prepared.size
        assert out.tobytes() == zeroed(want).tobytes()  # pixel-exact: every shown pixel
        assert out.info.get("icc_profile") == img.srgb_icc()  # the photo's, clear ones 0


def test_the_strict_comparison_goes_first_and_alone_when_it_holds(
        tmp_path: Path, emulator: Emulator, checks: list[bool]) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    prepared = prepare_file(src, **LIMITS)
    result = served(emulator, prepared)  # the photo's colours everywhere
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    assert_kept(dst, result.data or b"")
    assert checks == []  # the rule for zeroed colours was never needed


@pytest.mark.parametrize("colours", ["input", "zero-clear"])
def test_partial_alpha_with_the_photos_colours_is_kept(
        tmp_path: Path, emulator_factory: Callable[..., Emulator], soft_model: None,
        small_bands: None, colours: str) -> None:
    emu = emulator_factory(output_colours=colours)
    src = save_png(tmp_path / "photo.png", 1, image=scene())
    prepared = prepare_file(src, **LIMITS)
    result = served(emu, prepared)
    png = result.data or b""
    assert partly_clear(png) >= 4 * SIZE[1]  # several on every row
    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    assert_kept(dst, png)


# --- anything else is composed from the photo's pixels -----------------------------------


def test_premultiplied_colours_take_the_compose_path(
        tmp_path: Path, emulator_factory: Callable[..., Emulator], soft_model: None,
        small_bands: None, checks: list[bool]) -> None:
    emu = emulator_factory(output_colours="premultiplied")
    src = save_png(tmp_path / "photo.png", 1, image=scene())
    prepared = prepare_file(src, **LIMITS)
    result = served(emu, prepared)
    png = result.data or b""
    assert partly_clear(png) >= 4 * SIZE[1]
    want = composed(src, png)
    answer = decoded(png)
    assert answer.getchannel("A").tobytes() == want.getchannel("A").tobytes()
    # Clear pixels are 0,0,0 and partial ones darker than the photo's: it shows otherwise.
    assert answer.tobytes() != zeroed(want).tobytes()

    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    assert idat(dst.read_bytes()) != idat(png)
    assert checks == [False]
    with Image.open(dst) as out:
        assert out.tobytes() == want.tobytes()  # the photo's colours, the service's alpha


def _zeroed_result(src: Path) -> tuple[Image.Image, Image.Image]:
    """(the photo, the cut-out a zeroing service makes of it), RGBA."""
    with Image.open(src) as opened:
        original = opened.convert("RGB")
    return original, decoded(cutout_png(original, keyout_alpha(original), 0, "zero-clear"))


def _spots(alpha: Image.Image, shown: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """The first and the last pixel (row by row) that are shown (alpha > 0) or clear."""
    width = alpha.size[0]
    found = [i for i, a in enumerate(alpha.tobytes()) if (a > 0) == shown]
    first, last = found[0], found[-1]
    return (first % width, first // width), (last % width, last // width)


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("shown", [False, True], ids=["clear-not-zero", "shown-off-by-one"])
def test_one_pixel_off_takes_the_compose_path(tmp_path: Path, small_bands: None,
                                              checks: list[bool], shown: bool,
                                              where: str) -> None:
    """One clear pixel that is not 0,0,0 (1 in blue), or one shown pixel off by one in
    blue, in the first band or the last one (shorter than the others)."""
    src = save_png(tmp_path / "photo.png", 1, image=scene())
    original, answer = _zeroed_result(src)
    alpha = answer.getchannel("A")
    first, last = _spots(alpha, shown)
    xy = first if where == "first" else last
    assert xy[1] // BAND_ROWS == (0 if where == "first" else (SIZE[1] - 1) // BAND_ROWS)
    r, g, b, a = answer.getpixel(xy)  # type: ignore[misc]
    assert (a > 0) == shown
    assert shown or (r, g, b) == (0, 0, 0)
    answer.putpixel(xy, (r, g, b ^ 1, a))
    png = encoded(answer)
    prepared = prepare_file(src, **LIMITS)
    result = Result("wavespeed", data=png, max_pixels=SIZE[0] * SIZE[1])

    dst = tmp_path / "out.png"
    finish_file(prepared, result, src, dst, OutputConfig())
    assert idat(dst.read_bytes()) != idat(png)
    assert checks == [False]
    want = original.convert("RGBA")
    want.putalpha(alpha)
    with Image.open(dst) as out:
        assert out.tobytes() == want.tobytes()  # the photo's colours, not the service's


def test_the_same_cut_out_untouched_is_kept(tmp_path: Path, small_bands: None,
                                            checks: list[bool]) -> None:
    """The control of the test above: zeroed and otherwise exact, over all bands."""
    src = save_png(tmp_path / "photo.png", 1, image=scene())
    _original, answer = _zeroed_result(src)
    png = encoded(answer)
    prepared = prepare_file(src, **LIMITS)
    dst = tmp_path / "out.png"
    finish_file(prepared, Result("wavespeed", data=png, max_pixels=SIZE[0] * SIZE[1]), src,
                dst, OutputConfig())
    assert_kept(dst, png)
    assert checks == [True]


# --- end to end: `bgremove emulator --output-colours` and `bgremove remove` ---------------


@pytest.fixture
def zeroing_service() -> Iterator[httpx.Client]:
    """``bgremove emulator --output-colours zero-clear`` in its own process, a client for it
    (key "k")."""
    with served_cli("--output-colours", "zero-clear") as client:
        yield client


def service_output(client: httpx.Client, task: str) -> bytes:
    """The PNG the service made for ``task``."""
    answer = client.get(f"/api/v3/predictions/{task}/result").json()["data"]
    return client.get(answer["outputs"][0]).content


def test_remove_writes_a_zeroing_services_png_as_it_came(tmp_path: Path,
                                                        zeroing_service: httpx.Client
                                                        ) -> None:
    src = save_jpeg(tmp_path / "photo.jpg", 1)
    env = {"WAVESPEED_API_KEY": "k",
           "WAVESPEED_BASE_URL": str(zeroing_service.base_url).rstrip("/")}
    done = bgremove(tmp_path, "remove", str(src), "--json", "-o", str(tmp_path / "out"),
                    env=env)
    assert done.returncode == 0, done.stderr
    png = service_output(zeroing_service, json.loads(done.stdout)["task_id"])
    dst = tmp_path / "out" / "photo.png"
    assert_kept(dst, png)
    want = composed(src, png)
    with Image.open(dst) as out:
        assert out.tobytes() == zeroed(want).tobytes()
        assert out.getpixel((0, 0)) == (0, 0, 0, 0)  # the key colour was zeroed


def test_remove_composes_a_premultiplied_cut_out(tmp_path: Path, soft_model: None,
                                                 emulator_factory: Callable[..., Emulator]
                                                 ) -> None:
    emu = emulator_factory(output_colours="premultiplied")
    src = save_png(tmp_path / "photo.png", 1, image=scene())
    done = bgremove(tmp_path, "remove", str(src), "--json", "-o", str(tmp_path / "out"),
                    emulator=emu)
    assert done.returncode == 0, done.stderr
    with api_client(emu) as client:
        png = service_output(client, json.loads(done.stdout)["task_id"])
    want = composed(src, png)
    assert decoded(png).tobytes() != want.tobytes()  # the service's colours are not the photo's
    with Image.open(tmp_path / "out" / "photo.png") as out:
        assert out.tobytes() == want.tobytes()
