"""The plug-in's run() with a recording stand-in for GIMP: what it asks GIMP, in what order.

GIMP's Cancel button kills the plug-in and exists only while the plug-in's progress
is active, and one undo step is whatever lies between undo_group_start and
undo_group_end. Neither can be observed in a headless GIMP (no status bar, no undo
procedure in the PDB), so these tests record the calls: every change to the image
comes after the progress ended and inside one undo group that always closes; a
failure or a cancel before that changes nothing. The real-GIMP tests
(test_gimp_integration.py) check the pixels.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest

PLUGIN_FILE = Path(__file__).resolve().parent.parent / "plugin_gimp" / "remove_background.py"
#: calls that change the image
WRITES = {"add_mask", "buffer_set", "insert_layer", "add_alpha", "set_name", "set_offsets"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.rects: list[Any] = []  # where each buffer write went

    def __call__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)
        return record


class FakeBuffer:
    def __init__(self, rec: Recorder, size: tuple[int, int], bpp: int) -> None:
        self.rec, self.size, self.bpp = rec, size, bpp

    def get(self, rect: Any, scale: float, fmt: str, policy: Any) -> bytes:
        return bytes(rect[2] * rect[3] * (1 if fmt == "Y u8" else self.bpp))

    def set(self, rect: Any, fmt: str, data: bytes) -> None:
        self.rec.calls.append("buffer_set")
        self.rec.rects.append(rect)

    def flush(self) -> None:
        pass


class FakeDrawable:
    def __init__(self, rec: Recorder, image: Any, name: str, mask: bool = False) -> None:
        self.rec, self.image, self.name, self.mask_of = rec, image, name, None
        self.mask: FakeDrawable | None = None
        self.alpha = True
        self.group = False
        self.size = (10, 8)

    def is_layer_mask(self) -> bool:
        return self.mask_of is not None

    def is_channel(self) -> bool:
        return False

    def is_layer(self) -> bool:
        return self.mask_of is None

    def is_group_layer(self) -> bool:
        return self.group

    def is_floating_sel(self) -> bool:
        return False

    def get_name(self) -> str:
        return self.name

    def get_image(self) -> Any:
        return self.image

    def get_offsets(self) -> tuple[bool, int, int]:
        return True, 3, 4

    def get_width(self) -> int:
        return self.size[0]

    def get_height(self) -> int:
        return self.size[1]

    def is_gray(self) -> bool:
        return False

    def has_alpha(self) -> bool:
        return self.alpha

    def get_mask(self) -> Any:
        return self.mask

    def create_mask(self, kind: Any) -> FakeDrawable:
        mask = FakeDrawable(self.rec, self.image, f"{self.name} mask")
        mask.mask_of = self
        return mask

    def add_mask(self, mask: FakeDrawable) -> None:
        self.rec.calls.append("add_mask")
        self.mask = mask

    def get_buffer(self) -> FakeBuffer:
        return FakeBuffer(self.rec, (10, 8), 4)

    def update(self, *region: int) -> None:
        pass

    def get_lock_alpha(self) -> bool:
        return False

    def get_lock_content(self) -> bool:
        return False


class FakeImage:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.undo_group_start = rec("undo_group_start")
        self.undo_group_end = rec("undo_group_end")

    def get_precision(self) -> str:
        return "u8-perceptual"

    def get_selection(self) -> FakeDrawable:
        return FakeDrawable(self.rec, self, "selection")


class FakeBridge:
    """BridgeJob's stand-in: answers each layer with a mask; with ``second_fails`` set,
    the second layer's request fails with that error kind (after progress was shown)."""

    second_fails: str | None = None

    def __init__(self, python: str) -> None:
        self.log_path = "/cache/bgremove/gimp-plugin.log"

    def start(self) -> None:
        pass

    def run(self, header: dict[str, Any], chunks: list[bytes], report: Any, note: Any
            ) -> tuple[dict[str, Any], bytes]:
        report("wait", 0.5)
        if FakeBridge.second_fails is not None and len(PLUGIN_STATE["runs"]) == 1:
            raise PLUGIN_STATE["module"].PluginError(FakeBridge.second_fails,
                                                     "the key was refused.")
        PLUGIN_STATE["runs"].append(header)
        return {"format": "Y u8"}, bytes(header["width"] * header["height"])

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


