"""The GIMP plug-in's bridge and installer, without GIMP.

The plug-in file's bridge client (``BridgeJob`` in remove_background.py, which
imports without gi outside GIMP) drives the real bridge subprocess
(``python -m bgremove.plugin_gimp.bridge``) against the emulator on 127.0.0.1: the same
code path GIMP runs, minus GIMP's pixel reads and writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageChops

from bgremove.commands.gimp import register
from bgremove.emulator import Emulator, Fault, keyout_alpha
from bgremove.errors import (
    AuthenticationError,
    MissingKeyError,
    RateLimitError,
    ServiceConnectionError,
    ServiceTimeoutError,
)
from bgremove.plugin_gimp import bridge, install

REPO = Path(__file__).resolve().parent.parent
PLUGIN_FILE = REPO / "plugin_gimp" / "remove_background.py"
FAST = ("wavespeed:\n  poll: {initial: 0.05, max: 0.2}\n"
        "  retry: {max_attempts: 2, backoff_initial: 0.01, backoff_max: 0.05}\n")


def load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bgremove_gimp_plugin", PLUGIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = load_plugin()


@pytest.fixture
def bridge_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """The bridge's environment: a config file with fast retries, plus the given variables."""

    def make(extra_config: str = "", **variables: str) -> dict[str, str]:
        config = tmp_path / "config.yaml"
        config.write_text(FAST + extra_config, encoding="utf-8")
        config.chmod(0o600)
        env = dict(os.environ, BGREMOVE_CONFIG=str(config),
                   XDG_CACHE_HOME=str(tmp_path / "cache"), **variables)
        return dict(plugin.bridge_env(env))

    return make


def emulator_env(emu: Emulator, make: Callable[..., dict[str, str]], **more: str
                 ) -> dict[str, str]:
    return make(WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url, **more)


def header(image: Image.Image, **fields: Any) -> dict[str, Any]:
    formats = {"RGBA": "R'G'B'A u8", "RGB": "R'G'B' u8", "LA": "Y'A u8", "L": "Y' u8"}
    return {"width": image.width, "height": image.height, "format": formats[image.mode],
            "backend": "wavespeed", "want": "mask", "mask": False, **fields}


def run_job(env: dict[str, str], request: dict[str, Any], chunks: list[bytes],
            progress: list[tuple[str, float]] | None = None) -> tuple[dict[str, Any], bytes]:
    job = plugin.BridgeJob(sys.executable, env)
    result: tuple[dict[str, Any], bytes] = job.run(
        request, chunks, None if progress is None else lambda s, f: progress.append((s, f)))
    return result


# --- argument handling -----------------------------------------------------------------------

def good_header(**fields: Any) -> bytes:
    data = {"protocol": 1, "width": 4, "height": 3, "format": "R'G'B'A u8",
            "backend": "auto", "want": "mask", "mask": False, **fields}
    return json.dumps(data).encode()


def test_a_good_header_is_parsed_with_its_sizes() -> None:
    request = bridge.parse_request(good_header(mask=True, want="pixels", format="Y' u8"))
    assert (request.width, request.height, request.format) == (4, 3, "Y' u8")
    assert request.pixel_bytes == 12 and request.mask_bytes == 12
    assert request.want == "pixels" and request.backend == "auto"


@pytest.mark.parametrize(("fields", "named"), [
    ({"protocol": 2}, "bgremove gimp install"),
    ({"width": 0}, "width"),
    ({"height": -3}, "height"),
    ({"width": "12"}, "width"),
    ({"width": True}, "width"),
    ({"format": "RGBA float"}, "format"),
    ({"backend": "remove.bg"}, "backend"),
    ({"want": "everything"}, "want"),
    ({"mask": "yes"}, "mask"),
    ({"width": 100_000, "height": 100_000}, "more than"),
])
def test_a_bad_header_is_refused_naming_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(bridge.RequestError, match=named):
        bridge.parse_request(good_header(**fields))


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b"\xff\xfe\n"])
def test_a_header_that_is_not_a_json_object_is_refused(line: bytes) -> None:
    with pytest.raises(bridge.RequestError):
        bridge.parse_request(line)


def test_the_bridge_refuses_a_bad_request_with_one_error_line(
        bridge_env: Callable[..., dict[str, str]]) -> None:
    with pytest.raises(plugin.PluginError) as caught:
        run_job(bridge_env(), {"width": 2, "height": 2, "format": "CMYK u8",
                               "backend": "local", "want": "mask", "mask": False}, [b"\0" * 16])
    assert caught.value.kind == "request" and "CMYK" in caught.value.message


