"""Batch code run INSIDE GIMP 3 (python-fu-eval) by tests/gimp_batch/harness.py.

Reads ``params.json`` from the folder named by ``BGREMOVE_BATCH_DIR``, builds an
image with two layers from raw pixel files (a background and a smaller, offset
layer), then for each case: duplicates the image and marks it clean, makes the
case's selection (a rectangle, an ellipse, feathered or not), writes the config
file the bridge will read (so one GIMP run can use several emulators and keys),
writes ``started-<case>`` (so the host knows which case runs, to cancel it),
runs python-fu-remove-background NON-INTERACTIVELY on the chosen layers and,
for a "repeat" case, once more on whatever GIMP then has selected, as Filters >
Repeat does. It dumps every layer's pixels, mask, offsets, the selection's
values over each layer, whether the image is dirty, and the procedure's status
and message to the same folder. The host compares them pixel by pixel.

A failure of the harness itself raises (gimp-console exits 64); a failing
procedure is recorded, not raised: the test decides what is expected.
"""

import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

PROC = "python-fu-remove-background"
FORMAT = "R'G'B'A u8"

work = os.environ["BGREMOVE_BATCH_DIR"]
with open(os.path.join(work, "params.json"), encoding="utf-8") as handle:
    params = json.load(handle)


def read_raw(name):
    with open(os.path.join(work, name), "rb") as handle:
        return handle.read()


def write_raw(name, data):
    with open(os.path.join(work, name), "wb") as handle:
        handle.write(bytes(data))


def fill(layer, data):
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height()), FORMAT, data)
    buffer.flush()


def read(drawable, fmt):
    buffer = drawable.get_buffer()
    return buffer.get(buffer.get_extent(), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)


def build_image():
    width, height = params["canvas"]
    image = Gimp.Image.new(width, height, Gimp.ImageBaseType.RGB)
    for spec in params["layers"]:  # bottom first
        layer = Gimp.Layer.new(image, spec["name"], spec["width"], spec["height"],
                               Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(spec["x"], spec["y"])
        fill(layer, read_raw(spec["pixels"]))
    if params.get("group"):
        group = Gimp.GroupLayer.new(image, "a group")
        image.insert_layer(group, None, 0)
    return image


def dump(image, prefix):
    layers = []
    for index, layer in enumerate(image.get_layers()):
        entry = {"name": layer.get_name(), "width": layer.get_width(),
                 "height": layer.get_height(), "offsets": list(layer.get_offsets()[1:]),
                 "is_group": layer.is_group_layer(), "has_alpha": layer.has_alpha()}
        if not layer.is_group_layer():
            entry["pixels"] = f"{prefix}-layer{index}.rgba"
            write_raw(entry["pixels"], read(layer, FORMAT))
        mask = layer.get_mask()
        if mask is not None:
            entry["mask"] = f"{prefix}-layer{index}.mask"
            write_raw(entry["mask"], read(mask, "Y u8"))
        layers.append(entry)
    return layers


def selection_over_layers(image):
    """The selection's values ("Y u8") over each layer's own rectangle, by layer name."""
    selection = image.get_selection()
    found = {}
    for layer in image.get_layers():
        if layer.is_group_layer():
            continue
        ox, oy = layer.get_offsets()[1:]
        rect = Gegl.Rectangle.new(ox, oy, layer.get_width(), layer.get_height())
        name = f"{layer.get_name()}.selection"
        write_raw(f"{current}-{name}", selection.get_buffer().get(
            rect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
        found[layer.get_name()] = f"{current}-{name}"
    return found


def make_selection(image, spec):
    if spec is None:
        return
    op = Gimp.ChannelOps.REPLACE
    if spec["kind"] == "rect":
        image.select_rectangle(op, spec["x"], spec["y"], spec["w"], spec["h"])
    else:
        image.select_ellipse(op, spec["x"], spec["y"], spec["w"], spec["h"])
    if spec.get("feather"):
        Gimp.Selection.feather(image, spec["feather"])


def run_once(image, drawables, case, run_mode):
    config = procedure.create_config()
    config.set_property("run-mode", run_mode)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    if run_mode == Gimp.RunMode.NONINTERACTIVE:
        config.set_property("output", case["output"])
        config.set_property("backend", case.get("backend", "wavespeed"))
    returned = procedure.run(config)
    status = returned.index(0)
    message = None
    if status != Gimp.PDBStatusType.SUCCESS:
        try:
            message = returned.index(1)
        except Exception:  # no message value
            message = None
        if not isinstance(message, str):
            message = Gimp.get_pdb().get_last_error()
    return status.value_nick, message


def find_layer(image, name):
    for layer in image.get_layers():
        if layer.get_name() == name:
            return layer
    raise LookupError(name)


procedure = Gimp.get_pdb().lookup_procedure(PROC)
if procedure is None:
    raise RuntimeError(f"{PROC} is not registered: the plug-in failed to load")

base = build_image()
results = {"cases": {}}
for case in params["cases"]:
    current = case["name"]
    image = base.duplicate()
    make_selection(image, case.get("selection"))
    image.clean_all()
    with open(params["config_path"], "w", encoding="utf-8") as handle:
        handle.write(case["config"])
    os.chmod(params["config_path"], 0o600)
    names = case.get("layers") or [case["layer"]]
    targets = [find_layer(image, name) for name in names]
    image.set_selected_layers(targets)  # as the user does in the Layers dialog
    selection = selection_over_layers(image) if case.get("selection") else {}
    _, non_empty, *bounds = Gimp.Selection.bounds(image)
    write_raw(f"started-{current}", b"")
    started = time.perf_counter()
    status, message = run_once(image, targets, case, Gimp.RunMode.NONINTERACTIVE)
    seconds = time.perf_counter() - started
    entry = {"status": status, "message": message, "seconds": seconds,
             "selection_bounds": bounds if non_empty else None, "selection": selection}
    if case.get("repeat"):
        # Filters > Repeat runs the last procedure with its last values on what is
        # selected now: after a mask run, that is the new layer mask.
        selected = list(image.get_selected_drawables())
        entry["selected_after"] = [{"name": d.get_name(), "is_mask": d.is_layer_mask()}
                                   for d in selected]
        entry["repeat_status"], entry["repeat_message"] = run_once(
            image, selected, case, Gimp.RunMode.WITH_LAST_VALS)
    entry.update(layers=dump(image, current) if params.get("dump", True) else [],
                 undo_enabled=image.undo_is_enabled(), dirty=image.is_dirty())
    results["cases"][current] = entry
    image.delete()

current = "before"
results["before"] = dump(base, "before") if params.get("dump", True) else []
base.delete()
with open(os.path.join(work, "results.json"), "w", encoding="utf-8") as handle:
    json.dump(results, handle, indent=1)
