"""Foreground colour estimation on soft edges, for any backend's mask (``output.foreground``).

``estimate_foreground`` ("blur fusion", Forte and Pitié, "Approximate Fast
Foreground Colour Estimation", ICIP 2021): a pixel on a soft edge is a mix
``I = aF + (1-a)B``; the local means of foreground and background colours
are estimated with two box blurs and ``F`` is solved for, so a
semi-transparent hair stops carrying the old background's colour. It works
in tiles with a halo, touches only tiles that hold semi-transparent pixels and
changes only those pixels, so its memory stays bounded on huge images.

Needs numpy (the ``local`` extra); ``bgremove.imaging.estimate_foreground`` loads
this module on first use. Box means from cumulative sums are O(pixels) whatever
the radius; the local backend's guided filter uses them too.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

F64Array = npt.NDArray[np.float64]


def _box_sum_axis(a: F64Array, r: int, axis: int) -> tuple[F64Array, F64Array]:
    """Sums over [i-r, i+r] (clipped) along ``axis``, and how many values each sum has."""
    n = a.shape[axis]
    shape = list(a.shape)
    shape[axis] = 1
    c = np.concatenate([np.zeros(shape, dtype=a.dtype), np.cumsum(a, axis=axis)], axis=axis)
    idx = np.arange(n)
    hi = np.minimum(idx + r + 1, n)
    lo = np.maximum(idx - r, 0)
    return np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis), (hi - lo).astype(a.dtype)


def box_mean(a: F64Array, r: int) -> F64Array:
    """Mean over a (2r+1)x(2r+1) window, windows clipped at the borders (axes 0 and 1)."""
    s, ny = _box_sum_axis(a, r, 0)
    s, nx = _box_sum_axis(s, r, 1)
    count = np.multiply.outer(ny, nx)
    if a.ndim == 3:
        count = count[:, :, np.newaxis]
    return s / count


_R1, _R2 = 45, 3  # box radii of the two blur-fusion passes (windows of 91 and 7 pixels)
_TILE = 512


def _blur_fusion(image: F64Array, fg: F64Array, bg: F64Array, alpha: F64Array,
                 r: int) -> tuple[F64Array, F64Array]:
    a3 = alpha[:, :, np.newaxis]
    blurred_a = box_mean(alpha, r)[:, :, np.newaxis]
    blurred_f = box_mean(fg * a3, r) / (blurred_a + 1e-5)
    blurred_b = box_mean(bg * (1.0 - a3), r) / ((1.0 - blurred_a) + 1e-5)
    f = blurred_f + a3 * (image - a3 * blurred_f - (1.0 - a3) * blurred_b)
    return np.clip(f, 0.0, 1.0), blurred_b


def estimate_foreground_array(image: F64Array, alpha: F64Array) -> F64Array:
    """Foreground colours (HxWx3, 0..1) of ``image`` under ``alpha`` (HxW, 0..1)."""
    f1, b1 = _blur_fusion(image, image, image, alpha, _R1)
    return _blur_fusion(image, f1, b1, alpha, _R2)[0]


def estimate_foreground(image: Image.Image, alpha: Image.Image, *,
                        inplace: bool = False) -> Image.Image:
    """``image`` with the colour of each semi-transparent pixel replaced by its foreground colour.

    ``alpha`` is an "L" mask of the image's size. Opaque and fully transparent
    pixels keep their values (so the output's opaque pixels are still the
    original's). With ``inplace`` the image is changed tile by tile and no
    second full-size copy is made.
    """
    if alpha.size != image.size:
        raise ValueError(f"alpha is {alpha.size}, image is {image.size}")
    out = image if inplace else image.copy()
    a_full = np.asarray(alpha)
    soft_rows = np.flatnonzero(((a_full > 0) & (a_full < 255)).any(axis=1))
    if soft_rows.size == 0:
        return out
    halo = _R1 + _R2 + 1
    w, h = image.size
    # Tiles read a halo of their neighbours, so nothing is pasted until every tile is done;
    # the patches cover only tiles with soft pixels (the edge band), 8-bit.
    patches: list[tuple[tuple[int, int], Image.Image]] = []
    for y0 in range(int(soft_rows[0]) // _TILE * _TILE, int(soft_rows[-1]) + 1, _TILE):
        y1 = min(y0 + _TILE, h)
        band = a_full[y0:y1]
        soft = (band > 0) & (band < 255)
        if not soft.any():
            continue
        cols = np.flatnonzero(soft.any(axis=0))
        for x0 in range(int(cols[0]) // _TILE * _TILE, int(cols[-1]) + 1, _TILE):
            x1 = min(x0 + _TILE, w)
            if not soft[:, x0:x1].any():
                continue
            patches.append(((x0, y0), _foreground_tile(out, a_full, (x0, y0, x1, y1), halo)))
    for where, patch in patches:
        out.paste(patch, where)
    return out


def _foreground_tile(out: Image.Image, a_full: npt.NDArray[np.uint8],
                     box: tuple[int, int, int, int], halo: int) -> Image.Image:
    x0, y0, x1, y1 = box
    w, h = out.size
    ex0, ey0, ex1, ey1 = max(0, x0 - halo), max(0, y0 - halo), min(w, x1 + halo), min(h, y1 + halo)
    region = out.crop((ex0, ey0, ex1, ey1))
    has_alpha = region.mode == "RGBA"
    rgb_u8 = np.asarray(region.convert("RGB") if region.mode != "RGB" else region)
    alpha = a_full[ey0:ey1, ex0:ex1].astype(np.float64) / 255.0
    fg = estimate_foreground_array(rgb_u8.astype(np.float64) / 255.0, alpha)
    cy0, cx0 = y0 - ey0, x0 - ex0
    core_a = a_full[y0:y1, x0:x1]
    soft = (core_a > 0) & (core_a < 255)
    new = rgb_u8[cy0:cy0 + (y1 - y0), cx0:cx0 + (x1 - x0)].copy()
    fg_u8 = np.clip(fg[cy0:cy0 + (y1 - y0), cx0:cx0 + (x1 - x0)] * 255.0 + 0.5, 0, 255)
    new[soft] = fg_u8[soft].astype(np.uint8)
    patch = Image.fromarray(new)
    if has_alpha:
        patch.putalpha(out.crop(box).getchannel("A"))
    return patch
