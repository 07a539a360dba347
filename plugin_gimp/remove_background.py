#!/usr/bin/env python3
"""Remove Background: a GIMP 3 plug-in that cuts out the selected layers.

Layer > Transparency > Remove Background... removes the background of each
selected layer, at the layer's own size and offsets, in one undo step. With an
active selection only the selection's bounding box (plus a margin for context)
is sent, and only selected pixels change, blended by how much they are selected:

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
plug-in runs the module ``bgremove.plugin_gimp.bridge`` with it (isolated, in the
plug-in's own folder), sending the layer's pixels as raw bytes on stdin and reading progress
and the result back on stdout (the protocol is described in
``plugin_gimp/bridge.py``). The bridge's log lines are copied to GIMP's
stderr and kept in a log file that error messages name. The API key comes
from WAVESPEED_API_KEY or bgremove's config file, never from a GIMP setting.

Cancel is safe at every moment: nothing in the image changes until every
selected layer has its result (a cancel kills the plug-in; the bridge sees its
stdin close and stops), and the progress, with its Cancel button, ends before
the write begins, so the write (one undo group) is never cut short.
"""

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

PROC_NAME = "python-fu-remove-background"
PROTOCOL = 1
SETTINGS_FILE = "bgremove-gimp.json"
# No mnemonics (underscores) in choice labels: GIMP shows them literally there.
OUTPUTS = (
    ("mask", "Layer mask (non-destructive)"),
    ("layer", "New layer above"),
    ("alpha", "The layer's own alpha"),
)
OUTPUT_LABELS = dict(OUTPUTS)
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
REINSTALL_HINT = "bgremove gimp install"
#: Set to 1 to print where the time goes (read, bridge, write) on GIMP's stderr.
TIMINGS_ENV = "BGREMOVE_GIMP_TIMINGS"
#: Context sent around a selection's bounding box: this fraction of its larger side,
#: at least MARGIN_MIN pixels (a subject cut at the box's edge is harder to recognise).
MARGIN_FRACTION = 0.1
MARGIN_MIN = 16
#: Lines of the bridge's stderr kept for an error message (all are copied to GIMP's stderr).
STDERR_TAIL = 20
HELP_DOMAIN = "bgremove"
HELP_FOLDER = "help"
LOG_PREFIX = "[Remove Background] "


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
            f"The plug-in is not set up ({path} is missing). Run `{REINSTALL_HINT}` "
            "from the Python environment bgremove is installed in.") from None
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


#: ``python -E -c BRIDGE_BOOTSTRAP`` starts the bridge isolated like ``python -I -m``
#: (no PYTHON* variables, no current folder on sys.path, so a ``json.py`` where GIMP
#: was started is never imported) but keeps the user's site-packages, where
#: ``pip install --user`` puts bgremove (pip's default on Windows without admin rights).
#: The current folder ('' for -c) is dropped before anything but ``sys`` is imported.
BRIDGE_MODULE = "bgremove.plugin_gimp.bridge"
BRIDGE_BOOTSTRAP = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
                    f"import runpy; runpy.run_module({BRIDGE_MODULE!r}, run_name='__main__', "
                    "alter_sys=True)")


def bridge_command(python, flatpak=None):
    """The bridge's command line (isolated, see BRIDGE_BOOTSTRAP)."""
    command = [python, "-E", "-c", BRIDGE_BOOTSTRAP]
    if os.path.exists("/.flatpak-info") if flatpak is None else flatpak:
        # GIMP from Flathub runs sandboxed: the environment lives on the host.
        command = ["flatpak-spawn", "--host", *command]
    return command


def missing_python_message(python):
    return (f"bgremove's Python environment is gone ({python} does not exist). Install "
            "bgremove again the way you installed it, then run "
            f"`{REINSTALL_HINT}` from that environment.")


def no_start_message(python, detail):
    return (f"bgremove cannot start in {python}: {detail}. Install it in that environment "
            f"(for example `\"{python}\" -m pip install bgremove`), or run "
            f"`{REINSTALL_HINT}` from the environment bgremove is installed in.")


def with_log(message, log_path):
    """The message, pointing to the log file when there is one."""
    if not log_path:
        return message
    return f"{message.rstrip()} Details are in {log_path}"


