#!/usr/bin/env python3
"""Remove Background: a GIMP 3 plug-in that cuts out the selected layers.

Layer > Transparency > Remove Background... removes the background of each
selected layer, at the layer's own size and offsets, in one undo step:

    output  mask   (default) add a layer mask; an existing mask is kept where it
                   already hides more (minimum of the two), the layer's pixels are untouched
            layer  a new layer above, a copy whose alpha is the minimum of the old alpha
                   and the cut-out (the original layer stays as it was)
            alpha  the layer's own alpha becomes the minimum of the old alpha and the cut-out
    backend auto | wavespeed | local, as in bgremove's config

This file imports only the standard library and GIMP's GObject bindings, so it
runs in GIMP's bundled Python on every platform. The work happens in the
Python environment bgremove is installed in: ``bgremove gimp install`` writes
that interpreter's path into ``bgremove-gimp.json`` beside this file, and the
plug-in runs ``PYTHON -m bgremove.plugin_gimp.bridge``, sending the layer's pixels as
raw bytes on stdin and reading progress and the result back on stdout (the
protocol is described in ``plugin_gimp/bridge.py``). The API key comes from
WAVESPEED_API_KEY or bgremove's config file, never from a GIMP setting.

Nothing in the image changes until every selected layer has its result, so a
cancel (GIMP kills the plug-in; the bridge sees its stdin close and stops) or
an error leaves the image untouched.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

PROC_NAME = "python-fu-remove-background"
PROTOCOL = 1
SETTINGS_FILE = "bgremove-gimp.json"
OUTPUTS = (
    ("mask", "Layer _mask (non-destructive)"),
    ("layer", "New _layer above"),
    ("alpha", "The layer's own _alpha"),
)
BACKENDS = (
    ("auto", "Auto (WaveSpeed if a key is set, else local)"),
    ("wavespeed", "WaveSpeed API"),
    ("local", "Local model (offline)"),
)
STAGE_TEXT = {
    "prepare": "Preparing",
    "upload": "Uploading",
    "wait": "Removing the background",
    "inference": "Running the local model",
    "download": "Downloading the result",
    "compose": "Finishing",
}
#: Variables GIMP's bundled Python may set that would break another interpreter.
PYTHON_ENV_VARS = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                   "__PYVENV_LAUNCHER__")
INSTALL_HINT = "pip install bgremove"
REINSTALL_HINT = "bgremove gimp install"
#: Set to 1 to print where the time goes (read, bridge, write) on GIMP's stderr.
TIMINGS_ENV = "BGREMOVE_GIMP_TIMINGS"


class PluginError(Exception):
    """A failure with one line for the user; ``kind`` is the bridge's error kind."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


# ---------------------------------------------------------------------------
# Talking to the bridge (standard library only; the unit tests drive this part)
# ---------------------------------------------------------------------------

def plugin_folder():
    return os.path.dirname(os.path.abspath(__file__))


def load_settings(folder=None):
    """Read ``bgremove-gimp.json``; raise PluginError saying how to fix a missing one."""
    path = os.path.join(folder or plugin_folder(), SETTINGS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)
    except FileNotFoundError:
        raise PluginError(
            "environment",
            f"Remove Background is not set up ({path} is missing). Run `{REINSTALL_HINT}` "
            f"in the Python environment bgremove is installed in (`{INSTALL_HINT}` first "
            "if it is not).") from None
    except (OSError, ValueError) as exc:
        raise PluginError("environment", f"cannot read {path} ({exc}). Run "
                          f"`{REINSTALL_HINT}` again.") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("python"), str):
        raise PluginError("environment", f"{path} does not name a Python interpreter. "
                          f"Run `{REINSTALL_HINT}` again.")
    if settings.get("protocol") != PROTOCOL:
        raise PluginError("environment", "this plug-in and the installed bgremove do not "
                          f"match. Run `{REINSTALL_HINT}` again.")
    return settings


