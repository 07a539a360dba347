"""The plug-in in a real GIMP 3.0 (headless, in a Debian trixie root), against the emulator.

One GIMP run builds an image with a background layer and a smaller, offset
layer holding a key-colour backdrop, a subject and a half-transparent stripe,
then runs python-fu-remove-background non-interactively on the small layer in
each output mode, with a wrong key, and on a layer group. The host checks
pixel by pixel that only that layer changed, that its new alpha is exactly the
emulator's key-out of its own pixels at its full size and offsets, and that
failures return an error status with a clear message and leave the image as it was.

Needs root and the Debian mirror the first time (scripts/gimp-root.sh builds and
caches the root, about a minute); elsewhere, or with BGREMOVE_SKIP_GIMP=1, it is
skipped with the reason, except with CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bgremove.emulator import Emulator, EmulatorOptions, Fault, keyout_alpha

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
        if harness.in_ci():  # CI must never pass with this test skipped
            pytest.fail(f"CI=true and the real-GIMP test cannot run: {exc}", pytrace=False)
        pytest.skip(str(exc))
    harness.prepare_root(root)  # this checkout's sources, as they are now
    return root


#: Cancel cases, in the order the batch runs them: (name, what the host waits for before
#: killing the plug-in, as GIMP's Cancel button does).
CANCELS = ("cancel_prepare", "cancel_wait", "cancel_before_write")
RECT = {"kind": "rect", "x": 0, "y": SMALL["y"] + SMALL["height"] // 2, "w": CANVAS[0],
        "h": CANVAS[1]}  # the bottom half of the offset layer (and the canvas beyond it)
ELLIPSE = {"kind": "ellipse", "x": SMALL["x"] + 30, "y": SMALL["y"] + 10, "w": 90, "h": 80,
           "feather": 12.0}


def config_for(emu: Emulator, key: str = RIGHT_KEY) -> str:
    return CONFIG.format(key=key) + f"  base_url: {emu.base_url}\n"


def find_plugin(gimp_pid: int) -> tuple[int, list[int]] | None:
    """The running plug-in's pid and its bridge's (a child of GIMP, and its child)."""
    plugins = [pid for pid, cmd in harness.children(gimp_pid)
               if "python-fu-remove-background.py" in cmd]
    if len(plugins) != 1:
        return None
    bridges = [pid for pid, cmd in harness.children(plugins[0]) if "plugin_gimp.bridge" in cmd]
    return plugins[0], bridges


def cancel_each_phase(gimp: Any, work: Path, emus: dict[str, Emulator],
                      outcome: dict[str, Any]) -> None:
    """Kill the plug-in (what GIMP's Cancel does) once per cancel case, at its phase."""
    conditions = {
        # the bridge is up, the service has no task yet (its first request is held)
        "cancel_prepare": lambda emu: emu.stats()["faults"].get("delay", 0) >= 1,
        # the service holds the task
        "cancel_wait": lambda emu: emu.stats()["tasks_submitted"] >= 1,
        # the first layer's result is in the plug-in, the second's download is held
        "cancel_before_write": lambda emu: emu.stats()["faults"].get("delay", 0) >= 1,
    }
    try:
        for name in CANCELS:
            wait_for(lambda name=name: (work / f"started-{name}").exists(), 120,
                     f"{name} to start")
            emu = emus[name]
            wait_for(lambda emu=emu, name=name: conditions[name](emu), 60,
                     f"{name}'s phase")
            plugin_pid, bridges = wait_for(lambda: find_plugin(gimp.pid), 10, "the plug-in")
            stats = emu.stats()
            os.kill(plugin_pid, signal.SIGKILL)
            wait_for(lambda bridges=bridges: not any(harness.alive(b) for b in bridges), 10,
                     "the bridge to exit")
            outcome[name] = {"bridges": len(bridges), "stats": stats}
    except BaseException as exc:  # reported by the test that needs it
        outcome["error"] = repr(exc)


@pytest.fixture(scope="module")
def gimp_run(gimp_root: Path) -> Iterator[Any]:
    """One GIMP session runs every case, cancels included (a GIMP start costs seconds)."""
    config_path = "/tmp/bgremove-gimp-test-config.yaml"
    cache = f"/tmp/bgremove-gimp-test-cache-{os.getpid()}"
    with Emulator(EmulatorOptions(api_key=RIGHT_KEY)) as emu, \
            Emulator(EmulatorOptions(api_key=RIGHT_KEY, faults=(
                Fault("delay", route="*", seconds=60.0, first=1),))) as emu_prepare, \
            Emulator(EmulatorOptions(api_key=RIGHT_KEY, delay=60.0)) as emu_wait, \
            Emulator(EmulatorOptions(api_key=RIGHT_KEY, faults=(
                Fault("delay", route="downloads", seconds=60.0, every=2),))) as emu_write:
        emus = {"cancel_prepare": emu_prepare, "cancel_wait": emu_wait,
                "cancel_before_write": emu_write}
        good = config_for(emu)
        cases = [{"name": mode, "layer": SMALL["name"], "output": mode, "config": good}
                 for mode in ("mask", "layer", "alpha")]
        cases += [
            {"name": "wrong_key", "layer": SMALL["name"], "output": "mask",
             "config": config_for(emu, "not-the-right-key")},
            {"name": "group", "layer": "a group", "output": "mask", "config": good},
            {"name": "sel_rect", "layer": SMALL["name"], "output": "alpha", "config": good,
             "selection": RECT},
            {"name": "sel_ellipse", "layer": SMALL["name"], "output": "mask", "config": good,
             "selection": ELLIPSE},
            {"name": "sel_beside", "layer": SMALL["name"], "output": "mask", "config": good,
             "selection": {"kind": "rect", "x": 0, "y": 0, "w": 40, "h": 40}},
            {"name": "repeat", "layer": SMALL["name"], "output": "mask", "config": good,
             "repeat": True},
            {"name": "two_layers", "layers": ["background", SMALL["name"]], "output": "mask",
             "config": good},
            {"name": "cancel_prepare", "layer": SMALL["name"], "output": "alpha",
             "config": config_for(emu_prepare)},
            {"name": "cancel_wait", "layer": SMALL["name"], "output": "alpha",
             "config": config_for(emu_wait)},
            {"name": "cancel_before_write", "layers": ["background", SMALL["name"]],
             "output": "alpha", "config": config_for(emu_write)},
        ]
        params = {
            "canvas": list(CANVAS), "group": True, "config_path": config_path, "cases": cases,
            "layers": [
                {"name": "background", "width": CANVAS[0], "height": CANVAS[1], "x": 0,
                 "y": 0, "pixels": "background.rgba"},
                {**SMALL, "pixels": "subject.rgba"},
            ],
        }
        files = {"background.rgba": background_pixels(), "subject.rgba": subject_pixels()}
        outcome: dict[str, Any] = {}
        with harness.running_batch(gimp_root, "run_procedure.py", params, files,
                                   {"BGREMOVE_CONFIG": config_path,
                                    "XDG_CACHE_HOME": cache}) as (gimp, work):
            killer = threading.Thread(target=cancel_each_phase,
                                      args=(gimp, work, emus, outcome))
            killer.start()
            out, err = gimp.communicate(timeout=900)
            killer.join(30)
        run = harness.BatchRun(gimp.returncode, out, err, 0.0, work, harness.results_of(work))
        run.stats = emu.stats()  # type: ignore[attr-defined]
        run.cancel_stats = {name: e.stats() for name, e in emus.items()}  # type: ignore[attr-defined]
    run.cancels = outcome  # type: ignore[attr-defined]
    run.cache = gimp_root / cache.lstrip("/")  # type: ignore[attr-defined]
    run.root = gimp_root  # type: ignore[attr-defined]
    try:
        assert run.returncode == 0 and run.results is not None, run.stderr[-3000:]
        yield run
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
        shutil.rmtree(run.cache, ignore_errors=True)  # type: ignore[attr-defined]
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
    # mask, layer, alpha, two selections, a run and its repeat, two layers: a task each
    assert gimp_run.stats["tasks_completed"] == 9


def wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- the selection ---------------------------------------------------------------------------

def plugin_module() -> Any:
    """The plug-in file itself (standard library only outside GIMP), for its region rule."""
    import importlib.util

    path = harness.REPO / "plugin_gimp" / "remove_background.py"
    spec = importlib.util.spec_from_file_location("bgremove_plugin_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_within_selection(run: Any, case: str, old_alpha: Any) -> Any:
    """What the layer's alpha (or new mask) must be: ``old_alpha`` outside the region
    sent, and inside it the key-out of exactly that region, blended by the selection."""
    from PIL import Image, ImageChops

    result = run.results["cases"][case]
    before = rgba(run, by_name(layers_of(run, "before"), SMALL["name"]))
    size = (SMALL["width"], SMALL["height"])
    region = plugin_module().selection_region(result["selection_bounds"],
                                              (SMALL["x"], SMALL["y"]), size)
    assert region is not None and region != (0, 0, *size)  # less than the whole layer
    box = (region[0], region[1], region[0] + region[2], region[1] + region[3])
    selection = Image.frombytes("L", size, run.read(result["selection"][SMALL["name"]]))
    crop = before.crop(box)
    if crop.getchannel("A").getextrema() == (255, 255):
        crop = crop.convert("RGB")
    old = old_alpha.crop(box)
    new = ImageChops.darker(keyout_alpha(crop), old)
    expected = old_alpha.copy()
    expected.paste(Image.composite(new, old, selection.crop(box)), box)
    return expected, selection


def test_a_rectangle_over_half_of_an_offset_layer_changes_only_that_half(
        gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["sel_rect"]
    assert result["status"] == "success", result["message"]
    before = rgba(gimp_run, by_name(layers_of(gimp_run, "before"), SMALL["name"]))
    after = rgba(gimp_run, by_name(result["layers"], SMALL["name"]))
    expected, selection = expected_within_selection(gimp_run, "sel_rect",
                                                    before.getchannel("A"))
    half = SMALL["height"] // 2
    assert set(selection.crop((0, 0, SMALL["width"], half)).tobytes()) == {0}
    assert set(selection.crop((0, half, SMALL["width"], SMALL["height"])).tobytes()) == {255}
    alpha = after.getchannel("A")
    assert alpha.crop((0, 0, SMALL["width"], half)).tobytes() == \
        before.getchannel("A").crop((0, 0, SMALL["width"], half)).tobytes()  # outside
    assert alpha.tobytes() == expected.tobytes()  # inside: the model's alpha
    assert alpha.tobytes() != before.getchannel("A").tobytes()
    assert after.convert("RGB").tobytes() == before.convert("RGB").tobytes()
    assert_untouched(gimp_run, "sel_rect", except_name=SMALL["name"])


def test_a_feathered_ellipse_blends_the_cut_out_by_the_selection(gimp_run: Any) -> None:
    from PIL import Image

    result = gimp_run.results["cases"]["sel_ellipse"]
    assert result["status"] == "success", result["message"]
    subject = by_name(result["layers"], SMALL["name"])
    size = (SMALL["width"], SMALL["height"])
    expected, selection = expected_within_selection(gimp_run, "sel_ellipse",
                                                    Image.new("L", size, 255))
    partly = [v for v in selection.tobytes() if 0 < v < 255]
    assert len(partly) > 100  # feathered: many pixels are partly selected
    mask = gimp_run.read(subject["mask"])
    assert mask == expected.tobytes()
    assert len(set(mask) - {0, 255}) > 10  # blended values, not just in or out
    assert gimp_run.read(subject["pixels"]) == subject_pixels()


def test_a_selection_beside_the_layer_is_refused_before_anything_runs(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["sel_beside"]
    assert result["status"] == "calling-error"
    assert "does not touch" in (result["message"] or ""), result["message"]
    assert_untouched(gimp_run, "sel_beside")
    assert result["dirty"] is False


# --- repeat, several layers, logs ----------------------------------------------------------

def test_repeat_right_after_a_mask_run_acts_on_the_masks_layer(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["repeat"]
    assert result["status"] == "success", result["message"]
    # GIMP made the new mask the active item: that is what Repeat passes
    assert [d["is_mask"] for d in result["selected_after"]] == [True], result["selected_after"]
    assert result["repeat_status"] == "success", result["repeat_message"]
    subject = by_name(result["layers"], SMALL["name"])
    assert gimp_run.read(subject["mask"]) == expected_alpha(gimp_run)  # min(a, a) == a
    assert_untouched(gimp_run, "repeat", except_name=SMALL["name"])


def test_a_two_layer_run_cuts_out_both_layers(gimp_run: Any) -> None:
    result = gimp_run.results["cases"]["two_layers"]
    assert result["status"] == "success", result["message"]
    before = {layer["name"]: layer for layer in layers_of(gimp_run, "before")}
    for name in ("background", SMALL["name"]):
        layer = by_name(result["layers"], name)
        expected = keyout_alpha(rgba(gimp_run, before[name]))
        assert gimp_run.read(layer["mask"]) == expected.tobytes(), name
        assert gimp_run.read(layer["pixels"]) == gimp_run.read(before[name]["pixels"])
    assert result["dirty"] is True


def test_a_failing_run_names_a_log_file_that_holds_the_bridges_lines(gimp_run: Any) -> None:
    message = gimp_run.results["cases"]["wrong_key"]["message"] or ""
    assert "Details are in " in message, message
    path = message.rsplit("Details are in ", 1)[1].strip().rstrip(".")
    assert path.startswith("/tmp/bgremove-gimp-test-cache-") and path.endswith(
        "/bgremove/gimp-plugin.log")
    log = (gimp_run.root / path.lstrip("/")).read_text(encoding="utf-8")
    assert "refused the API key" in log and "150x100" in log
    assert "not-the-right-key" not in log and RIGHT_KEY not in log
    # the same lines reached GIMP's terminal
    assert "[Remove Background]" in gimp_run.stderr and "refused the API key" in gimp_run.stderr


# --- cancel in each phase --------------------------------------------------------------------

@pytest.mark.parametrize("case", CANCELS)
def test_cancel_in_each_phase_leaves_the_image_exactly_as_it_was(gimp_run: Any,
                                                                 case: str) -> None:
    assert "error" not in gimp_run.cancels, gimp_run.cancels["error"]
    killed = gimp_run.cancels[case]
    assert killed["bridges"] == 1  # the bridge was running, and went away by itself
    result = gimp_run.results["cases"][case]
    assert result["status"] != "success"
    assert result["dirty"] is False  # no undo step, not marked as changed
    assert_untouched(gimp_run, case)
    layers = result["layers"]
    assert len(layers) == len(layers_of(gimp_run, "before"))
    stats = gimp_run.cancel_stats[case]
    assert stats["requests"].get("download", {}) == {} or case == "cancel_before_write"
    if case == "cancel_prepare":
        assert killed["stats"]["tasks_submitted"] == 0  # the service never had a task
    if case == "cancel_before_write":
        assert killed["stats"]["tasks_completed"] >= 1  # a result had arrived
    assert "inconsistent state" not in gimp_run.stderr
