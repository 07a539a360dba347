"""Is this cut-out made from that image? Used to find the task of a lost submit.

Both ways, because one way is not enough: a cut-out whose subject fits inside
another image of the same size (same background, a smaller shape) has opaque
pixels equal to that other image's too. So the sizes must be equal, the
opaque pixels (alpha 255) must carry the image's colours, and so must the
transparent ones (alpha 0) when the service kept their colour (a PNG cut-out
often does; a cut-out whose transparent pixels are all black, or all white,
did not keep it). Soft edges (0 < alpha < 255) are not compared: a service may
recolour them. A few differing pixels are forgiven (decoders round
differently); one in a hundred is not.

A cut-out smaller than the image (a model that answers below full size) is
compared the same way once both are reduced to one small common size by
averaging: whatever filter the service scaled with, block averages agree to a
few levels, while another photo's do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgremove.imaging._pillow import pillow_scope

if TYPE_CHECKING:
    from PIL import Image

#: A channel may differ by this much (decoders, colour conversion).
TOLERANCE = 3
#: The share of compared pixels allowed to differ by more.
MISMATCH_SHARE = 0.01
#: A scaled-down cut-out and its image are compared at this longest side, averaged.
COMPARED_SIDE = 96
#: ... where a channel may differ by this much (the service's own scaling filter), and
#: this share of blocks by more (edges move by a fraction of a pixel between filters).
SCALED_TOLERANCE = 8
SCALED_MISMATCH_SHARE = 0.05
#: A mismatch score this low is the image itself (rounding at most), not a near copy of it:
#: such a candidate wins over ones only within the allowance (a burst of near-identical
#: photos must not take each other's tasks).
EXACT_SCORE = 0.05


def cutout_matches(cutout: Image.Image, original: Image.Image) -> bool | None:
    """True when ``cutout`` is a cut-out of ``original``; None when it cannot be told
    (nothing opaque and no colour kept under the transparent pixels)."""
    score = cutout_mismatch(cutout, original)
    return None if score is None else score <= 1.0


def cutout_mismatch(cutout: Image.Image, original: Image.Image) -> float | None:
    """How far ``cutout`` is from a cut-out of ``original``: the share of compared pixels
    beyond the tolerance, in units of the share allowed (0: exact; at most 1: a match;
    ``inf``: another size or shape); None when it cannot be told."""
    from PIL import Image as PILImage
    from PIL import ImageChops

    rgba = cutout.convert("RGBA")
    rgb = original.convert("RGB")
    if rgba.size == rgb.size:
        return _mismatch(rgba, rgb, TOLERANCE)
    if not _scaled_down(rgba.size, rgb.size):
        return float("inf")
    cw, ch = rgba.size
    scale = min(1.0, COMPARED_SIDE / max(cw, ch))
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    box = PILImage.Resampling.BOX
    alpha = rgba.getchannel("A")
    # a block is opaque (or clear) only when every pixel in it is; the rest is an edge
    opaque = alpha.point(lambda v: 255 if v == 255 else 0).resize(size, box)
    touched = alpha.point(lambda v: 255 if v else 0).resize(size, box)
    colours = rgba.convert("RGB").resize(size, box)
    colours.putalpha(ImageChops.lighter(opaque.point(lambda v: 255 if v == 255 else 0),
                                        touched.point(lambda v: 128 if v else 0)))
    return _mismatch(colours, rgb.resize(size, box), SCALED_TOLERANCE, SCALED_MISMATCH_SHARE)


def _scaled_down(small: tuple[int, int], big: tuple[int, int]) -> bool:
    """Whether ``small`` is ``big`` scaled down by a model's cap: the longer side at most
    95 % of the image's (not a rounding), the shorter in proportion to within a pixel."""
    (sw, sh), (bw, bh) = small, big
    if bw >= bh:
        return sw <= 0.95 * bw and abs(sh - bh * sw / bw) <= 1
    return sh <= 0.95 * bh and abs(sw - bw * sh / bh) <= 1


def _mismatch(rgba: Image.Image, original: Image.Image, tolerance: int,
              share: float = MISMATCH_SHARE) -> float | None:
    """``cutout_mismatch`` for two images of one size."""
    from PIL import Image as PILImage
    from PIL import ImageChops

    alpha = rgba.getchannel("A")
    red, green, blue = ImageChops.difference(rgba.convert("RGB"), original).split()
    far = ImageChops.lighter(ImageChops.lighter(red, green), blue).point(
        lambda v: 255 if v > tolerance else 0)
    opaque = alpha.point(lambda v: 255 if v == 255 else 0)
    clear = alpha.point(lambda v: 255 if v == 0 else 0)
    n_opaque, n_clear = _count(opaque), _count(clear)
    scores = []
    if n_opaque:
        scores.append(_count(ImageChops.multiply(far, opaque)) / n_opaque / share)
    if n_clear:
        clear_score = _count(ImageChops.multiply(far, clear)) / n_clear / share
        colours = PILImage.new("RGB", rgba.size)
        colours.paste(rgba.convert("RGB"), mask=clear)
        # colours kept under the transparent pixels must be the image's; blanked ones
        # (all black or all white) say nothing, unless the image is that colour there too
        if not _blanked(colours, clear) or clear_score <= 1.0:
            scores.append(clear_score)
    return max(scores) if scores else None


def _count(mask: Image.Image) -> int:
    """Pixels at 255 in an "L" mask."""
    return int(mask.histogram()[255])


def _blanked(image: Image.Image, mask: Image.Image) -> bool:
    """Whether every pixel of ``image`` under ``mask`` is black, or every one white."""
    from PIL import ImageStat

    extrema = ImageStat.Stat(image, mask=mask).extrema
    return all(band == (0, 0) for band in extrema) or all(band == (255, 255) for band in extrema)


@pillow_scope()
def decode_image(data: bytes, *, max_pixels: int,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """An image file's pixels; ``ValueError`` when it does not decode.

    Only ``formats`` are tried (default: what the service may return, PNG and WebP: a
    result is untrusted), and only an image of at most ``max_pixels``, checked from its
    header before any pixel is decoded.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    from bgremove.imaging._pipeline import RESULT_FORMATS

    try:
        with Image.open(io.BytesIO(data), formats=formats or RESULT_FORMATS) as opened:
            if opened.width * opened.height > max_pixels:
                raise ValueError(f"cannot decode the image: {opened.width}x{opened.height} is "
                                 f"more than the {max_pixels:,} pixels allowed")
            opened.load()
            image: Image.Image = opened.copy()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # the warning is raised in pillow_scope
        raise ValueError(f"cannot decode the image: {exc}") from None
