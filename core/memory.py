"""Process-wide memory setting for the long-running daemon.

``limit_malloc_arenas()``: glibc gives threads that allocate at the same time malloc arenas
of their own (up to eight per core), and memory freed in one arena is not reused by another.
The daemon's threads take turns decoding and writing 24 MP photos (some 300 MB each), so each
arena keeps its own peak: with 48 photos in flight the daemon's peak RSS through the drain
measured 1254 MB, and 850 MB with two arenas (``benchmarks/bench_photos.py --only rss``).
Two arenas is what ``MALLOC_ARENA_MAX=2`` sets; a value the user set in the environment wins.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameter for the most arenas (malloc.h)
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc's malloc use at most ``arenas`` arenas from now on; whether it was set (not on
    other systems or C libraries, nor when ``MALLOC_ARENA_MAX`` is in the environment)."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
