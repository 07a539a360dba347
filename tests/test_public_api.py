"""The public surface of ``bgremove``: exported names, the error tree, a light import."""

from __future__ import annotations
import __future__

import importlib
import inspect
import subprocess
import sys

import pytest

import bgremove
import bgremove.errors

#: Every package whose front door re-exports names from private modules.
PACKAGES = ("bgremove", "bgremove.wavespeed", "bgremove.imaging", "bgremove.local",
            "bgremove.local.models", "bgremove.emulator")


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_names_are_exactly_the_public_ones(name: str) -> None:
    package = importlib.import_module(name)
    for exported in package.__all__:  # loads the names the package loads on first use
        getattr(package, exported)
    public = {attr for attr, value in vars(package).items()
              if not attr.startswith("_") and not inspect.ismodule(value)
              and not isinstance(value, __future__._Feature)}
    assert public == set(package.__all__) - {"__version__"}


def test_every_error_is_exported_documented_and_under_one_base() -> None:
    errors = [obj for obj in vars(bgremove.errors).values()
              if inspect.isclass(obj) and issubclass(obj, Exception)]
    for cls in errors:
        assert issubclass(cls, bgremove.BgremoveError)
        assert cls.__name__ in bgremove.__all__, cls.__name__
        assert cls.__doc__ and cls.__doc__.strip(), cls.__name__
        assert cls.__name__ in (bgremove.errors.__doc__ or ""), f"{cls.__name__} not in the tree"


def test_the_package_loads_its_other_names_on_first_use() -> None:
    code = ("import sys, bgremove; print(bgremove.__version__, 'bgremove.config' in sys.modules,"
            " bgremove.load_config.__module__, sorted(set(bgremove.__all__) - set(dir(bgremove))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [bgremove.__version__, "False", "bgremove.config", "[]"]
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        bgremove.nothing_here  # noqa: B018


def test_importing_the_package_does_not_load_heavy_libraries() -> None:
    code = ("import sys, bgremove, bgremove.cli; bgremove.cli.build_parser(); "
            "print(','.join(m for m in ('httpx', 'PIL', 'numpy', 'onnxruntime', 'watchdog') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
