"""Process-wide memory settings.

``limit_malloc_arenas()``: glibc gives threads that allocate at the same time malloc arenas
of their own (up to eight per core), and memory freed in one arena is not reused by another.
The daemon's threads take turns decoding and writing 24 MP photos (some 300 MB each), so each
arena keeps its own peak: with 48 photos in flight the daemon's peak RSS through the drain
measured 1254 MB, and 850 MB with two arenas (``benchmarks/bench_photos.py --only rss``).
Two arenas is what ``MALLOC_ARENA_MAX=2`` sets; a value the user set in the environment wins.

``reuse_image_blocks()`` (``bgremove remove`` run as its own process): Pillow keeps image
memory in blocks of 16 MB and by default gives each one back when its image goes. A
photo's finish makes and drops some 200 MB of images (the service's RGBA result, the
decoded photo), so every finish faulted all of those pages in again: 0.07 s of system
time per 24 MP photo. Pillow's cache of free blocks keeps up to ``IMAGE_BLOCKS`` of them
(256 MB) for the next image instead. Pillow's own images never need more memory for it (a
block is cached only when an image is freed, and taken before a new one is made), but
other memory (encoded bytes, zlib buffers) does not use the cache, so a process may hold
up to that much more at its peak and once its images are gone. So the daemon does not use
it (with 48 photos in flight it raised the peak through the drain from 828 MB to 948 MB),
nor does a library caller's process. ``PILLOW_BLOCKS_MAX`` set by the user wins.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameter for the most arenas (malloc.h)
_M_ARENA_MAX = -8
#: Free image blocks Pillow keeps for reuse (16 MB each: a 24 MP photo and its result).
IMAGE_BLOCKS = 16


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


def reuse_image_blocks(blocks: int = IMAGE_BLOCKS) -> bool:
    """Let Pillow keep up to ``blocks`` freed image blocks for reuse; whether it was set (not
    when ``PILLOW_BLOCKS_MAX`` is in the environment: Pillow applied that at import)."""
    if "PILLOW_BLOCKS_MAX" in os.environ:
        return False
    from PIL import _imaging

    _imaging.set_blocks_max(blocks)
    return True
