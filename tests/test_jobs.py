"""The shared job: one file through a backend into an atomic output."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bgremove.config import Config
from bgremove.contract import Cutout, JobHooks
from bgremove.stages import remove_file


class HalfAlphaBackend:
    """A backend whose mask is 128 on the left half and 255 on the right, at half size."""

    name = "fake"

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        w, h = image.width // 2, image.height // 2
        alpha = Image.new("L", (w, h), 255)
        alpha.paste(128, (0, 0, w // 2, h))
        return Cutout(alpha=alpha, backend=self.name, task_id="t-1")

    def close(self) -> None:
        pass


def _source(path: Path) -> Path:
    # A red subject over a green background: soft pixels carry a green cast.
    image = Image.new("RGB", (64, 32), (120, 160, 40))
    image.save(path)
    return path


@pytest.mark.parametrize("foreground", [False, True])
def test_mask_is_scaled_to_full_size_and_foreground_only_touches_soft_pixels(
        tmp_path: Path, foreground: bool) -> None:
    src = _source(tmp_path / "in.png")
    config = Config().with_overrides({"output.foreground": foreground})
    result = remove_file(src, tmp_path / "out.png", HalfAlphaBackend(), config)
    assert result.status == "ok" and result.task_id == "t-1"
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (64, 32)
        assert out.getpixel((60, 16)) == (120, 160, 40, 255)  # opaque: the original colour
        assert out.getpixel((4, 16))[3] == 128


def test_progress_reaches_the_end_and_cancel_stops_before_writing(tmp_path: Path) -> None:
    from bgremove.contract import CancelToken
    from bgremove.errors import CancelledError

    src = _source(tmp_path / "in.png")
    stages: list[str] = []
    remove_file(src, tmp_path / "a.png", HalfAlphaBackend(), Config(),
                JobHooks(progress=lambda stage, f: stages.append(stage)))
    assert stages[0] == "prepare" and stages[-1] == "compose"
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        remove_file(src, tmp_path / "b.png", HalfAlphaBackend(), Config(), JobHooks(cancel=token))
    assert not (tmp_path / "b.png").exists()


class EdgeBackend:
    """Background on the left, a soft edge (alpha 128) in the middle, the subject on the right."""

    name = "fake"

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        alpha = Image.new("L", image.size, 0)
        alpha.paste(128, (16, 0, 32, image.height))
        alpha.paste(255, (32, 0, image.width, image.height))
        return Cutout(alpha=alpha, backend=self.name)

    def close(self) -> None:
        pass


def test_foreground_estimation_removes_the_background_cast_from_soft_edges(
        tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 32), (0, 200, 0))  # green background
    image.paste((200, 0, 0), (32, 0, 64, 32))  # red subject
    image.paste((100, 100, 0), (16, 0, 32, 32))  # the edge: half red, half green
    src = tmp_path / "edge.png"
    image.save(src)
    plain = remove_file(src, tmp_path / "plain.png", EdgeBackend(), Config())
    fixed = remove_file(src, tmp_path / "fixed.png", EdgeBackend(),
                        Config().with_overrides({"output.foreground": True}))
    with Image.open(plain.output) as a, Image.open(fixed.output) as b:  # type: ignore[arg-type]
        assert a.getpixel((24, 16)) == (100, 100, 0, 128)
        r, g, _, alpha = b.getpixel((24, 16))
        assert alpha == 128 and r > 150 and g < 50  # the edge is red now, not olive
        assert b.getpixel((48, 16)) == (200, 0, 0, 255)  # opaque pixels untouched


def test_a_model_made_mask_is_made_from_the_upright_photo(tmp_path: Path) -> None:
    # stored 60x20 and turned a quarter (EXIF orientation 6): upright it is 20x60
    seen: list[tuple[int, int]] = []

    class TopHalfBackend:
        """Keeps the top half of what it is shown: right only if it is shown the photo
        upright (a model is trained on upright photos)."""

        name = "fake"

        def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
            seen.append(image.size)
            alpha = Image.new("L", image.size, 0)
            alpha.paste(255, (0, 0, image.width, image.height // 2))
            return Cutout(alpha=alpha, backend=self.name)

        def close(self) -> None:
            pass

    src = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 20), (120, 160, 40)).save(src, exif=exif.tobytes(), quality=95)
    remove_file(src, tmp_path / "out.png", TopHalfBackend(), Config())
    assert seen == [(20, 60)]
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (20, 60)
        assert out.getpixel((10, 5))[3] == 255 and out.getpixel((10, 55))[3] == 0