def bridge_env(environ=None):
    """The bridge's environment: GIMP's, minus variables aimed at GIMP's own Python."""
    env = dict(os.environ if environ is None else environ)
    for name in PYTHON_ENV_VARS:
        env.pop(name, None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def bridge_command(python):
    command = [python, "-m", "bgremove.plugin_gimp.bridge"]
    if os.path.exists("/.flatpak-info"):
        # GIMP from Flathub runs sandboxed: the environment lives on the host.
        command = ["flatpak-spawn", "--host", *command]
    return command


def missing_python_message(python):
    return (f"bgremove's Python environment is gone ({python} does not exist). Install "
            f"bgremove again (`{INSTALL_HINT}`), then run `{REINSTALL_HINT}` from that "
            "environment.")


def no_start_message(python, detail):
    return (f"bgremove cannot start in {python}: {detail}. Install it there "
            f"(`{python} -m pip install bgremove`, or `{INSTALL_HINT}` in the environment "
            f"you use) and run `{REINSTALL_HINT}` again.")


class BridgeJob:
    """One request to the bridge: start, send, follow progress, take the result."""

    def __init__(self, python, env=None):
        self.python = python
        self.env = bridge_env() if env is None else env
        self.process = None
        self.cancelled = False
        self._stderr = None

    def start(self):
        if not os.path.exists(self.python):
            raise PluginError("environment", missing_python_message(self.python))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
        try:
            self.process = subprocess.Popen(
                bridge_command(self.python), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._stderr, env=self.env, creationflags=flags)
        except OSError as exc:
            self.close()
            raise PluginError("environment", no_start_message(self.python, exc)) from None

    def run(self, header, chunks, on_progress=None):
        """Send ``header`` and the raw ``chunks``; return (result header, result bytes).

        Raises PluginError with the bridge's one-line message on failure.
        """
        if self.process is None:
            self.start()
        try:
            return self._exchange(header, chunks, on_progress)
        finally:
            self.close()

    def _exchange(self, header, chunks, on_progress):
        process = self.process
        stdout = process.stdout
        hello = self._read_message()
        if hello is None:
            raise PluginError("environment", no_start_message(self.python, self._diagnosis()))
        if hello.get("type") == "error":
            raise PluginError(hello.get("kind", "error"), hello.get("message", "failed"))
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
            raise PluginError("environment", "the installed bgremove speaks another protocol "
                              f"than this plug-in. Run `{REINSTALL_HINT}` again.")
        try:
            process.stdin.write(json.dumps(dict(header, protocol=PROTOCOL)).encode() + b"\n")
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.flush()  # stdin stays open: closing it means "cancel"
        except (BrokenPipeError, OSError):
            pass  # the bridge refused the request: its error line follows
        while True:
            message = self._read_message()
            if message is None:
                if self.cancelled:
                    raise PluginError("cancelled", "cancelled")
                raise PluginError("internal", "bgremove stopped without an answer "
                                  f"(exit code {process.wait()}): {self._diagnosis()}")
            kind = message.get("type")
            if kind == "progress":
                if on_progress is not None:
                    on_progress(message.get("stage", ""), float(message.get("fraction", 0.0)))
            elif kind == "error":
                raise PluginError(message.get("kind", "error"), message.get("message", "failed"))
            elif kind == "result":
                size = int(message["bytes"])
                data = stdout.read(size)
                if len(data) != size:
                    raise PluginError("internal", "bgremove's answer was cut short: "
                                      f"{self._diagnosis()}")
                return message, data

    def _read_message(self):
        line = self.process.stdout.readline()
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            raise PluginError("internal", "bgremove answered something that is not the "
                              f"plug-in protocol: {line[:200]!r}") from None
        return message if isinstance(message, dict) else {}

    def _diagnosis(self):
        """The last lines the bridge wrote on stderr (the API key is never logged)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self._stderr is None:
            return "no details"
        self._stderr.seek(0)
        lines = [line.strip() for line in
                 self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "no details"

    def cancel(self):
        """Stop the bridge now (it exits by itself too when stdin closes)."""
        self.cancelled = True
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self):
        process = self.process
        if process is not None:
            for stream in (process.stdin, process.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.cancel()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def pixel_format(is_gray, has_alpha):
    """The babl format a layer is read in: 8-bit, perceptual, with alpha if it has one."""
    if is_gray:
        return "Y'A u8" if has_alpha else "Y' u8"
    return "R'G'B'A u8" if has_alpha else "R'G'B' u8"


def progress_text(stage, index, count, name):
    text = STAGE_TEXT.get(stage, "Removing the background")
    if count > 1:
        return f"{text}: {name} ({index + 1} of {count})"
    return f"{text}: {name}"


# ---------------------------------------------------------------------------
# The GIMP side
# ---------------------------------------------------------------------------

try:
    import gi

    gi.require_version("Gimp", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp, GLib, GObject
except (ImportError, ValueError):  # imported outside GIMP (the bridge's unit tests)
    Gimp = None


def _choice(items):
    choice = Gimp.Choice.new()
    for number, (nick, label) in enumerate(items):
        choice.add(nick, number, label, "")
    return choice


def _failure(procedure, message, status=None):
    # GIMP shows a returned error as a message itself ("Execution error for ..."),
    # so an extra Gimp.message() would show it twice.
    return procedure.new_return_values(status or Gimp.PDBStatusType.EXECUTION_ERROR,
                                       GLib.Error(message))


def _refusal(drawable, output):
    """Why this drawable cannot be processed, or None."""
    if drawable.is_layer_mask():
        return ("a layer mask is selected: select the layer itself (click its thumbnail in "
                "the Layers dialog)")
    if drawable.is_channel():
        return "a channel is selected: Remove Background works on layers"
    if not drawable.is_layer():
        return "Remove Background works on layers only"
    if drawable.is_group_layer():
        return (f"'{drawable.get_name()}' is a layer group: select the layers inside it, or "
                "merge the group first (Layer > Merge Layer Group)")
    if drawable.is_floating_sel():
        return "anchor the floating selection first (Layer > Anchor Layer)"
    if output in ("alpha", "layer"):
        precision = drawable.get_image().get_precision()
        if precision not in (Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL):
            return ("output 'alpha' and 'layer' need an 8-bit non-linear image "
                    "(Image > Precision > 8 bit integer, Perceptual gamma); output 'mask' "
                    "works at any precision")
    if output == "alpha" and (drawable.get_lock_alpha() or drawable.get_lock_content()):
        return f"'{drawable.get_name()}' has its alpha or pixels locked: unlock them first"
    return None


def _read(drawable, fmt):
    buffer = drawable.get_buffer()
    return buffer.get(buffer.get_extent(), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)


def _write(drawable, fmt, data):
    buffer = drawable.get_buffer()
    extent = buffer.get_extent()
    buffer.set(extent, fmt, data)
    buffer.flush()
    drawable.update(0, 0, drawable.get_width(), drawable.get_height())


def _timing(what, started, extra=""):
    if os.environ.get(TIMINGS_ENV) == "1":
        print(f"bgremove-timing {what}={time.perf_counter() - started:.3f}{extra}",
              file=sys.stderr, flush=True)


def _cut_out(python, layer, output, backend, report):
    """Ask the bridge for this layer's result; nothing in the image changes here."""
    started = time.perf_counter()
    job = BridgeJob(python)
    job.start()  # Python starts up while GIMP hands over the pixels
    try:
        fmt = pixel_format(layer.is_gray(), layer.has_alpha())
        chunks = [_read(layer, fmt)]
        mask = layer.get_mask() if output == "mask" else None
        if mask is not None:
            chunks.append(_read(mask, "Y u8"))
    except BaseException:
        job.cancel()
        job.close()
        raise
    header = {"width": layer.get_width(), "height": layer.get_height(), "format": fmt,
              "backend": backend, "want": "mask" if output == "mask" else "pixels",
              "mask": mask is not None}
    _timing("read", started)
    started = time.perf_counter()
    result = job.run(header, chunks, report)
    _timing("bridge", started, f" inside={json.dumps(result[0].get('seconds', {}))}")
    return result


def _apply(image, layer, output, result, data):
    if output == "mask":
        mask = layer.get_mask()
        if mask is None:
            mask = layer.create_mask(Gimp.AddMaskType.WHITE)
            layer.add_mask(mask)
        _write(mask, result["format"], data)
        return
    if output == "layer":
        target = layer.copy()
        image.insert_layer(target, layer.get_parent(), image.get_item_position(layer))
        target.set_name(f"{layer.get_name()} (background removed)")
        target.set_offsets(*layer.get_offsets()[1:])
    else:
        target = layer
    if not target.has_alpha():
        target.add_alpha()
    _write(target, result["format"], data)


def run(procedure, run_mode, image, drawables, config, data):
    if run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi

        GimpUi.init(PROC_NAME)
        dialog = GimpUi.ProcedureDialog.new(procedure, config, "Remove Background")
        dialog.fill(None)
        accepted = dialog.run()
        dialog.destroy()
        if not accepted:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    output = config.get_property("output")
    backend = config.get_property("backend")
    layers = list(drawables or [])
    if not layers:
        return _failure(procedure, "select one or more layers first",
                        Gimp.PDBStatusType.CALLING_ERROR)
    for drawable in layers:
        problem = _refusal(drawable, output)
        if problem:
            return _failure(procedure, f"Remove Background: {problem}.",
                            Gimp.PDBStatusType.CALLING_ERROR)
    try:
        python = load_settings()["python"]
        Gimp.progress_init("Removing the background")
        results = []
        for index, layer in enumerate(layers):
            name = layer.get_name()

            def report(stage, fraction, index=index, name=name):
                Gimp.progress_set_text(progress_text(stage, index, len(layers), name))
                Gimp.progress_update((index + fraction) / len(layers))

            results.append(_cut_out(python, layer, output, backend, report))
    except PluginError as exc:
        return _failure(procedure, f"Remove Background: {exc.message}")
    except Exception as exc:  # a bug must not take GIMP's undo stack with it
        return _failure(procedure, f"Remove Background failed unexpectedly: "
                        f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    Gimp.context_push()
    image.undo_group_start()
    try:
        for layer, (result, pixels) in zip(layers, results, strict=True):
            _apply(image, layer, output, result, pixels)
        _timing("write", started)
    except Exception as exc:
        return _failure(procedure, f"Remove Background could not write the result: "
                        f"{type(exc).__name__}: {exc}")
    finally:
        image.undo_group_end()
        Gimp.context_pop()
        Gimp.progress_end()
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


if Gimp is not None:

    class RemoveBackground(Gimp.PlugIn):
        def do_set_i18n(self, name):
            return False, None, None  # no translations shipped (yet)

        def do_query_procedures(self):
            return [PROC_NAME]

        def do_create_procedure(self, name):
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
            procedure.set_image_types("RGB*, GRAY*")
            procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                           | Gimp.ProcedureSensitivityMask.DRAWABLES)
            procedure.set_menu_label("Remove _Background…")
            procedure.add_menu_path("<Image>/Layer/Transparency")
            procedure.set_documentation(
                "Remove the background of the selected layers",
                "Cuts out each selected layer at its own size and offsets, with the "
                "WaveSpeedAI API or bgremove's offline model, as a layer mask (default), a "
                "new layer above, or the layer's own alpha. One undo step. Needs bgremove "
                "installed in a Python environment and `bgremove gimp install` run from it.",
                name)
            procedure.set_attribution("bgremove", "bgremove contributors (MIT)", "2025")
            procedure.add_choice_argument("output", "_Output", "Where the cut-out goes",
                                          _choice(OUTPUTS), "mask",
                                          GObject.ParamFlags.READWRITE)
            procedure.add_choice_argument("backend", "_Backend", "Which engine removes the "
                                          "background", _choice(BACKENDS), "auto",
                                          GObject.ParamFlags.READWRITE)
            return procedure


if __name__ == "__main__":
    Gimp.main(RemoveBackground.__gtype__, sys.argv)
