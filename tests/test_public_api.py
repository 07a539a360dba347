"""The public surface of ``core``: exported names, the error tree, a light import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import core
import core.errors


def test_exported_names_are_exactly_the_public_ones() -> None:
    public = {name for name in vars(core) if not name.startswith("_") and
              not inspect.ismodule(getattr(core, name))}
    assert public | {"__version__"} == set(core.__all__)


def test_every_error_is_exported_documented_and_under_one_base() -> None:
    errors = [obj for obj in vars(core.errors).values()
              if inspect.isclass(obj) and issubclass(obj, Exception)]
    for cls in errors:
        assert issubclass(cls, core.BgremoveError)
        assert cls.__name__ in core.__all__, cls.__name__
        assert cls.__doc__ and cls.__doc__.strip(), cls.__name__
        assert cls.__name__ in (core.errors.__doc__ or ""), f"{cls.__name__} not in the tree"


def test_importing_core_does_not_load_heavy_libraries() -> None:
    code = ("import sys, core, core.cli; core.cli.build_parser(); "
            "print(','.join(m for m in ('httpx', 'PIL', 'numpy', 'onnxruntime', 'watchdog') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
