"""``LocalBackend``: cut-outs from an offline U-2-Net model.

The alpha it returns has the image's own size. The model sees 320x320; its
mask is upsampled once, from the small mask (or from the refined mid-size
mask with ``local.refine``) straight to the full size, so the only
full-resolution array this backend makes is the 8-bit result itself; the
pipeline's ``fit_alpha`` then has nothing left to do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bgremove.contract import Cutout, JobHooks

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.config import Config
    from bgremove.local.inference import ModelSession
    from bgremove.local.models import Source

log = logging.getLogger(__name__)


def working_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` scaled down so its longer side is at most ``longest``."""
    w, h = size
    scale = min(1.0, longest / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


class LocalBackend:
    """The ``local`` backend (see the module docstring)."""

    name = "local"

    def __init__(self, config: Config, *, sources: Sequence[Source] | None = None) -> None:
        from bgremove.local.models import get_spec

        self._local = config.local
        self.spec = get_spec(config.local.model)
        self._sources = sources
        self._session: ModelSession | None = None
        self._lock = threading.Lock()

    def prepare(self) -> ModelSession:
        """Fetch (first use) and load the model; later calls return the same session."""
        with self._lock:
            if self._session is None:
                from bgremove.local.inference import get_session
                from bgremove.local.models import load_verified, model_path

                # load_verified fetches the file on first use and hashes it once.
                path = model_path(self.spec, self._local.cache_dir)
                self._session = get_session(path, threads=self._local.threads, read=lambda: (
                    load_verified(self.spec.name, self._local.cache_dir, sources=self._sources)))
            return self._session

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        from PIL import Image, ImageChops

        from bgremove.local.inference import mask_to_image, predict

        hooks = hooks or JobHooks()
        session = self.prepare()
        hooks.check_cancel()
        hooks.report("inference", 0.1)
        small = mask_to_image(predict(session, image))
        hooks.report("inference", 0.7)
        hooks.check_cancel()
        if self._local.refine:
            from bgremove.local.refine import refine_mask

            mid = refine_mask(image, small, size=working_size(image.size, self._local.refine_size))
            alpha = mid if mid.size == image.size else mid.resize(
                image.size, Image.Resampling.BICUBIC)
        else:
            alpha = small.resize(image.size, Image.Resampling.LANCZOS)
        if image.mode == "RGBA":  # what was transparent in the input stays transparent
            alpha = ImageChops.darker(alpha, image.getchannel("A"))
        hooks.report("inference", 0.9)
        return Cutout(alpha=alpha, backend=self.name)

    def close(self) -> None:
        """Nothing to release: the session is shared by the process (``clear_sessions``)."""
