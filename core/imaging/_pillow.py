"""Pillow's warnings during bgremove's own image work, and only there.

Pillow reports what it skips in a damaged file (an EXIF entry past the end of its block, a
palette transparency it cannot keep) as a Python warning: raw text on stderr a user can do
nothing with, where bgremove says what matters in one line of its own (``_meta.kept_exif``).
Its decompression-bomb warning must stop the decode instead. A warnings filter would do
that for the whole process, a library user's own use of Pillow included, and
``warnings.catch_warnings`` swaps the process's one list of filters, so it would also
silence (or be undone by) any other thread meanwhile.

So Pillow's modules reach ``warnings`` through a stand-in (``_PillowWarnings``, put in
place once per module). On a thread inside ``pillow_scope`` a Pillow warning is
bgremove's: a bomb raises, anything else goes to the debug log. On any other thread, and
outside the scope, it goes on to ``warnings.warn`` as Pillow sent it (same category, same
place in Pillow's code), so the caller's filters, registry and stderr see what they always
did.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

_local = threading.local()  # .depth: how many pillow_scope blocks this thread is in
_install_lock = threading.Lock()
_seen_modules = 0  # len(sys.modules) when Pillow's modules were last looked at


class _PillowWarnings:
    """Stands in for the ``warnings`` module inside Pillow's modules (see above)."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def warn(self, message: Any, category: type[Warning] | None = None, stacklevel: int = 1,
             source: Any = None, **kwargs: Any) -> None:
        if not getattr(_local, "depth", 0):
            # one frame more than Pillow's own call: the warning names Pillow's line
            self._real.warn(message, category, stacklevel + 1, source, **kwargs)
            return
        from PIL import Image

        kind = type(message) if isinstance(message, Warning) else category or UserWarning
        if issubclass(kind, Image.DecompressionBombWarning):
            raise message if isinstance(message, Warning) else kind(message)
        log.debug("Pillow: %s", message)


def install_pillow_warnings() -> None:
    """Give every Pillow module loaded so far the stand-in (Pillow loads format plugins as
    it needs them, so this runs again whenever more modules are loaded)."""
    global _seen_modules
    if len(sys.modules) == _seen_modules:
        return
    with _install_lock:
        for name, module in list(sys.modules.items()):
            if (name == "PIL" or name.startswith("PIL.")) \
                    and getattr(module, "warnings", None) is warnings:
                module.warnings = _PillowWarnings(warnings)  # type: ignore[attr-defined]
        _seen_modules = len(sys.modules)


@contextlib.contextmanager
def pillow_scope() -> Iterator[None]:
    """Pillow's warnings on this thread are bgremove's until the block ends (see above).
    Also a decorator; blocks nest."""
    install_pillow_warnings()
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
