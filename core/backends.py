"""Choosing and building the backend; the contract itself is in ``bgremove.contract``.

A backend turns an image into an alpha mask. It never decides how the result
is written: ``bgremove.imaging`` applies the mask to the original pixels, so every
opaque pixel of the output is the input's own colour at full resolution.

Backends:
    ``wavespeed``  the WaveSpeedAI API (``bgremove.wavespeed``)
    ``local``      an offline ONNX model (``bgremove.local``)
    ``auto``       wavespeed when an API key is configured, else local
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bgremove.choices import BACKENDS
from bgremove.errors import ConfigError, MissingExtraError, MissingKeyError

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend

log = logging.getLogger(__name__)



def resolve_backend_name(config: Config, name: str | None = None) -> str:
    """Return ``wavespeed`` or ``local`` for a requested name (default: the config's)."""
    wanted = name or config.backend
    if wanted not in BACKENDS:
        raise ConfigError(
            f"unknown backend {wanted!r}", hint=f"use one of {', '.join(BACKENDS)}"
        )
    if wanted == "auto":
        if config.wavespeed.api_key:
            return "wavespeed"
        return "local"
    return wanted


_auto_announced = False

#: What the offline backend imports (the ``[local]`` extra).
LOCAL_PACKAGES = ("numpy", "onnxruntime")


def missing_local_packages() -> list[str]:
    """The ``[local]`` extra's packages that are not installed (empty when all are)."""
    import importlib.util

    return [name for name in LOCAL_PACKAGES if importlib.util.find_spec(name) is None]


def check_local_installed() -> None:
    """MissingExtraError (exit 2, once) when the offline backend's packages are missing."""
    missing = missing_local_packages()
    if missing:
        raise MissingExtraError(f"the offline model needs {' and '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed",
                          hint="pip install 'bgremove[local]', or set WAVESPEED_API_KEY to use "
                          "the WaveSpeed API")


def make_backend(config: Config, name: str | None = None, *,
                 wait_mode: str | None = None) -> Backend:
    """Build the backend named ``name`` (default: the config's ``backend``).

    ``wait_mode`` overrides ``wavespeed.wait`` ("sync" or "poll"); the daemon
    asks for "poll" so it can journal the task id before waiting.
    """
    global _auto_announced
    resolved = resolve_backend_name(config, name)
    if resolved == "wavespeed":
        if not config.wavespeed.api_key:
            raise MissingKeyError()
        from bgremove.wavespeed import WaveSpeedBackend

        return WaveSpeedBackend(config, wait_mode=wait_mode)
    check_local_installed()
    if (name or config.backend) == "auto" and not _auto_announced:
        _auto_announced = True
        log.info("no WaveSpeed API key configured: using the local offline model")
    from bgremove.local import LocalBackend

    return LocalBackend(config)
