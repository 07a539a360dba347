"""Build the quality benchmark's images with known alpha (needs scikit-image).

Subjects with exact alpha (drawn here, so every alpha value is known) are
composited onto public-domain photographs from
scikit-image's bundled data (``skimage.data``: astronaut, coffee, rocket,
motorcycle, brick, grass, gravel; all shipped inside the scikit-image wheel,
no download). The subjects:

- ``portrait``: the astronaut's head and shoulders in a feathered ellipse;
- ``horse``: the ``skimage.data.horse`` silhouette, supersampled so its edge
  is anti-aliased, filled with the cat fur of ``skimage.data.chelsea``;
- ``vase``: a shaded, specular lathe-profile object (a product shot);
- ``fuzzball``: a shaded ball with a few hundred thin, partly transparent
  strands (hair-like fine detail).

For each image it writes ``NAME.png`` (the composite, RGB), ``NAME.alpha.png``
(the true alpha) and ``NAME.fg.png`` (the true foreground colours), so both the
alpha and the foreground colour estimation can be scored.

Usage: python benchmarks/local_dataset.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (800, 600)
SS = 4  # supersampling for anti-aliased synthetic edges


def _data(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        return np.asarray(data.stereo_motorcycle()[0])
    return np.asarray(getattr(data, name)())


def background(name: str) -> Image.Image:
    arr = _data(name)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    img = Image.fromarray(arr[:, :, :3].astype(np.uint8))
    # cover SIZE, centre crop
    scale = max(SIZE[0] / img.width, SIZE[1] / img.height)
    img = img.resize((round(img.width * scale) + 1, round(img.height * scale) + 1),
                     Image.Resampling.LANCZOS)
    left, top = (img.width - SIZE[0]) // 2, (img.height - SIZE[1]) // 2
    return img.crop((left, top, left + SIZE[0], top + SIZE[1]))


def subject_portrait() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head and shoulders, cut out in an ellipse with a feathered edge."""
    photo = _data("astronaut")[20:380, 90:370].astype(np.float64) / 255.0
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.hypot((xx - w / 2) / (w * 0.45), (yy - h / 2) / (h * 0.47))  # 1 on the ellipse
    alpha = np.clip((1.0 - d) * 40 + 0.5, 0, 1)  # a soft edge about 5 px wide
    return photo, alpha


def subject_horse() -> tuple[np.ndarray, np.ndarray]:
    sil = ~_data("horse").astype(bool)  # True on the horse
    big = Image.fromarray((sil * 255).astype(np.uint8)).resize(
        (sil.shape[1] * SS, sil.shape[0] * SS), Image.Resampling.BICUBIC)
    big = big.filter(ImageFilter.GaussianBlur(SS)).point(lambda v: 255 if v > 127 else 0)
    alpha = np.asarray(big.resize((sil.shape[1], sil.shape[0]), Image.Resampling.BOX),
                       dtype=np.float64) / 255.0
    fur = Image.fromarray(_data("chelsea")).resize((sil.shape[1], sil.shape[0]),
                                                   Image.Resampling.LANCZOS)
    fg = np.asarray(fur, dtype=np.float64) / 255.0 * 0.8  # a darker coat
    return fg, alpha