def selection_region(bounds, offsets, size, margin_fraction=MARGIN_FRACTION,
                     margin_min=MARGIN_MIN):
    """The part of a layer to send, in the layer's coordinates: (x, y, width, height).

    ``bounds`` is the selection's (x1, y1, x2, y2) in image coordinates, or None for
    no selection (the whole layer). The selection's box grows by a margin for
    context and is clipped to the layer. Returns None when the selection does
    not touch the layer at all.
    """
    width, height = size
    if bounds is None:
        return 0, 0, width, height
    x1, y1, x2, y2 = bounds
    ox, oy = offsets
    inside = (max(x1 - ox, 0), max(y1 - oy, 0), min(x2 - ox, width), min(y2 - oy, height))
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        return None
    margin = max(margin_min, round(max(x2 - x1, y2 - y1) * margin_fraction))
    left, top = max(inside[0] - margin, 0), max(inside[1] - margin, 0)
    right, bottom = min(inside[2] + margin, width), min(inside[3] + margin, height)
    return left, top, right - left, bottom - top


class BridgeJob:
    """One request to the bridge: start, send, follow progress, take the result."""

    def __init__(self, python, env=None, log_stream=None):
        self.python = python
        self.env = bridge_env() if env is None else env
        self.process = None
        self.cancelled = False
        self.log_path = None  # the bridge's log file, once its hello names it
        self._log_stream = log_stream  # where the bridge's lines are copied (GIMP's stderr)
        self._tail = collections.deque(maxlen=STDERR_TAIL)
        self._pump = None

    def start(self):
        if not os.path.exists(self.python):
            raise PluginError("environment", missing_python_message(self.python))
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
        try:
            self.process = subprocess.Popen(
                bridge_command(self.python), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self.env, cwd=plugin_folder(), creationflags=flags)
        except OSError as exc:
            self.close()
            raise PluginError("environment", no_start_message(self.python, exc)) from None
        self._pump = threading.Thread(target=self._copy_stderr, name="bgremove-stderr",
                                      daemon=True)
        self._pump.start()

    def _copy_stderr(self):
        """Copy the bridge's log lines to GIMP's terminal as they come; keep the last few."""
        stream = self._log_stream or sys.stderr
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            # no terminal at all (GIMP on Windows started from its icon): the log file has it
            with contextlib.suppress(OSError, ValueError, AttributeError):
                print(LOG_PREFIX + line, file=stream, flush=True)

    def run(self, header, chunks, on_progress=None, on_note=None):
        """Send ``header`` and the raw ``chunks``; return (result header, result bytes).

        Raises PluginError with the bridge's one-line message on failure.
        """
        if self.process is None:
            self.start()
        try:
            return self._exchange(header, chunks, on_progress, on_note)
        finally:
            self.close()

    def _exchange(self, header, chunks, on_progress, on_note):
        process = self.process
        stdout = process.stdout
        hello = self._read_message()
        if hello is None:
            raise PluginError("environment", no_start_message(self.python, self._diagnosis()))
        if hello.get("type") == "error":
            raise PluginError(hello.get("kind", "error"), hello.get("message", "failed"))
        self.log_path = hello.get("log") if isinstance(hello.get("log"), str) else None
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
            elif kind == "note":
                if on_note is not None:
                    on_note(str(message.get("text", "")))
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
        if self._pump is not None:
            self._pump.join(timeout=5)  # the lines written just before it exited
        lines = [line.strip() for line in self._tail if line.strip()]
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
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        if process is not None and process.stderr is not None:
            with contextlib.suppress(OSError):
                process.stderr.close()


def pixel_format(is_gray, has_alpha):
    """The babl format a layer is read in: 8-bit, perceptual, with alpha if it has one."""
    if is_gray:
        return "Y'A u8" if has_alpha else "Y' u8"
    return "R'G'B'A u8" if has_alpha else "R'G'B' u8"


def progress_text(stage, index, count, name, note=None):
    text = STAGE_TEXT.get(stage, "Removing the background")
    text = f"{text}: {name} ({index + 1} of {count})" if count > 1 else f"{text}: {name}"
    return f"{text} - {note}" if note else text


# ---------------------------------------------------------------------------
# The GIMP side
# ---------------------------------------------------------------------------

try:
    import gi

    gi.require_version("Gimp", "3.0")
    gi.require_version("Gegl", "0.4")
    from gi.repository import Gegl, Gimp, Gio, GLib, GObject
except (ImportError, ValueError):  # imported outside GIMP (the bridge's unit tests)
    Gimp = None


def _choice(items):
    choice = Gimp.Choice.new()
    for number, (nick, label) in enumerate(items):
        choice.add(nick, number, label, "")
    return choice


def _failure(procedure, message, status=None):
    # GIMP shows a returned error as "Execution error for 'Remove Background': ..."
    # itself, so the message neither repeats the name nor goes to Gimp.message() too.
    return procedure.new_return_values(status or Gimp.PDBStatusType.EXECUTION_ERROR,
                                       GLib.Error(message))


