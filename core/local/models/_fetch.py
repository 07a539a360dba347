"""Fetching a model: each source in turn, checked by size and sha256, one fetch at a time
per file; ``ensure_model`` fetches on first use with a progress line on a terminal."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from bgremove.errors import ModelError
from bgremove.files import atomic_writer, sha256_of
from bgremove.local.models._cache import (
    discard,
    model_path,
    restamp,
    verify_cached,
    write_stamp,
)
from bgremove.local.models._registry import ModelSpec, get_spec
from bgremove.local.models._sources import ByteProgress, FetchFailed, Source, default_sources

log = logging.getLogger(__name__)


_fetch_locks: dict[str, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _fetch_locks_guard:
        return _fetch_locks.setdefault(str(path), threading.Lock())


def fetch_model(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                sources: Sequence[Source] | None = None,
                progress: ByteProgress | None = None, force: bool = False) -> Path:
    """Download, verify and cache model ``name``; return its path.

    Each source is tried in turn; a download with the wrong size or sha256 is
    thrown away and the next source tried. Raises ModelError naming every
    failure when none worked.
    """
    return _fetch(get_spec(name), cache_dir, sources, progress, force=force, keep=False)[0]


def _fetch(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None,
           sources: Sequence[Source] | None, progress: ByteProgress | None, *, force: bool,
           keep: bool) -> tuple[Path, bytes | None]:
    """``fetch_model``, also giving the bytes it hashed when ``keep`` and it downloaded
    them (None when a verified file was there)."""
    path = model_path(spec, cache_dir)
    with _lock_for(path):
        if not force:
            cached = verify_cached(spec, cache_dir)
            if cached is not None:
                return cached, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot create the model folder {path.parent}: {exc}") from exc
        failures: list[str] = []
        for source in sources if sources is not None else default_sources():
            where = source.describe(spec)
            log.info("fetching model %s from %s", spec.name, where)
            try:
                data = _fetch_one(spec, source, path, progress, keep=keep)
            except FetchFailed as exc:
                log.info("model source failed: %s", exc)
                failures.append(str(exc))
                continue
            log.info("model %s saved to %s", spec.name, path)
            return path, data
        reasons = "; ".join(failures) or "no source configured"
        raise ModelError(
            f"the local model {spec.name} is not in {path.parent} and could not be "
            f"downloaded ({reasons})",
            hint=f"run `{spec.fetch_command}` while online",
        )


def _fetch_one(spec: ModelSpec, source: Source, path: Path,
               progress: ByteProgress | None, *, keep: bool) -> bytes | None:
    """Download into a temp file (our own, made with O_EXCL), check it and move it into
    place; with ``keep``, the bytes checked are read back from that file and returned."""
    # 0o644: the cache may be shared by users
    with atomic_writer(path, mode=0o644) as out:
        source.fetch(spec, out, progress)
        out.flush()
        size = os.fstat(out.fileno()).st_size
        if size != spec.size:
            raise FetchFailed(f"{source.describe(spec)} gave {size} bytes, expected {spec.size}")
        out.seek(0)
        data = out.read() if keep else None
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_of(out)
        if digest != spec.sha256:
            raise FetchFailed(f"{source.describe(spec)} gave a file with the wrong sha256")
    write_stamp(path, spec)
    return data


def ensure_model(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                 sources: Sequence[Source] | None = None,
                 progress: ByteProgress | None = None) -> Path:
    """The verified model file, fetched on first use."""
    spec = get_spec(name)
    cached = verify_cached(spec, cache_dir)
    if cached is not None:
        return cached
    return _fetch_on_first_use(spec, cache_dir, sources, progress, keep=False)[0]


def _fetch_on_first_use(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None,
                        sources: Sequence[Source] | None, progress: ByteProgress | None, *,
                        keep: bool) -> tuple[Path, bytes | None]:
    """``_fetch``, with a progress line on a terminal unless ``progress`` is given."""
    if progress is None:
        from bgremove.console import DownloadProgress

        bar = DownloadProgress(f"downloading {spec.name}")
        try:
            return _fetch(spec, cache_dir, sources, bar, force=False, keep=keep)
        finally:
            bar.finish()
    return _fetch(spec, cache_dir, sources, progress, force=False, keep=keep)


def load_verified(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                  sources: Sequence[Source] | None = None) -> bytes:
    """The model's bytes, fetched on first use, hashed once and checked against the pinned
    sha256.

    What the caller builds its session from is exactly what was hashed, whatever the
    stamp says: the cached file as read, or a download as read back from its own temp
    file. A cached file that does not match is removed and fetched again once.
    """
    spec = get_spec(name)
    path = model_path(spec, cache_dir)
    data = _read_cached(path, spec)
    if data is not None:
        if hashlib.sha256(data).hexdigest() == spec.sha256:
            restamp(path, spec)
            return data
        log.warning("cached model %s changed since it was verified (wrong sha256): "
                    "removing it and fetching it again", path)
        discard(path)
    path, data = _fetch_on_first_use(spec, cache_dir, sources, None, keep=True)
    if data is None:  # another thread or process fetched it meanwhile: read and check that
        data = _read_cached(path, spec)
        if data is None or hashlib.sha256(data).hexdigest() != spec.sha256:
            raise ModelError(f"model {spec.name}: the file fetched does not match its sha256",
                             hint=f"run `{spec.fetch_command}`")
    return data


def _read_cached(path: Path, spec: ModelSpec) -> bytes | None:
    """The cached file's bytes; None when it is missing or (then removed) of the wrong size."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == spec.size:
                return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read the model file {path}: {exc.strerror or exc}",
                         hint=f"run `{spec.fetch_command}`") from None
    log.warning("cached model %s has %d bytes, expected %d: removing it", path, size, spec.size)
    discard(path)
    return None