PLUGIN_STATE: dict[str, Any] = {}


@pytest.fixture
def gimp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The plug-in module with GIMP, GEGL and GLib replaced by recorders."""
    spec = importlib.util.spec_from_file_location("bgremove_plugin_recorded", PLUGIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rec = Recorder()
    status = types.SimpleNamespace(SUCCESS="success", EXECUTION_ERROR="execution-error",
                                   CALLING_ERROR="calling-error", CANCEL="cancel")
    fake_gimp = types.SimpleNamespace(
        RunMode=types.SimpleNamespace(INTERACTIVE="interactive",
                                      NONINTERACTIVE="noninteractive"),
        PDBStatusType=status, AddMaskType=types.SimpleNamespace(WHITE="white"),
        Precision=types.SimpleNamespace(U8_NON_LINEAR="u8-non-linear",
                                        U8_PERCEPTUAL="u8-perceptual"),
        Selection=types.SimpleNamespace(bounds=lambda image: (True, False, 0, 0, 10, 8)),
        Layer=types.SimpleNamespace(from_mask=lambda mask: mask.mask_of),
        progress_init=rec("progress_init"), progress_set_text=rec("progress_set_text"),
        progress_update=rec("progress_update"), progress_end=rec("progress_end"),
        context_push=rec("context_push"), context_pop=rec("context_pop"),
        displays_flush=rec("displays_flush"))
    monkeypatch.setattr(module, "Gimp", fake_gimp, raising=False)
    monkeypatch.setattr(module, "Gegl", types.SimpleNamespace(
        Rectangle=types.SimpleNamespace(new=lambda *r: r),
        AbyssPolicy=types.SimpleNamespace(CLAMP="clamp")), raising=False)
    monkeypatch.setattr(module, "GLib", types.SimpleNamespace(Error=lambda m="": m),
                        raising=False)
    monkeypatch.setattr(module, "BridgeJob", FakeBridge)
    monkeypatch.setattr(module, "load_settings", lambda: {"python": "/env/bin/python"})
    PLUGIN_STATE.clear()
    PLUGIN_STATE.update(module=module, runs=[])
    FakeBridge.second_fails = None
    image = FakeImage(rec)
    layers = [FakeDrawable(rec, image, "one"), FakeDrawable(rec, image, "two")]
    procedure = types.SimpleNamespace(new_return_values=lambda status, error: (status, error))
    config = types.SimpleNamespace(get_property=lambda name: {"output": "mask",
                                                              "backend": "auto"}[name])

    def run(drawables: list[Any] | None = None, mode: str = "noninteractive"
            ) -> tuple[str, str]:
        result: tuple[str, str] = module.run(procedure, mode, image,
                                             layers if drawables is None else drawables,
                                             config, None)
        return result

    return types.SimpleNamespace(run=run, calls=rec.calls, rects=rec.rects, layers=layers,
                                 module=module, gimp=fake_gimp)


def test_a_two_layer_run_writes_everything_inside_one_undo_group_after_the_progress(
        gimp: Any) -> None:
    assert gimp.run() == ("success", "")
    calls = gimp.calls
    writes = [i for i, call in enumerate(calls) if call in WRITES]
    assert calls.count("add_mask") == 2 and calls.count("buffer_set") == 2  # both layers
    assert calls.count("undo_group_start") == 1 and calls.count("undo_group_end") == 1
    start, end = calls.index("undo_group_start"), calls.index("undo_group_end")
    assert all(start < i < end for i in writes), calls  # one undo step holds every write
    progress = [i for i, call in enumerate(calls) if call.startswith("progress_")]
    assert calls[progress[-1]] == "progress_end" and progress[-1] < start, calls
    # Cancel (which kills the plug-in) is offered only while the progress is active:
    # never once the image starts to change.


def test_a_failure_on_the_second_layer_changes_nothing_and_names_the_log(gimp: Any) -> None:
    FakeBridge.second_fails = "auth"
    status, message = gimp.run()
    assert status == "execution-error"
    assert message == "the key was refused. Details are in /cache/bgremove/gimp-plugin.log"
    assert not WRITES & set(gimp.calls) and "undo_group_start" not in gimp.calls
    assert gimp.calls[-1] == "progress_end"


def test_a_cancel_reported_by_the_bridge_returns_cancel_and_changes_nothing(
        gimp: Any) -> None:
    FakeBridge.second_fails = "cancelled"
    status, _ = gimp.run()
    assert status == "cancel"
    assert not WRITES & set(gimp.calls) and "undo_group_start" not in gimp.calls


def test_the_undo_group_closes_when_a_write_fails(gimp: Any, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    def broken_set(self: Any, rect: Any, fmt: str, data: bytes) -> None:
        self.rec.calls.append("buffer_set")
        raise RuntimeError("the drawable went away")

    monkeypatch.setattr(FakeBuffer, "set", broken_set)
    status, message = gimp.run()
    assert status == "execution-error" and message.startswith("The result could not be written")
    assert gimp.calls.count("undo_group_start") == gimp.calls.count("undo_group_end") == 1
    assert gimp.calls[-1] == "context_pop"


def test_a_layer_mask_stands_for_its_layer_so_repeat_works_after_a_mask_run(
        gimp: Any) -> None:
    assert gimp.run() == ("success", "")
    mask = gimp.layers[0].get_mask()
    assert mask is not None and mask.is_layer_mask()
    gimp.calls.clear()
    assert gimp.run([mask]) == ("success", "")  # what Filters > Repeat passes
    assert gimp.calls.count("buffer_set") == 1 and "add_mask" not in gimp.calls


def test_no_mnemonics_in_the_choice_labels_and_none_repeated_in_the_dialog() -> None:
    spec = importlib.util.spec_from_file_location("bgremove_plugin_labels", PLUGIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for _, label in module.OUTPUTS + module.BACKENDS:
        assert "_" not in label, label
    source = PLUGIN_FILE.read_text(encoding="utf-8")
    # argument labels' mnemonics must not clash with each other or the dialog's buttons
    # (_OK, _Cancel, _Reset, _Help)
    mnemonics = ["o", "c", "r", "h"]
    for label in ('"Out_put"', '"_Backend"'):
        assert label in source
        letter = label.split("_")[1][0].lower()
        assert letter not in mnemonics
        mnemonics.append(letter)


def test_a_layer_group_is_refused_before_the_dialog_opens(
        gimp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bool] = []
    monkeypatch.setattr(gimp.module, "_dialog", lambda procedure, config: opened.append(True))
    gimp.layers[1].group = True
    status, message = gimp.run(mode="interactive")
    assert status == "calling-error" and "layer group" in message
    # GIMP shows "Execution error for 'Remove Background…': MESSAGE": no name twice
    assert not message.startswith("Remove Background")
    assert opened == [] and not WRITES & set(gimp.calls)


def test_with_a_selection_only_its_box_is_sent_and_written(gimp: Any) -> None:
    # a 100x80 layer at offsets (3, 4); a selection over image (50, 40)-(54, 44): in the
    # layer that is (47, 36)-(51, 40), plus the 16-pixel margin
    layer = gimp.layers[0]
    layer.size = (100, 80)
    gimp.gimp.Selection = types.SimpleNamespace(
        bounds=lambda image: (True, True, 50, 40, 54, 44))
    assert gimp.run([layer]) == ("success", "")
    [header] = PLUGIN_STATE["runs"]
    assert (header["width"], header["height"], header["selection"]) == (36, 36, True)
    assert gimp.rects == [(31, 20, 36, 36)]  # written where it was read, nowhere else