def _target(drawable):
    """The layer a drawable stands for: a layer mask means its layer (Filters > Repeat
    right after a mask run passes the new mask, which is then the active item)."""
    if drawable.is_layer_mask():
        layer = Gimp.Layer.from_mask(drawable)
        if layer is not None:
            return layer
    return drawable


def _refusal(drawable):
    """Why this drawable cannot be processed whatever the options, or None (asked before
    the dialog opens, so no one picks options only to hear no)."""
    if drawable.is_layer_mask():
        return "The layer mask's layer cannot be found: select the layer itself."
    if drawable.is_channel():
        return "A channel is selected: Remove Background works on layers."
    if not drawable.is_layer():
        return "Only layers can have their background removed."
    if drawable.is_group_layer():
        return (f"'{drawable.get_name()}' is a layer group: select the layers inside it, or "
                "merge the group first (Layer > Merge Layer Groups).")
    if drawable.is_floating_sel():
        return "Anchor the floating selection first (Layer > Anchor Floating Layer or Mask)."
    return None


def _option_refusal(drawable, output):
    """Why this drawable cannot take this output, or None."""
    if output in ("alpha", "layer"):
        precision = drawable.get_image().get_precision()
        if precision not in (Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL):
            return (f"Output “{OUTPUT_LABELS['layer']}” and “{OUTPUT_LABELS['alpha']}” "
                    "need an 8-bit image with perceptual gamma (Image > Encoding > 8 bit "
                    "integer, then Image > Encoding > Perceptual (sRGB)); Output "
                    f"“{OUTPUT_LABELS['mask']}” works at any encoding.")
    if output == "alpha" and (drawable.get_lock_alpha() or drawable.get_lock_content()):
        return (f"'{drawable.get_name()}' has its alpha or pixels locked: unlock them first, "
                f"or choose Output “{OUTPUT_LABELS['mask']}”.")
    return None


def _selection_bounds(image):
    """The selection's (x1, y1, x2, y2) in image coordinates, or None without one."""
    _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)  # x2, y2 exclusive
    return (x1, y1, x2, y2) if non_empty else None


def _rect(region):
    return Gegl.Rectangle.new(*region)


def _read(drawable, fmt, region):
    return drawable.get_buffer().get(_rect(region), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)


def _write(drawable, fmt, data, region):
    buffer = drawable.get_buffer()
    buffer.set(_rect(region), fmt, data)
    buffer.flush()
    drawable.update(*region)


def _timing(what, started, extra=""):
    if os.environ.get(TIMINGS_ENV) == "1":
        print(f"bgremove-timing {what}={time.perf_counter() - started:.3f}{extra}",
              file=sys.stderr, flush=True)


class Job:
    """One layer's request: what is sent, and what comes back to be written."""

    def __init__(self, layer, region):
        self.layer = layer
        self.region = region  # (x, y, w, h) in the layer's coordinates
        self.result = None
        self.data = None


def _cut_out(python, job, output, backend, bounds, report, note):
    """Ask the bridge for this layer's result; nothing in the image changes here."""
    started = time.perf_counter()
    layer, region = job.layer, job.region
    bridge = BridgeJob(python)
    bridge.start()  # Python starts up while GIMP hands over the pixels
    try:
        fmt = pixel_format(layer.is_gray(), layer.has_alpha())
        chunks = [_read(layer, fmt, region)]
        mask = layer.get_mask() if output == "mask" else None
        if mask is not None:
            chunks.append(_read(mask, "Y u8", region))
        if bounds is not None:
            ox, oy = layer.get_offsets()[1:]
            x, y, w, h = region
            chunks.append(_read(job.layer.get_image().get_selection(), "Y u8",
                                (ox + x, oy + y, w, h)))
    except BaseException:
        bridge.cancel()
        bridge.close()
        raise
    header = {"width": region[2], "height": region[3], "format": fmt, "backend": backend,
              "want": "mask" if output == "mask" else "pixels", "mask": mask is not None,
              "selection": bounds is not None}
    _timing("read", started)
    started = time.perf_counter()
    try:
        job.result, job.data = bridge.run(header, chunks, report, note)
    except PluginError as exc:
        if exc.kind != "cancelled":
            exc.message = with_log(exc.message, bridge.log_path)
        raise
    _timing("bridge", started, f" inside={json.dumps(job.result.get('seconds', {}))}")


def _apply(image, job, output):
    layer, result, data, region = job.layer, job.result, job.data, job.region
    if output == "mask":
        mask = layer.get_mask()
        if mask is None:
            mask = layer.create_mask(Gimp.AddMaskType.WHITE)
            layer.add_mask(mask)
        _write(mask, result["format"], data, region)
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
    _write(target, result["format"], data, region)


