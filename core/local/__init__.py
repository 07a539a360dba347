"""The ``local`` backend: U-2-Net models run offline with onnxruntime and numpy.

    LocalBackend     the Backend (``bgremove.backends``) for ``backend: local``
    models           the model registry, fetching, verification and cache
    inference        onnxruntime sessions, pre- and post-processing
    refine           edge refinement and foreground colour estimation
"""

from __future__ import annotations

from bgremove.local.backend import LocalBackend

__all__ = ["LocalBackend"]
