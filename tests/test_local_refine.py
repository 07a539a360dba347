"""Edge refinement (guided filter) and foreground colour estimation, on known answers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgremove.imaging import estimate_foreground
from bgremove.imaging._foreground import box_mean, estimate_foreground_array
from bgremove.local.refine import guided_filter, refine_mask


def naive_box_mean(a: np.ndarray, r: int) -> np.ndarray:
    out = np.empty_like(a)
    h, w = a.shape[:2]
    for y in range(h):
        for x in range(w):
            out[y, x] = a[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean(axis=(0, 1))
    return out


@pytest.mark.parametrize("shape", [(9, 13), (7, 5, 3)])
def test_box_mean_matches_a_naive_window_mean(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(0).random(shape)
    for r in (0, 1, 3, 20):
        np.testing.assert_allclose(box_mean(a, r), naive_box_mean(a, r), atol=1e-12)


def step_scene(w: int = 120, h: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a sharp vertical edge at x=50, its true mask, and a blurred coarse mask."""
    x = np.arange(w)
    truth = np.tile((x < 50).astype(np.float64), (h, 1))
    image = np.where(truth[:, :, None] > 0, [0.1, 0.2, 0.1], [0.9, 0.8, 0.85])
    coarse = np.tile(np.clip((56 - x) / 12, 0, 1), (h, 1))  # edge smeared over x=44..56
    return image, truth, coarse


@pytest.mark.parametrize("grey", [False, True])
def test_guided_filter_moves_a_blurred_edge_onto_the_image_edge(grey: bool) -> None:
    image, truth, coarse = step_scene()
    guide = image.mean(axis=2) if grey else image
    refined = guided_filter(guide, coarse, radius=10, eps=1e-4)
    # the smeared ramp becomes a sharp jump exactly where the image's edge is
    steps = np.abs(np.diff(refined[0]))
    assert int(np.argmax(steps)) == 49 and steps.max() > 0.5 > np.abs(np.diff(coarse[0])).max()
    assert ((refined - truth) ** 2).mean() < 0.5 * ((coarse - truth) ** 2).mean()


def test_refine_mask_returns_an_l_image_of_the_working_size() -> None:
    image, truth, coarse = step_scene(240, 160)
    img = Image.fromarray((image * 255).astype(np.uint8))
    small = Image.fromarray((coarse * 255).astype(np.uint8)).resize((60, 40))
    out = refine_mask(img, small, size=(120, 80))
    assert out.mode == "L" and out.size == (120, 80)
    target = truth[::2, ::2]
    before = np.asarray(small.resize((120, 80), Image.Resampling.BILINEAR)) / 255.0
    assert ((np.asarray(out) / 255.0 - target) ** 2).mean() < ((before - target) ** 2).mean()


def soft_scene(w: int, h: int) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """Red foreground over a blue-green background with a wide soft band; true F is red."""
    x = np.arange(w, dtype=np.float64)
    a = np.tile(np.clip((w * 0.6 - x) / 40, 0, 1), (h, 1))
    fg = np.array([0.85, 0.15, 0.1])
    bg = np.array([0.1, 0.4, 0.9])
    img = a[:, :, None] * fg + (1 - a[:, :, None]) * bg
    image = Image.fromarray((img * 255 + 0.5).astype(np.uint8))
    alpha = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    return image, alpha, fg * 255


def test_foreground_estimation_removes_the_old_background_colour() -> None:
    image, alpha, fg = soft_scene(300, 120)
    out = estimate_foreground(image, alpha)
    a = np.asarray(alpha)
    soft = (a > 25) & (a < 230)
    before = np.abs(np.asarray(image, dtype=np.float64)[soft] - fg).mean()
    after = np.abs(np.asarray(out, dtype=np.float64)[soft] - fg).mean()
    assert before > 40 and after < 0.3 * before
    solid = (a == 0) | (a == 255)  # opaque and transparent pixels are untouched
    assert np.array_equal(np.asarray(out)[solid], np.asarray(image)[solid])


def test_foreground_tiles_match_the_whole_image_and_work_in_place() -> None:
    image, alpha, _ = soft_scene(1300, 700)  # several 512px tiles; the band crosses tile edges
    whole = estimate_foreground_array(np.asarray(image, dtype=np.float64) / 255.0,
                                      np.asarray(alpha, dtype=np.float64) / 255.0)
    expected = np.clip(whole * 255 + 0.5, 0, 255).astype(np.uint8)
    a = np.asarray(alpha)
    soft = (a > 0) & (a < 255)
    rgba = image.convert("RGBA")
    result = estimate_foreground(rgba, alpha, inplace=True)
    assert result is rgba and result.mode == "RGBA"
    got = np.asarray(result)
    assert np.abs(got[..., :3][soft].astype(int) - expected[soft].astype(int)).max() <= 1
    assert (got[..., 3] == 255).all()


def test_foreground_needs_matching_sizes() -> None:
    with pytest.raises(ValueError, match="alpha is"):
        estimate_foreground(Image.new("RGB", (10, 10)), Image.new("L", (5, 5)))


def test_foreground_without_numpy_is_a_config_error_naming_the_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bgremove.errors import ConfigError

    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` fail
    monkeypatch.delitem(sys.modules, "bgremove.imaging._foreground", raising=False)
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ConfigError, match=r"needs numpy.*bgremove\[local\]"):
        estimate_foreground(image, Image.new("L", (4, 4), 128))