def _shaded(mask_big: Image.Image, base: tuple[float, float, float],
            light: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    w, h = mask_big.width // SS, mask_big.height // SS
    alpha = np.asarray(mask_big.resize((w, h), Image.Resampling.BOX), dtype=np.float64) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = w * light[0], h * light[1]
    d = np.hypot(xx - cx, yy - cy) / max(w, h)
    shade = np.clip(1.15 - 1.3 * d, 0.25, 1.0)[:, :, None]
    spec = np.exp(-((d / 0.08) ** 2))[:, :, None]
    fg = np.clip(np.array(base)[None, None, :] * shade + 0.9 * spec, 0, 1)
    return fg, alpha


def subject_vase() -> tuple[np.ndarray, np.ndarray]:
    w, h = 260, 420
    big = Image.new("L", (w * SS, h * SS), 0)
    ys = np.linspace(0, 1, 200)
    radius = 0.22 + 0.2 * np.sin(np.pi * ys * 1.1) ** 2 + 0.05 * np.cos(ys * 9)
    left = [((0.5 - r) * w * SS, y * h * SS) for r, y in zip(radius, ys, strict=True)]
    right = [((0.5 + r) * w * SS, y * h * SS) for r, y in zip(radius[::-1], ys[::-1], strict=True)]
    ImageDraw.Draw(big).polygon(left + right, fill=255)
    return _shaded(big, (0.15, 0.35, 0.75), (0.35, 0.3))


def subject_fuzzball(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = h = 360
    big = Image.new("L", (w * SS, h * SS), 0)
    draw = ImageDraw.Draw(big)
    c = w * SS / 2
    r = w * SS * 0.3
    draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
    for _ in range(400):  # strands: one or two supersampled pixels wide = partial alpha
        ang = rng.uniform(0, 2 * np.pi)
        length = r * rng.uniform(0.15, 0.6)
        x0, y0 = c + r * 0.9 * np.cos(ang), c + r * 0.9 * np.sin(ang)
        bend = rng.uniform(-0.4, 0.4)
        pts = [(x0 + t * length * np.cos(ang + bend * t), y0 + t * length * np.sin(ang + bend * t))
               for t in np.linspace(0, 1, 8)]
        draw.line(pts, fill=255, width=int(rng.integers(1, 4)))
    return _shaded(big, (0.85, 0.55, 0.2), (0.4, 0.35))


SUBJECTS = {
    "portrait": subject_portrait,
    "horse": subject_horse,
    "vase": subject_vase,
    "fuzzball": subject_fuzzball,
}
BACKGROUNDS = ["astronaut", "coffee", "rocket", "motorcycle", "brick", "grass", "gravel"]


def composite(fg: np.ndarray, alpha: np.ndarray, bg: Image.Image, height_frac: float,
              centre: tuple[float, float]) -> tuple[Image.Image, Image.Image, Image.Image]:
    scale = SIZE[1] * height_frac / alpha.shape[0]
    size = (max(1, round(alpha.shape[1] * scale)), max(1, round(alpha.shape[0] * scale)))
    lanczos = Image.Resampling.LANCZOS
    fg_img = Image.fromarray((fg * 255 + 0.5).astype(np.uint8)).resize(size, lanczos)
    a_img = Image.fromarray((alpha * 255 + 0.5).astype(np.uint8)).resize(size, lanczos)
    full_a = Image.new("L", SIZE, 0)
    full_fg = bg.copy()  # foreground colour outside the subject is irrelevant (alpha 0)
    x = round(SIZE[0] * centre[0] - size[0] / 2)
    y = round(SIZE[1] * centre[1] - size[1] / 2)
    full_a.paste(a_img, (x, y))
    full_fg.paste(fg_img, (x, y))
    a = np.asarray(full_a, dtype=np.float64)[:, :, None] / 255.0
    img = a * np.asarray(full_fg, dtype=np.float64) + (1 - a) * np.asarray(bg, dtype=np.float64)
    return Image.fromarray((img + 0.5).astype(np.uint8)), full_a, full_fg


def build(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    names = []
    bgs = {b: background(b) for b in BACKGROUNDS}
    for i, (sname, make) in enumerate(SUBJECTS.items()):
        fg, alpha = make()
        others = [b for b in BACKGROUNDS if b != "astronaut" or sname != "portrait"]
        for j in range(4):  # four backgrounds per subject, rotating through the list
            bname = others[(i * 2 + j) % len(others)]
            img, a, f = composite(fg, alpha, bgs[bname], rng.uniform(0.6, 0.8),
                                  (rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.55)))
            name = f"{sname}-{bname}"
            img.save(out / f"{name}.png")
            a.save(out / f"{name}.alpha.png")
            f.save(out / f"{name}.fg.png")
            names.append(name)
    return names


if __name__ == "__main__":
    names = build(Path(sys.argv[1]))
    print(f"{len(names)} images in {sys.argv[1]}")
