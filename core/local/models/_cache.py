"""The local cache of model files: where it is, the sha256 stamps, what is cached.

A ``NAME.onnx.verified`` stamp beside the file records the size, mtime and hash that
were checked, so ``models list`` and ``doctor`` do not re-hash 176 MB; a file whose size
or mtime no longer matches its stamp is hashed again, and a corrupt or partial file is
removed. The stamp can be forged, so it never decides what runs (``load_verified``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bgremove.files import atomic_write, sha256_file
from bgremove.local.models._registry import MODELS, ModelSpec, get_spec

log = logging.getLogger(__name__)

ENV_MODEL_DIR = "BGREMOVE_MODEL_DIR"
CHUNK = 1 << 20


def model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding model files: explicit, else $BGREMOVE_MODEL_DIR, else the user cache."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bgremove")) / "models"


def model_path(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return model_dir(cache_dir) / spec.filename


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_matches(path: Path, spec: ModelSpec, st: os.stat_result) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(stamp, dict) and stamp.get("sha256") == spec.sha256
                and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)


def write_stamp(path: Path, spec: ModelSpec) -> None:
    st = path.stat()
    data = json.dumps({"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    atomic_write(_stamp_path(path), data, mode=0o644)


def verify_cached(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the cached file if it is complete and has the right hash, else None.

    The full hash runs only when the stamp does not match the file's size and
    mtime. A file with the wrong size or hash is removed so it is fetched again.
    """
    path = model_path(spec, cache_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_size != spec.size:
        log.warning("cached model %s has %d bytes, expected %d: removing it",
                    path, st.st_size, spec.size)
        discard(path)
        return None
    if _stamp_matches(path, spec, st):
        return path
    if sha256_file(path) != spec.sha256:
        log.warning("cached model %s has the wrong sha256: removing it", path)
        discard(path)
        return None
    restamp(path, spec)
    return path


def restamp(path: Path, spec: ModelSpec) -> None:
    """Stamp ``path``, just hashed and found right, unless its stamp already matches."""
    try:
        if not _stamp_matches(path, spec, path.stat()):
            write_stamp(path, spec)
    except OSError as exc:  # a read-only cache still works, it is just hashed each time
        log.debug("cannot write the verification stamp for %s: %s", path, exc)


def discard(path: Path) -> None:
    for p in (path, _stamp_path(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", p, exc)


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    path: Path
    cached: bool


def model_status(cache_dir: str | os.PathLike[str] | None = None, *,
                 verify: bool = True) -> list[ModelStatus]:
    """Each known model with its path and whether a verified copy is cached."""
    out = []
    for spec in MODELS.values():
        path = model_path(spec, cache_dir)
        cached = verify_cached(spec, cache_dir) is not None if verify else path.is_file()
        out.append(ModelStatus(spec, path, cached))
    return out


def cached_model_path(name: str, config: object | None = None) -> Path | None:
    """The verified cached file of model ``name`` (for ``config.local.cache_dir``), or None.

    Never downloads; a corrupt cached file is removed and reported as missing.
    """
    local = getattr(config, "local", None)
    return verify_cached(get_spec(name), getattr(local, "cache_dir", None))