# --- buffer round trip -----------------------------------------------------------------------

def test_rgb_layer_in_mask_out_exactly_the_key_out_at_full_size(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image((257, 131))  # odd sizes: no row padding hides a stride bug
    progress: list[tuple[str, float]] = []
    result, data = run_job(emulator_env(emulator, bridge_env), header(image),
                           [image.tobytes()], progress)
    assert result["format"] == "Y u8" and (result["width"], result["height"]) == (257, 131)
    assert data == keyout_alpha(image).tobytes()
    stages = [stage for stage, _ in progress]
    for stage in ("upload", "wait", "download"):
        assert stage in stages
    fractions = [fraction for _, fraction in progress]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0


def test_rgba_layer_with_an_existing_mask_gets_the_minimum_of_both(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image((96, 64), mode="RGBA")  # with a half-transparent stripe
    old_mask = Image.linear_gradient("L").resize(image.size)
    _, data = run_job(emulator_env(emulator, bridge_env), header(image, mask=True),
                      [image.tobytes(), old_mask.tobytes()])
    expected = ImageChops.darker(keyout_alpha(image), old_mask)
    assert data == expected.tobytes()
    assert data != keyout_alpha(image).tobytes() and data != old_mask.tobytes()  # both count


def test_pixels_mode_keeps_the_colours_and_replaces_only_the_alpha(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image((80, 60), mode="RGBA")
    result, data = run_job(emulator_env(emulator, bridge_env), header(image, want="pixels"),
                           [image.tobytes()])
    assert result["format"] == "R'G'B'A u8"
    out = Image.frombytes("RGBA", image.size, data)
    assert out.convert("RGB").tobytes() == image.convert("RGB").tobytes()
    assert out.getchannel("A").tobytes() == keyout_alpha(image).tobytes()


def test_a_layer_without_alpha_comes_back_with_an_alpha_channel(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    grey = keyed_image((40, 30)).convert("L")
    result, data = run_job(emulator_env(emulator, bridge_env), header(grey, want="pixels"),
                           [grey.tobytes()])
    assert result["format"] == "Y'A u8" and len(data) == 40 * 30 * 2
    out = Image.frombytes("LA", grey.size, data)
    assert out.getchannel("L").tobytes() == grey.tobytes()
    assert out.getchannel("A").tobytes() == keyout_alpha(grey.convert("RGB")).tobytes()


def test_a_smaller_mask_from_the_backend_is_scaled_to_the_layer() -> None:
    request = bridge.parse_request(good_header(width=40, height=30, format="R'G'B' u8"))
    small = Image.new("L", (20, 15), 200)
    fmt, data = bridge.combine(request, b"\0" * 40 * 30 * 3, small, None)
    assert fmt == "Y u8" and data == bytes([200]) * (40 * 30)


def test_an_opaque_rgba_layer_is_uploaded_as_rgb() -> None:
    request = bridge.parse_request(good_header(width=2, height=1))
    assert bridge.to_source_image(request, bytes([1, 2, 3, 255, 4, 5, 6, 255])).mode == "RGB"
    assert bridge.to_source_image(request, bytes([1, 2, 3, 255, 4, 5, 6, 7])).mode == "RGBA"


# --- error mapping ---------------------------------------------------------------------------

def failure(env: dict[str, str], image: Image.Image) -> Any:
    with pytest.raises(plugin.PluginError) as caught:
        run_job(env, header(image), [image.tobytes()])
    return caught.value


def test_no_key_says_where_to_put_one(bridge_env: Callable[..., dict[str, str]],
                                      keyed_image: Callable[..., Image.Image]) -> None:
    error = failure(bridge_env(), keyed_image())
    assert error.kind == "missing_key"
    assert "WAVESPEED_API_KEY" in error.message and "Local model (offline)" in error.message
    assert "config.yaml" in error.message  # the file the bridge actually reads


def test_a_wrong_key_gets_one_message_without_the_key(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(api_key="the-right-key-123")
    env = bridge_env(WAVESPEED_API_KEY="a-wrong-key-456", WAVESPEED_BASE_URL=emu.base_url)
    error = failure(env, keyed_image())
    assert error.kind == "auth"
    assert "topped up" in error.message and "a-wrong-key-456" not in error.message


def test_rate_limited_after_retries_says_to_wait(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="*", status=429, every=1,
                                         retry_after="0"),))
    error = failure(emulator_env(emu, bridge_env), keyed_image())
    assert error.kind == "rate_limited" and "Wait a minute" in error.message
    assert "wavespeed.account_level" in error.message


def test_a_timeout_says_to_try_again(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    # The task takes far longer than the 1 s overall deadline; the loose bound only shows
    # the bridge gave up at its deadline instead of sitting out the task.
    emu = emulator_factory(delay=120.0)
    env = emulator_env(emu, bridge_env, extra_config="")
    config = Path(env["BGREMOVE_CONFIG"])
    config.write_text(FAST + "  wait: poll\n  timeouts: {result: 0.5, overall: 1.0}\n",
                      encoding="utf-8")
    started = time.monotonic()
    error = failure(env, keyed_image())
    assert error.kind == "timeout" and "Try again" in error.message
    assert time.monotonic() - started < 60.0  # did not sit out the whole task


def test_offline_says_to_check_the_connection(
        bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = bridge_env(WAVESPEED_API_KEY="k-offline", WAVESPEED_BASE_URL=f"http://127.0.0.1:{port}")
    error = failure(env, keyed_image())
    assert error.kind == "connection" and "internet connection" in error.message


@pytest.mark.parametrize(("error", "says"), [
    (MissingKeyError(), "WAVESPEED_API_KEY"),
    (AuthenticationError("the service refused the API key", status_code=401), "topped up"),
    (RateLimitError("rate limited", status_code=429), "Wait a minute"),
    (ServiceTimeoutError("no answer in 30 s"), "Try again"),
    (ServiceConnectionError("cannot connect"), "internet connection"),
])
def test_each_service_error_has_a_next_step_for_gimp_users(error: Any, says: str) -> None:
    message = bridge.user_message(error, "/home/u/.config/bgremove/config.yaml")
    assert says in message and "\n" not in message
    assert "--backend" not in message  # command-line advice is no use inside GIMP
    assert message.startswith(error.message.rstrip("."))


# --- cancel ----------------------------------------------------------------------------------

def start_slow_job(emu: Emulator, env: dict[str, str], image: Image.Image
                   ) -> tuple[Any, threading.Thread, dict[str, Any], threading.Event]:
    job = plugin.BridgeJob(sys.executable, env)
    outcome: dict[str, Any] = {}
    waiting = threading.Event()

    def progress(stage: str, fraction: float) -> None:
        if stage == "wait":
            waiting.set()

    def work() -> None:
        try:
            outcome["result"] = job.run(header(image), [image.tobytes()], progress)
        except plugin.PluginError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    assert waiting.wait(20), "the job never reached the waiting stage"
    return job, thread, outcome, waiting


def test_cancel_kills_the_bridge_and_returns_nothing(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=30.0)
    image = keyed_image()
    job, thread, outcome, _ = start_slow_job(emu, emulator_env(emu, bridge_env), image)
    started = time.monotonic()
    job.cancel()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert "result" not in outcome and outcome["error"].kind == "cancelled"
    assert job.process.poll() is not None  # the subprocess is gone


def test_the_bridge_stops_by_itself_when_the_plugin_dies(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    """GIMP's cancel kills the plug-in process: the bridge sees stdin close and exits."""
    emu = emulator_factory(delay=30.0)
    image = keyed_image()
    process = subprocess.Popen([sys.executable, "-m", "bgremove.plugin_gimp.bridge"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=emulator_env(emu, bridge_env))
    assert process.stdin is not None and process.stdout is not None
    try:
        assert json.loads(process.stdout.readline())["type"] == "hello"
        process.stdin.write(json.dumps({"protocol": 1, **header(image)}).encode() + b"\n")
        process.stdin.write(image.tobytes())
        process.stdin.flush()
        while json.loads(process.stdout.readline()).get("stage") != "wait":
            pass
        started = time.monotonic()
        process.stdin.close()  # what the kernel does when GIMP kills the plug-in
        assert process.wait(timeout=10) == bridge.EXIT_CANCELLED
        assert time.monotonic() - started < bridge.CANCEL_GRACE + 5
        assert emu.stats()["requests"].get("download", {}) == {}  # never fetched a result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


# --- environment missing or broken ---------------------------------------------------------

def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)
    return str(script)


def fix_message(python: str, env: dict[str, str]) -> Any:
    with pytest.raises(plugin.PluginError) as caught:
        plugin.BridgeJob(python, env).run(header(Image.new("RGB", (2, 2))), [b"\0" * 12])
    return caught.value


def test_a_missing_interpreter_says_to_reinstall(tmp_path: Path,
                                                  bridge_env: Callable[..., dict[str, str]]
                                                  ) -> None:
    error = fix_message(str(tmp_path / "gone" / "bin" / "python"), bridge_env())
    assert error.kind == "environment"
    assert "does not exist" in error.message and "bgremove gimp install" in error.message


@pytest.mark.skipif(os.name != "posix", reason="the stand-in interpreter is a shell script")
def test_an_interpreter_without_bgremove_says_how_to_install_it(
        tmp_path: Path, bridge_env: Callable[..., dict[str, str]]) -> None:
    # -I -S: no site-packages and no current folder, as a Python without bgremove
    python = fake_python(tmp_path, f'exec "{sys.executable}" -I -S "$@"')
    error = fix_message(python, bridge_env())
    assert error.kind == "environment"
    assert "No module named" in error.message
    assert "pip install bgremove" in error.message and "bgremove gimp install" in error.message


@pytest.mark.skipif(os.name != "posix", reason="the stand-in interpreter is a shell script")
def test_a_broken_dependency_says_how_to_repair_the_environment(
        tmp_path: Path, bridge_env: Callable[..., dict[str, str]]) -> None:
    broken = tmp_path / "broken"
    (broken / "yaml").mkdir(parents=True)
    (broken / "yaml" / "__init__.py").write_text("raise ImportError('yaml is broken')\n")
    # The bridge runs isolated (-I ignores PYTHONPATH): put the broken package first by hand.
    code = (f"import sys; sys.path.insert(0, {str(broken)!r}); import runpy; "
            "runpy.run_module('bgremove.plugin_gimp.bridge', run_name='__main__')")
    python = fake_python(tmp_path, f'exec "{sys.executable}" -c "{code}"')
    error = fix_message(python, bridge_env())
    assert error.kind == "environment"
    assert "yaml is broken" in error.message and "--force-reinstall bgremove" in error.message


def test_gimps_python_variables_do_not_reach_the_bridge() -> None:
    env = plugin.bridge_env({"PYTHONHOME": "/gimp/python", "PYTHONPATH": "/gimp/lib",
                             "WAVESPEED_API_KEY": "k", "PATH": "/bin"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env
    assert env["WAVESPEED_API_KEY"] == "k" and env["PATH"] == "/bin"


def test_settings_missing_or_stale_say_to_run_install(tmp_path: Path) -> None:
    with pytest.raises(plugin.PluginError, match="bgremove gimp install"):
        plugin.load_settings(str(tmp_path))
    (tmp_path / plugin.SETTINGS_FILE).write_text(json.dumps({"python": "/x", "protocol": 0}))
    with pytest.raises(plugin.PluginError, match="do not match"):
        plugin.load_settings(str(tmp_path))
    (tmp_path / plugin.SETTINGS_FILE).write_text(json.dumps({"python": "/x", "protocol": 1}))
    assert plugin.load_settings(str(tmp_path))["python"] == "/x"


def test_the_plugin_file_imports_only_the_standard_library_and_gi() -> None:
    import ast

    tree = ast.parse(PLUGIN_FILE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names - {"gi"} <= set(sys.stdlib_module_names), names
    assert plugin.PROTOCOL == bridge.PROTOCOL


# --- install ---------------------------------------------------------------------------------

def test_install_puts_the_plugin_where_gimp_registers_it(tmp_path: Path) -> None:
    plugins = tmp_path / "plug-ins"
    [path] = install.install(plugins, python="/opt/env/bin/python")
    assert path == plugins / "python-fu-remove-background" / "python-fu-remove-background.py"
    assert path.read_bytes() == PLUGIN_FILE.read_bytes()
    if os.name == "posix":
        assert path.stat().st_mode & stat.S_IXUSR
    settings = json.loads((path.parent / "bgremove-gimp.json").read_text())
    assert settings["python"] == "/opt/env/bin/python" and settings["protocol"] == 1


def test_install_records_this_interpreter_unresolved(tmp_path: Path) -> None:
    [path] = install.install(tmp_path)
    settings = json.loads((path.parent / "bgremove-gimp.json").read_text())
    assert settings["python"] == sys.executable  # a venv's bin/python stays the venv's


def test_status_reports_installed_current_and_stale(tmp_path: Path) -> None:
    missing = install.status(tmp_path)
    assert not missing.installed and not missing.current and "bgremove gimp install" in \
        missing.message
    [path] = install.install(tmp_path)
    good = install.status(tmp_path)
    assert good.installed and good.current and good.path == path
    assert good.python == sys.executable
    path.write_text(path.read_text() + "\n# edited\n")
    stale = install.status(tmp_path)
    assert stale.installed and not stale.current and "differs" in stale.message
    install.install(tmp_path, python=str(tmp_path / "no-such-python"))
    gone = install.status(tmp_path)
    assert not gone.current and "no longer exists" in gone.message
    install.install(tmp_path)
    (path.parent / "help" / "en" / "index.html").unlink()  # installed by an older bgremove
    no_help = install.status(tmp_path)
    assert not no_help.current and "help page is missing" in no_help.message


def test_uninstall_removes_the_folder_and_says_when_there_was_nothing(tmp_path: Path) -> None:
    [path] = install.install(tmp_path)
    (path.parent / "__pycache__").mkdir()
    (path.parent / "__pycache__" / "x.pyc").write_bytes(b"")
    assert install.uninstall(tmp_path) == [path.parent]
    assert not path.parent.exists()
    assert install.uninstall(tmp_path) == []


@pytest.mark.parametrize(("platform", "env", "expected"), [
    ("win32", {"APPDATA": r"C:\Users\u\AppData\Roaming", "HOME": "/h"},
     [Path(r"C:\Users\u\AppData\Roaming") / "GIMP" / "3.0" / "plug-ins"]),
    ("darwin", {"HOME": "/Users/u"},
     [Path("/Users/u/Library/Application Support/GIMP/3.0/plug-ins")]),
    ("linux", {"HOME": "/home/u"}, [Path("/home/u/.config/GIMP/3.0/plug-ins")]),
    ("linux", {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}, [Path("/cfg/GIMP/3.0/plug-ins")]),
])
def test_default_plugin_folders_per_platform(platform: str, env: dict[str, str],
                                             expected: list[Path]) -> None:
    assert install.default_plugin_dirs(env, platform) == expected


def test_the_flatpak_folder_is_added_when_gimps_flatpak_is_there(tmp_path: Path) -> None:
    (tmp_path / ".var" / "app" / "org.gimp.GIMP").mkdir(parents=True)
    dirs = install.default_plugin_dirs({"HOME": str(tmp_path)}, "linux")
    assert dirs == [tmp_path / ".config" / "GIMP" / "3.0" / "plug-ins",
                    tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0"
                    / "plug-ins"]


def test_install_into_an_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    from bgremove.errors import OutputError

    with pytest.raises(OutputError, match="--plugins-dir"):
        install.install(blocker / "plug-ins")


def test_the_cli_installs_reports_and_uninstalls(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from bgremove.cli import main

    assert main(["gimp", "install", "--plugins-dir", str(tmp_path)]) == 0
    assert "python-fu-remove-background.py" in capsys.readouterr().out
    assert main(["gimp", "status", "--plugins-dir", str(tmp_path)]) == 0
    assert "installed at" in capsys.readouterr().out
    assert main(["gimp", "uninstall", "--plugins-dir", str(tmp_path)]) == 0
    assert main(["gimp", "status", "--plugins-dir", str(tmp_path)]) == 1
    assert "not installed" in capsys.readouterr().out


def test_every_gimp_action_has_help_text() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    gimp = next(a for a in parser._subparsers._group_actions  # type: ignore[union-attr]
                ).choices["gimp"]
    actions = next(a for a in gimp._actions if isinstance(a, argparse._SubParsersAction))
    assert set(actions.choices) == {"install", "uninstall", "status"}
    for choice in actions._choices_actions:
        assert choice.help


def test_the_cli_module_imports_nothing_heavy() -> None:
    code = ("import sys, bgremove.commands.gimp; "
            "print([m for m in ('httpx', 'PIL', 'numpy', 'bgremove.plugin_gimp.install') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


# --- isolation (a json.py where GIMP was started) ------------------------------------------

def hostile_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder holding a ``json.py`` that leaves a marker when imported."""
    folder = tmp_path / "started-here"
    folder.mkdir()
    marker = tmp_path / "json-py-was-imported"
    (folder / "json.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('hijacked')\n")
    return folder, marker


def test_the_bridge_command_never_imports_from_the_current_folder_or_pythonpath(
        tmp_path: Path) -> None:
    folder, marker = hostile_folder(tmp_path)
    for env in ({}, {"PYTHONPATH": str(folder)}):  # GIMP's Python may set PYTHONPATH
        done = subprocess.run(plugin.bridge_command(sys.executable, flatpak=False),
                              cwd=folder, input=b"", capture_output=True, timeout=60,
                              env={**os.environ, **env}, check=False)
        assert json.loads(done.stdout.splitlines()[0])["type"] == "hello", done.stderr
        assert done.returncode == bridge.EXIT_CANCELLED  # stdin closed: nothing asked
        assert not marker.exists(), env
    flatpak = plugin.bridge_command("/env/bin/python", flatpak=True)
    assert flatpak[:2] == ["flatpak-spawn", "--host"]
    assert flatpak[2:] == plugin.bridge_command("/env/bin/python", flatpak=False)


@pytest.mark.skipif(os.name != "posix", reason="finds the base interpreter in bin/")
def test_the_bridge_keeps_the_users_site_packages() -> None:
    """Unlike -I, which drops it: `pip install --user` puts bgremove there (pip's default
    on Windows without admin rights). Checked with the base interpreter (a venv has no
    user site of its own)."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    command = plugin.bridge_command(str(base), flatpak=False)
    code = (command[-1].split("import runpy")[0]
            + "import site; print(site.ENABLE_USER_SITE, '' in sys.path)")
    done = subprocess.run([*command[:-1], code], capture_output=True, text=True, check=True,
                          timeout=60)
    assert done.stdout.split() == ["True", "False"]
    isolated = subprocess.run([str(base), "-I", "-c", "import site; print(site.ENABLE_USER_SITE)"],
                              capture_output=True, text=True, check=True, timeout=60)
    assert isolated.stdout.strip() == "False"  # what -I would have cost


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/cwd")
def test_the_bridge_runs_in_the_plugins_folder_whatever_gimps_folder(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, marker = hostile_folder(tmp_path)
    monkeypatch.chdir(folder)  # GIMP's (and so the plug-in's) current folder
    image = keyed_image((40, 30))
    job = plugin.BridgeJob(sys.executable, emulator_env(emulator, bridge_env))
    job.start()
    assert os.readlink(f"/proc/{job.process.pid}/cwd") == plugin.plugin_folder()
    _, data = job.run(header(image), [image.tobytes()])
    assert data == keyout_alpha(image).tobytes()
    assert not marker.exists()


# --- logs ------------------------------------------------------------------------------------

def test_a_failing_run_names_a_log_file_holding_the_bridges_lines(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image], tmp_path: Path) -> None:
    import io

    emu = emulator_factory(api_key="the-right-key-123")
    env = bridge_env(WAVESPEED_API_KEY="a-wrong-key-456", WAVESPEED_BASE_URL=emu.base_url)
    terminal = io.StringIO()  # stands in for GIMP's stderr
    image = keyed_image()
    job = plugin.BridgeJob(sys.executable, env, log_stream=terminal)
    with pytest.raises(plugin.PluginError):
        job.run(header(image), [image.tobytes()])
    log_file = tmp_path / "cache" / "bgremove" / bridge.LOG_NAME
    assert job.log_path == str(log_file)
    text = log_file.read_text(encoding="utf-8")
    assert "64x48" in text and "refused the API key" in text
    assert "a-wrong-key-456" not in text
    lines = terminal.getvalue().splitlines()
    assert lines and all(line.startswith(plugin.LOG_PREFIX) for line in lines)
    assert any("refused the API key" in line for line in lines)
    assert "a-wrong-key-456" not in terminal.getvalue()


def test_the_plugin_puts_the_log_path_in_its_error_message() -> None:
    assert plugin.with_log("The key was refused.", "/c/gimp-plugin.log") == \
        "The key was refused. Details are in /c/gimp-plugin.log"
    assert plugin.with_log("No bridge.", None) == "No bridge."


def test_retries_reach_the_status_bar_as_notes(
        emulator_factory: Callable[..., Emulator], bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="submit", status=503, first=1),))
    image = keyed_image()
    notes: list[str] = []
    job = plugin.BridgeJob(sys.executable, emulator_env(emu, bridge_env))
    job.run(header(image), [image.tobytes()], None, notes.append)
    assert any(note.startswith("retrying in ") for note in notes), notes
    text = plugin.progress_text("upload", 0, 1, "photo", notes[0])
    assert text.startswith("Uploading: photo - retrying in ")
    assert "request id" not in text


def test_a_retry_note_says_what_happens_next_first() -> None:
    note = bridge.status_note("submit: the service failed on its side (HTTP 503): Service "
                              "unavailable [request id 12ab]; retrying in 1.22 s (attempt 2 "
                              "of 5)\nsecond line")
    assert note == ("retrying in 1.22 s (attempt 2 of 5): submit: the service failed on its "
                    "side (HTTP 503): Service unavailable")
    assert bridge.status_note("direct upload refused (HTTP 403): using the binary upload") == \
        "direct upload refused (HTTP 403): using the binary upload"


# --- the selection ---------------------------------------------------------------------------

def test_with_a_selection_only_selected_pixels_change_blended_by_its_value() -> None:
    request = bridge.parse_request(good_header(width=4, height=1, format="R'G'B'A u8",
                                               want="pixels", selection=True))
    assert request.selection_bytes == 4
    pixels = bytes([9, 9, 9, 200] * 4)
    cut = Image.frombytes("L", (4, 1), bytes([0, 0, 0, 255]))
    fmt, data = bridge.combine(request, pixels, cut, None, bytes([0, 255, 128, 255]))
    alphas = list(data[3::4])
    assert fmt == "R'G'B'A u8" and data[0::4] == bytes([9] * 4)
    assert alphas == [200, 0, 100, 200]  # unselected, selected, half selected, min(old, cut)


def test_a_mask_within_a_selection_starts_white_where_there_was_none() -> None:
    request = bridge.parse_request(good_header(width=3, height=1, format="R'G'B' u8",
                                               selection=True))
    cut = Image.new("L", (3, 1), 0)
    fmt, data = bridge.combine(request, b"\0" * 9, cut, None, bytes([0, 255, 51]))
    assert fmt == "Y u8" and list(data) == [255, 0, 204]
    fmt, data = bridge.combine(request, b"\0" * 9, cut, bytes([100, 100, 100]),
                               bytes([0, 255, 51]))
    assert list(data) == [100, 0, 80]


def test_selection_must_be_true_or_false() -> None:
    with pytest.raises(bridge.RequestError, match="selection"):
        bridge.parse_request(good_header(selection="yes"))


def test_the_selection_is_sent_after_the_pixels_and_comes_back_blended(
        emulator: Emulator, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image((60, 40))
    selection = Image.new("L", image.size, 0)
    selection.paste(255, (0, 0, 30, 40))  # the left half
    _result, data = run_job(emulator_env(emulator, bridge_env),
                           header(image, selection=True), [image.tobytes(), selection.tobytes()])
    expected = Image.composite(keyout_alpha(image), Image.new("L", image.size, 255), selection)
    assert data == expected.tobytes()
    assert data != keyout_alpha(image).tobytes()


@pytest.mark.parametrize(("bounds", "offsets", "size", "region"), [
    (None, (5, 5), (100, 80), (0, 0, 100, 80)),  # no selection: the whole layer
    ((10, 10, 50, 30), (0, 0), (200, 200), (0, 0, 66, 46)),  # margin 16, clipped at 0
    ((100, 100, 140, 120), (0, 0), (300, 300), (84, 84, 72, 52)),
    ((100, 100, 400, 120), (0, 0), (300, 300), (70, 70, 230, 80)),  # margin 10% of 300
    ((0, 0, 320, 240), (57, 83), (150, 100), (0, 0, 150, 100)),  # covers the layer
    ((0, 0, 50, 50), (57, 83), (150, 100), None),  # beside the layer: nothing to do
])
def test_the_region_sent_is_the_selections_box_with_a_margin_inside_the_layer(
        bounds: Any, offsets: tuple[int, int], size: tuple[int, int], region: Any) -> None:
    assert plugin.selection_region(bounds, offsets, size) == region


# --- the offline model's extra missing -------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="the stand-in interpreter is a shell script")
def test_local_backend_without_the_extra_says_what_to_install(
        tmp_path: Path, bridge_env: Callable[..., dict[str, str]],
        keyed_image: Callable[..., Image.Image]) -> None:
    hidden = tmp_path / "no-numpy"
    hidden.mkdir()
    for name in ("numpy", "onnxruntime"):  # a package that fails like a missing one
        (hidden / name).mkdir()
        (hidden / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    code = (f"import sys; sys.path.insert(0, {str(hidden)!r}); "
            "import importlib.util as u; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n in ('numpy', 'onnxruntime') else real(n, *a); "
            "import runpy; runpy.run_module('bgremove.plugin_gimp.bridge', run_name='__main__')")
    python = fake_python(tmp_path, f'exec "{sys.executable}" -c "{code}"')
    image = keyed_image()
    with pytest.raises(plugin.PluginError) as caught:
        plugin.BridgeJob(python, bridge_env()).run(header(image, backend="local"),
                                                   [image.tobytes()])
    message = caught.value.message
    assert caught.value.kind == "environment"
    assert "bgremove[local]" in message and "pip install" in message, message
    assert "report it" not in message and "Traceback" not in message


# --- what `bgremove gimp install` writes where, per layout ---------------------------------

def written_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


PLUGIN_FILES = {"python-fu-remove-background/python-fu-remove-background.py",
                "python-fu-remove-background/bgremove-gimp.json",
                "python-fu-remove-background/help/en/gimp-help.xml",
                "python-fu-remove-background/help/en/index.html"}


@pytest.mark.parametrize(("platform", "env", "folders"), [
    ("linux", {"HOME": "{home}"}, [".config/GIMP/3.0/plug-ins"]),
    ("linux", {"HOME": "{home}", "XDG_CONFIG_HOME": "{home}/xdg"}, ["xdg/GIMP/3.0/plug-ins"]),
    ("linux-flatpak", {"HOME": "{home}"},
     [".config/GIMP/3.0/plug-ins", ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins"]),
    ("darwin", {"HOME": "{home}"}, ["Library/Application Support/GIMP/3.0/plug-ins"]),
    ("win32", {"HOME": "{home}", "APPDATA": "{home}/AppData/Roaming"},
     ["AppData/Roaming/GIMP/3.0/plug-ins"]),
    ("win32", {"HOME": "{home}"}, ["AppData/Roaming/GIMP/3.0/plug-ins"]),  # no %APPDATA%
])
def test_install_writes_the_plugin_settings_and_help_where_each_gimp_looks(
        tmp_path: Path, platform: str, env: dict[str, str], folders: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if platform == "linux-flatpak":
        platform = "linux"
        (home / ".var" / "app" / "org.gimp.GIMP").mkdir(parents=True)
    env = {key: value.format(home=home) for key, value in env.items()}
    python = "C:\\bgremove\\Scripts\\python.exe" if platform == "win32" else "/opt/env/bin/python"
    paths = install.install(python=python, env=env, platform=platform)
    assert paths == [home / folder / "python-fu-remove-background" /
                     "python-fu-remove-background.py" for folder in folders]
    expected = {f"{folder}/{name}" for folder in folders for name in PLUGIN_FILES}
    assert written_files(home) - {".var/app/org.gimp.GIMP"} == expected
    for path in paths:
        assert path.read_bytes() == PLUGIN_FILE.read_bytes()
        settings = json.loads(path.with_name("bgremove-gimp.json").read_text())
        assert settings == {"python": python, "version": settings["version"], "protocol": 1}
        if os.name == "posix":
            assert path.stat().st_mode & stat.S_IXUSR  # GIMP skips a plug-in without it
        help_map = (path.parent / "help" / "en" / "gimp-help.xml").read_text()
        assert f'id="{plugin.PROC_NAME}" ref="index.html"' in help_map
    assert install.uninstall(env=env, platform=platform) == [p.parent for p in paths]
    assert written_files(home) == set()


def test_the_help_map_sends_the_dialogs_help_id_to_the_installed_page(tmp_path: Path) -> None:
    """GIMP's help plug-in reads HELP_FOLDER/<locale>/gimp-help.xml: <help-item id ref>
    directly under <gimp-help> (seen working in GIMP 3.0.4: Help opened index.html)."""
    import xml.etree.ElementTree as ET

    [path] = install.install(tmp_path)
    assert plugin.HELP_DOMAIN == "bgremove" and plugin.HELP_FOLDER == "help"
    locale = path.parent / plugin.HELP_FOLDER / "en"
    root = ET.parse(locale / "gimp-help.xml").getroot()
    assert root.tag == "gimp-help"
    refs = {item.get("id"): item.get("ref") for item in root.findall("help-item")}
    assert refs[plugin.PROC_NAME] == "index.html"  # the procedure's name is its help id
    page = (locale / refs[plugin.PROC_NAME]).read_text(encoding="utf-8")
    assert "Remove Background" in page and "Layer mask (non-destructive)" in page
