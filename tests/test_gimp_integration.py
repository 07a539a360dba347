"""The plug-in in a real GIMP 3.0 (headless, in a Debian trixie root), against the emulator.

One GIMP run builds an image with a background layer and a smaller, offset
layer holding a key-colour backdrop, a subject and a half-transparent stripe,
then runs python-fu-remove-background non-interactively on the small layer in
each output mode, with a wrong key, and on a layer group. The host checks
pixel by pixel that only that layer changed, that its new alpha is exactly the
emulator's key-out of its own pixels at its full size and offsets, and that
failures return an error status with a clear message and leave the image as it was.

Needs root and the Debian mirror the first time (scripts/gimp-root.sh builds and
caches the root, about a minute); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgremove.emulator import Emulator, EmulatorOptions, keyout_alpha

pytestmark = [pytest.mark.gimp, pytest.mark.timeout(1500)]

sys.path.insert(0, str(Path(__file__).parent / "gimp_batch"))
import harness  # noqa: E402  (tests/gimp_batch is not a package)

CANVAS = (320, 240)
SMALL = {"name": "subject", "width": 150, "height": 100, "x": 57, "y": 83}
RIGHT_KEY = "emulator-right-key-7f3a"
CONFIG = "wavespeed:\n  api_key: {key}\n  retry:\n    max_attempts: 2\n    backoff_initial: 0.01\n"


def background_pixels() -> bytes:
    from PIL import Image

    image = Image.new("RGBA", CANVAS, (30, 60, 200, 255))
    image.paste((250, 250, 10, 255), (0, 0, CANVAS[0] // 2, CANVAS[1]))
    return image.tobytes()


def subject_pixels() -> bytes:
    from PIL import Image

    size = (SMALL["width"], SMALL["height"])
    image = Image.new("RGBA", size, (0, 200, 0, 255))  # key colour at (0, 0)
    image.paste((220, 20, 20, 255), (30, 20, 90, 70))  # subject: opaque
    image.paste((10, 215, 12, 255), (95, 20, 120, 70))  # near the key: transparent
    image.paste((120, 10, 200, 128), (50, 0, 70, 100))  # half-transparent stripe
    return image.tobytes()


@pytest.fixture(scope="module")
def gimp_root() -> Path:
    try:
        root = harness.ensure_root()
    except harness.RootUnavailable as exc:
        pytest.skip(str(exc))
    harness.prepare_root(root)
    return root


@pytest.fixture(scope="module")
def gimp_run(gimp_root: Path) -> Iterator[Any]:
    config_path = "/tmp/bgremove-gimp-test-config.yaml"
    cases = [
        {"name": mode, "layer": SMALL["name"], "output": mode,
         "config": CONFIG.format(key=RIGHT_KEY)}
        for mode in ("mask", "layer", "alpha")
    ]
    cases.append({"name": "wrong_key", "layer": SMALL["name"], "output": "mask",
                  "config": CONFIG.format(key="not-the-right-key")})
    cases.append({"name": "group", "layer": "a group", "output": "mask",
                  "config": CONFIG.format(key=RIGHT_KEY)})
    params = {
        "canvas": list(CANVAS), "group": True, "config_path": config_path, "cases": cases,
        "layers": [
            {"name": "background", "width": CANVAS[0], "height": CANVAS[1], "x": 0, "y": 0,
             "pixels": "background.rgba"},
            {**SMALL, "pixels": "subject.rgba"},
        ],
    }
    files = {"background.rgba": background_pixels(), "subject.rgba": subject_pixels()}
    with Emulator(EmulatorOptions(api_key=RIGHT_KEY)) as emu:
        run = harness.run_batch(gimp_root, "run_procedure.py", params, files,
                                {"WAVESPEED_BASE_URL": emu.base_url,
                                 "BGREMOVE_CONFIG": config_path})
        stats = emu.stats()
    try:
        assert run.returncode == 0 and run.results is not None, run.stderr[-3000:]
        run.stats = stats  # type: ignore[attr-defined]
        yield run
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
        (gimp_root / config_path.lstrip("/")).unlink(missing_ok=True)


def layers_of(run: Any, case: str) -> list[dict[str, Any]]:
    return list(run.results["cases"][case]["layers"] if case != "before"
                else run.results["before"])


def by_name(layers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [layer for layer in layers if layer["name"] == name]
    assert len(found) == 1, [layer["name"] for layer in layers]
    return found[0]


def rgba(run: Any, layer: dict[str, Any]) -> Any:
    from PIL import Image

    return Image.frombytes("RGBA", (layer["width"], layer["height"]), run.read(layer["pixels"]))


def expected_alpha(run: Any) -> bytes:
    before = rgba(run, by_name(layers_of(run, "before"), SMALL["name"]))
    return bytes(keyout_alpha(before).tobytes())


def assert_untouched(run: Any, case: str, *, except_name: str | None = None) -> None:
    """Every layer but ``except_name`` is exactly as before (pixels, size, offsets, no mask)."""
    after = {layer["name"]: layer for layer in layers_of(run, case)}
    for layer in layers_of(run, "before"):
        if layer["name"] == except_name:
            continue
        now = after[layer["name"]]
        for key in ("width", "height", "offsets", "has_alpha"):
            assert now[key] == layer[key], (case, layer["name"], key)
        assert "mask" not in now
        if "pixels" in layer:
            assert run.read(now["pixels"]) == run.read(layer["pixels"]), (case, layer["name"])


def test_the_fixture_image_is_what_the_test_thinks(gimp_run: Any) -> None:
    before = layers_of(gimp_run, "before")
    subject = by_name(before, SMALL["name"])
    assert (subject["width"], subject["height"]) == (SMALL["width"], SMALL["height"])
    assert subject["offsets"] == [SMALL["x"], SMALL["y"]]
    assert gimp_run.read(subject["pixels"]) == subject_pixels()
    alpha = expected_alpha(gimp_run)
    assert 0 in alpha and 255 in alpha and 128 in alpha  # all three kinds of pixel present


def test_mask_mode_adds_the_key_out_as_a_layer_mask(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["mask"]
    assert result["status"] == "success", result["message"]
    subject = by_name(result["layers"], SMALL["name"])
    assert subject["offsets"] == [SMALL["x"], SMALL["y"]]
    assert (subject["width"], subject["height"]) == (SMALL["width"], SMALL["height"])
    assert gimp_run.read(subject["mask"]) == expected_alpha(gimp_run)
    assert gimp_run.read(subject["pixels"]) == subject_pixels()  # non-destructive
    assert len(result["layers"]) == len(layers_of(gimp_run, "before"))
    assert_untouched(gimp_run, "mask", except_name=SMALL["name"])


def test_layer_mode_adds_a_cut_out_copy_above_with_the_same_offsets(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["layer"]
    assert result["status"] == "success", result["message"]
    names = [layer["name"] for layer in result["layers"]]
    new_name = f"{SMALL['name']} (background removed)"
    assert names.index(new_name) == names.index(SMALL["name"]) - 1  # directly above
    new = by_name(result["layers"], new_name)
    assert new["offsets"] == [SMALL["x"], SMALL["y"]]
    assert (new["width"], new["height"]) == (SMALL["width"], SMALL["height"])
    image = rgba(gimp_run, new)
    original = rgba(gimp_run, by_name(layers_of(gimp_run, "before"), SMALL["name"]))
    assert image.getchannel("A").tobytes() == expected_alpha(gimp_run)
    assert image.convert("RGB").tobytes() == original.convert("RGB").tobytes()
    assert_untouched(gimp_run, "layer")  # the original layer included


def test_alpha_mode_rewrites_the_layers_own_alpha(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["alpha"]
    assert result["status"] == "success", result["message"]
    subject = by_name(result["layers"], SMALL["name"])
    assert "mask" not in subject
    assert subject["offsets"] == [SMALL["x"], SMALL["y"]]
    image = rgba(gimp_run, subject)
    original = rgba(gimp_run, by_name(layers_of(gimp_run, "before"), SMALL["name"]))
    assert image.getchannel("A").tobytes() == expected_alpha(gimp_run)
    assert image.convert("RGB").tobytes() == original.convert("RGB").tobytes()
    assert_untouched(gimp_run, "alpha", except_name=SMALL["name"])


def test_a_wrong_key_returns_an_error_status_with_a_clear_message(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["wrong_key"]
    assert result["status"] == "execution-error"
    message = result["message"] or ""
    assert "API key" in message and "WAVESPEED_API_KEY" in message, message
    assert "not-the-right-key" not in message
    assert "not-the-right-key" not in gimp_run.stderr
    assert_untouched(gimp_run, "wrong_key")
    assert gimp_run.stats["auth_failures"] >= 1


def test_a_layer_group_is_refused_with_a_message(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["group"]
    assert result["status"] == "calling-error"
    assert "layer group" in (result["message"] or ""), result["message"]
    assert_untouched(gimp_run, "group")


def test_the_key_never_reaches_gimps_output(gimp_run: Any) -> None:
    assert RIGHT_KEY not in gimp_run.stdout and RIGHT_KEY not in gimp_run.stderr
    assert gimp_run.stats["tasks_completed"] == 3  # mask, layer, alpha: one task each


def wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancel_in_gimp_stops_the_bridge_and_leaves_the_image_untouched(
        gimp_root: Path) -> None:
    """GIMP's cancel button kills the plug-in process (gimp_plug_in_close with kill):
    do exactly that while the task runs, then check the bridge went away by itself,
    no result was downloaded and the image is unchanged."""
    config_path = "/tmp/bgremove-gimp-cancel-config.yaml"
    params = {
        "canvas": list(CANVAS), "group": False, "config_path": config_path,
        "cases": [{"name": "cancelled", "layer": SMALL["name"], "output": "alpha",
                   "config": CONFIG.format(key=RIGHT_KEY)}],
        "layers": [{"name": "background", "width": CANVAS[0], "height": CANVAS[1], "x": 0,
                    "y": 0, "pixels": "background.rgba"},
                   {**SMALL, "pixels": "subject.rgba"}],
    }
    files = {"background.rgba": background_pixels(), "subject.rgba": subject_pixels()}
    with Emulator(EmulatorOptions(api_key=RIGHT_KEY, delay=60.0)) as emu, \
            harness.running_batch(gimp_root, "run_procedure.py", params, files,
                                  {"WAVESPEED_BASE_URL": emu.base_url,
                                   "BGREMOVE_CONFIG": config_path}) as (gimp, work):
        try:
            wait_for(lambda: emu.stats()["tasks_submitted"] >= 1, 60, "the task to start")
            [(plugin_pid, _)] = [c for c in harness.children(gimp.pid)
                                 if "python-fu-remove-background.py" in c[1]]
            [(bridge_pid, _)] = [c for c in harness.children(plugin_pid)
                                 if "bgremove.plugin_gimp.bridge" in c[1]]
            os.kill(plugin_pid, signal.SIGKILL)
            wait_for(lambda: not harness.alive(bridge_pid), 10, "the bridge to exit")
            _, err = gimp.communicate(timeout=120)
            assert gimp.returncode == 0, err[-3000:]
            assert emu.stats()["requests"].get("download", {}) == {}
            results = harness.results_of(work)
            assert results is not None
            case = results["cases"]["cancelled"]
            assert case["status"] != "success"
            before = {layer["name"]: layer for layer in results["before"]}
            for layer in case["layers"]:
                old = before[layer["name"]]
                assert (layer["width"], layer["height"], layer["offsets"]) == \
                    (old["width"], old["height"], old["offsets"])
                assert "mask" not in layer
                assert (work / layer["pixels"]).read_bytes() == \
                    (work / old["pixels"]).read_bytes()
        finally:
            shutil.rmtree(work, ignore_errors=True)
            (gimp_root / config_path.lstrip("/")).unlink(missing_ok=True)
