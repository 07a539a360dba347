"""Batch code run INSIDE GIMP 3 (python-fu-eval) by tests/gimp_batch/harness.py.

Reads ``params.json`` from the folder named by ``BGREMOVE_BATCH_DIR``, builds an
image with two layers from raw pixel files (a background and a smaller, offset
layer), then for each case: duplicates the image, writes the config file the
bridge will read (so one GIMP run can try a good and a wrong key), runs
python-fu-remove-background NON-INTERACTIVELY on the chosen layer, and dumps
every layer's pixels, mask, offsets and the procedure's status and message to
the same folder. The host compares them pixel by pixel.

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
    image = base.duplicate()
    with open(params["config_path"], "w", encoding="utf-8") as handle:
        handle.write(case["config"])
    os.chmod(params["config_path"], 0o600)
    target = find_layer(image, case["layer"])
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [target])
    config.set_property("output", case["output"])
    config.set_property("backend", case.get("backend", "wavespeed"))
    started = time.perf_counter()
    returned = procedure.run(config)
    seconds = time.perf_counter() - started
    status = returned.index(0)
    message = None
    if status != Gimp.PDBStatusType.SUCCESS:
        try:
            message = returned.index(1)
        except Exception:  # no message value
            message = None
        if not isinstance(message, str):
            message = Gimp.get_pdb().get_last_error()
    results["cases"][case["name"]] = {
        "status": status.value_nick, "message": message, "seconds": seconds,
        "layers": dump(image, case["name"]) if params.get("dump", True) else [],
        "undo_enabled": image.undo_is_enabled(),
    }
    image.delete()

results["before"] = dump(base, "before") if params.get("dump", True) else []
base.delete()
with open(os.path.join(work, "results.json"), "w", encoding="utf-8") as handle:
    json.dump(results, handle, indent=1)