def _write_all(image, jobs, output):
    """Write every result as one undo step. Called after the progress has ended, so
    GIMP offers no Cancel (which kills the plug-in) while the image changes."""
    started = time.perf_counter()
    Gimp.context_push()
    image.undo_group_start()
    try:
        for job in jobs:
            _apply(image, job, output)
    finally:
        image.undo_group_end()
        Gimp.context_pop()
    _timing("write", started)


def _dialog(procedure, config):
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(PROC_NAME)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Remove Background")
    dialog.fill(None)
    accepted = dialog.run()
    dialog.destroy()
    return accepted


def run(procedure, run_mode, image, drawables, config, data):
    layers = [_target(drawable) for drawable in drawables or []]
    if not layers:
        return _failure(procedure, "Select one or more layers first.",
                        Gimp.PDBStatusType.CALLING_ERROR)
    for layer in layers:
        problem = _refusal(layer)
        if problem:
            return _failure(procedure, problem, Gimp.PDBStatusType.CALLING_ERROR)
    bounds = _selection_bounds(image)
    jobs = []
    for layer in layers:
        region = selection_region(bounds, layer.get_offsets()[1:],
                                  (layer.get_width(), layer.get_height()))
        if region is None:
            return _failure(procedure, f"The selection does not touch '{layer.get_name()}': "
                            "select part of the layer, or Select > None for all of it.",
                            Gimp.PDBStatusType.CALLING_ERROR)
        jobs.append(Job(layer, region))

    if run_mode == Gimp.RunMode.INTERACTIVE and not _dialog(procedure, config):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    output = config.get_property("output")
    backend = config.get_property("backend")
    for layer in layers:
        problem = _option_refusal(layer, output)
        if problem:
            return _failure(procedure, problem, Gimp.PDBStatusType.CALLING_ERROR)
    try:
        python = load_settings()["python"]
        Gimp.progress_init("Removing the background")
        for index, job in enumerate(jobs):
            name = job.layer.get_name()
            state = {"stage": "prepare", "note": None}

            def report(stage, fraction, index=index, name=name, state=state):
                if stage != state["stage"]:
                    state.update(stage=stage, note=None)
                Gimp.progress_set_text(progress_text(stage, index, len(jobs), name,
                                                     state["note"]))
                Gimp.progress_update((index + fraction) / len(jobs))

            def note(text, index=index, name=name, state=state):
                state["note"] = text
                Gimp.progress_set_text(progress_text(state["stage"], index, len(jobs), name,
                                                     text))

            _cut_out(python, job, output, backend, bounds, report, note)
    except PluginError as exc:
        Gimp.progress_end()
        if exc.kind == "cancelled":
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        return _failure(procedure, exc.message)
    except Exception as exc:  # a bug must not take GIMP's undo stack with it
        Gimp.progress_end()
        return _failure(procedure, "Failed unexpectedly (please report it): "
                        f"{type(exc).__name__}: {exc}")

    # Every result is here. End the progress first: that takes GIMP's Cancel away (a
    # Cancel kills the plug-in), so the write below always runs to its end.
    Gimp.progress_end()
    try:
        _write_all(image, jobs, output)
    except Exception as exc:
        return _failure(procedure, "The result could not be written: "
                        f"{type(exc).__name__}: {exc}")
    Gimp.displays_flush()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


if Gimp is not None:

    class RemoveBackground(Gimp.PlugIn):
        def do_set_i18n(self, name):
            return False, None, None  # no translations shipped (yet)

        def do_query_procedures(self):
            # The dialog's Help button opens help/en/index.html beside this file.
            self.set_help_domain(HELP_DOMAIN, Gio.File.new_for_path(
                os.path.join(plugin_folder(), HELP_FOLDER)))
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
                "new layer above, or the layer's own alpha. With a selection, only selected "
                "pixels change. One undo step. Needs bgremove installed in a Python "
                "environment and `bgremove gimp install` run from it.",
                name)
            procedure.set_attribution("bgremove", "bgremove contributors (MIT)", "2025")
            procedure.add_choice_argument("output", "Out_put", "Where the cut-out goes",
                                          _choice(OUTPUTS), "mask",
                                          GObject.ParamFlags.READWRITE)
            procedure.add_choice_argument("backend", "_Backend", "Which engine removes the "
                                          "background", _choice(BACKENDS), "auto",
                                          GObject.ParamFlags.READWRITE)
            return procedure


if __name__ == "__main__":
    Gimp.main(RemoveBackground.__gtype__, sys.argv)
