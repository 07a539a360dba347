"""Shared pytest fixtures: a running WaveSpeed emulator, a Config pointed at it, test images.

    def test_something(emulator):               # a default emulator (no delay, no faults)
        config = configured(emulator)            # Config: backend wavespeed, base_url, api_key
    def test_other(emulator_factory):
        emu = emulator_factory(delay=0.3, concurrency_cap=2, faults=(Fault(...),))
    def test_pixels(keyed_image):
        image = keyed_image()                    # RGB, key-colour background, predictable alpha

``configured`` is also a fixture returning the same helper, for tests that prefer
injection. It sets short poll and retry intervals so tests stay fast; pass
overrides (``{"wavespeed.wait": "poll"}`` or ``wavespeed__wait="poll"``) to change any key.

Every test runs with the config environment cleared (``WAVESPEED_API_KEY``,
``WAVESPEED_BASE_URL``, ``BGREMOVE_CONFIG``, and ``XDG_CONFIG_HOME`` and ``XDG_STATE_HOME``
pointed at empty folders) so a developer's own key, config file or task log never leaks
into a test.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bgremove.config import Config
from bgremove.emulator import Emulator, EmulatorOptions

#: Config keys ``configured`` sets besides the backend and the emulator's URL and key.
FAST_TEST_SETTINGS: dict[str, Any] = {
    "wavespeed.poll.initial": 0.05,
    "wavespeed.poll.max": 0.2,
    "wavespeed.retry.backoff_initial": 0.01,
    "wavespeed.retry.backoff_max": 0.1,
    "wavespeed.reconcile.settle": 0.3,
}


def configured(emulator: Emulator, overrides: Mapping[str, Any] | None = None,
               **keys: Any) -> Config:
    """A Config that talks to ``emulator``: backend wavespeed, its base URL and key.

    ``overrides`` uses dotted keys; keyword arguments use ``__`` for the dots.
    """
    values: dict[str, Any] = {
        "backend": "wavespeed",
        "wavespeed.base_url": emulator.base_url,
        "wavespeed.api_key": emulator.api_key,
        **FAST_TEST_SETTINGS,
    }
    values.update(overrides or {})
    values.update({key.replace("__", "."): value for key, value in keys.items()})
    return Config().with_overrides(values)


@pytest.fixture(autouse=True)
def _isolated_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                         ) -> None:
    for name in ("WAVESPEED_API_KEY", "WAVESPEED_BASE_URL", "BGREMOVE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator with default options (accepts ``emulator.api_key``)."""
    with Emulator(EmulatorOptions()) as emu:
        yield emu


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """``emulator_factory(**options)`` -> a started Emulator, stopped at teardown."""
    started: list[Emulator] = []

    def make(options: EmulatorOptions | None = None, **fields: Any) -> Emulator:
        emu = Emulator(options, **fields).start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture(name="configured")
def configured_fixture() -> Callable[..., Config]:
    """The ``configured(emulator, overrides=None, **keys)`` helper, as a fixture."""
    return configured


def make_keyed_image(size: tuple[int, int] = (64, 48), key: tuple[int, int, int] = (0, 200, 0),
                     mode: str = "RGB") -> Any:
    """An image whose key-out alpha is known: key-colour background (pixel (0,0) included),
    a red block (opaque), a near-key block within the tolerance (transparent) and a block
    just outside it (opaque). ``mode="RGBA"`` adds a half-transparent vertical stripe
    across the red block."""
    from PIL import Image

    width, height = size
    image = Image.new("RGB", size, key)
    image.paste((220, 20, 20), (width // 4, height // 4, width // 2, height // 2))
    near = tuple(min(255, c + 20) for c in key)
    far = tuple(min(255, c + 40) if c < 200 else c - 40 for c in key)
    image.paste(near, (width // 2, height // 2, width * 3 // 4, height * 3 // 4))
    image.paste(far, (width * 3 // 4, 0, width, height // 4))
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = Image.new("L", size, 255)
        alpha.paste(128, (width * 3 // 8, 0, width * 5 // 8, height))
        image.putalpha(alpha)
    return image


@pytest.fixture
def keyed_image() -> Callable[..., Any]:
    """``keyed_image(size=(64, 48), key=(0, 200, 0), mode="RGB")`` -> PIL image."""
    return make_keyed_image


@pytest.fixture
def keyed_png(tmp_path: Path) -> Callable[..., Path]:
    """``keyed_png(name="subject.png", **keyed_image_args)`` -> a PNG file in tmp_path."""

    def write(name: str = "subject.png", **kwargs: Any) -> Path:
        path = tmp_path / name
        make_keyed_image(**kwargs).save(path)
        return path

    return write


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if threads it started are still alive (watcher tests use it)."""
    from tests.test_watch_support import check_threads

    before = set(threading.enumerate())
    yield
    check_threads(before)


@pytest.fixture(params=["native", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    """The hot-folder daemon's watching mode: native file events, then the polling observer."""
    return str(request.param)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write into, root included (root ignores mode bits, so as root
    the folder is made immutable with chattr, which ext4, xfs and btrfs support)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() != 0:
        yield folder
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i failed here: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
