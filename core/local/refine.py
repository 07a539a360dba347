"""Edge refinement of a coarse mask (the local backend's ``local.refine``).

``guided_filter`` (He, Sun and Tang, "Guided Image Filtering", 2010/2013):
the mask is locally re-fitted as a linear function of the image, so its edges
move onto the image's own edges. U-2-Net sees 320x320, so its mask upscaled
to a 24-megapixel photo is blurred by a factor of ~19; filtering it at a
mid resolution (``local.refine_size``) with the image as guide puts the edge
back where the pixels say it is. Foreground colour estimation, which applies to
any backend, is in the image pipeline (``bgremove.imaging._foreground``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bgremove.imaging._foreground import F64Array, box_mean


def guided_filter(guide: F64Array, mask: F64Array, radius: int, eps: float) -> F64Array:
    """Filter ``mask`` (HxW, 0..1) guided by ``guide`` (HxWx3 colour or HxW grey, 0..1)."""
    if guide.ndim == 2:
        mean_i = box_mean(guide, radius)
        mean_p = box_mean(mask, radius)
        cov_ip = box_mean(guide * mask, radius) - mean_i * mean_p
        var_i = box_mean(guide * guide, radius) - mean_i * mean_i
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        out: F64Array = box_mean(a, radius) * guide + box_mean(b, radius)
        return out
    # Colour guide: a is a 3-vector per pixel, solved from the 3x3 covariance.
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(mask, radius)
    cov_ip = box_mean(guide * mask[:, :, np.newaxis], radius) - mean_i * mean_p[:, :, np.newaxis]
    sigma = np.empty((*guide.shape[:2], 3, 3), dtype=np.float64)
    for i in range(3):
        for j in range(i, 3):
            v = (box_mean(guide[:, :, i] * guide[:, :, j], radius)
                 - mean_i[:, :, i] * mean_i[:, :, j])
            sigma[:, :, i, j] = v
            sigma[:, :, j, i] = v
    sigma += eps * np.eye(3)
    a_vec = np.asarray(np.linalg.solve(sigma, cov_ip[:, :, :, np.newaxis])[:, :, :, 0],
                       dtype=np.float64)
    del sigma
    b = mean_p - (a_vec * mean_i).sum(axis=2)
    out = (box_mean(a_vec, radius) * guide).sum(axis=2) + box_mean(b, radius)
    return out


def refine_mask(image: Image.Image, mask: Image.Image, *, size: tuple[int, int],
                radius: int | None = None, eps: float = 1e-4) -> Image.Image:
    """Refine a coarse "L" mask at ``size`` using ``image`` (any size) as the guide.

    Returns an "L" image of ``size``. The radius defaults to about 1/80 of the
    working size's longer side (the width of the blur the 320px model leaves).
    """
    from bgremove.local.inference import flatten_rgb, shrink

    guide_img = flatten_rgb(shrink(image, size)) if image.size != size else flatten_rgb(image)
    guide = np.asarray(guide_img, dtype=np.float64) / 255.0
    coarse = np.asarray(mask.resize(size, Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    r = radius if radius is not None else max(2, round(max(size) / 80))
    refined = guided_filter(guide, coarse, r, eps)
    return Image.fromarray(np.clip(refined * 255.0 + 0.5, 0, 255).astype(np.uint8))
