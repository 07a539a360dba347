"""``bgremove gimp install|uninstall|status``: put the GIMP 3 plug-in where GIMP finds it.

Imports only argparse at load time; the work lives in ``bgremove.plugin_gimp.install``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gimp", help="install or remove the GIMP 3 plug-in (Layer > Transparency > "
        "Remove Background)",
        description="Install the GIMP 3 plug-in so it runs bgremove from this Python "
        "environment. Restart GIMP afterwards.")
    actions = parser.add_subparsers(dest="gimp_action", metavar="ACTION")
    for name, help_text, func in (
        ("install", "install the plug-in, recording this environment's Python", _install),
        ("uninstall", "remove the plug-in", _uninstall),
        ("status", "say whether the plug-in is installed and current", _status),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text[0].upper()
                                    + help_text[1:] + ".")
        action.add_argument("--plugins-dir", metavar="DIR", type=Path,
                            help="GIMP's plug-in folder (default: GIMP 3's user folder for "
                            "this system, and the Flatpak one if present)")
        action.set_defaults(func=func)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _install(args: argparse.Namespace) -> int:
    from bgremove.plugin_gimp.install import install

    for path in install(args.plugins_dir):
        print(f"installed {path}")
    print("Restart GIMP, then use Layer > Transparency > Remove Background…")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from bgremove.plugin_gimp.install import uninstall

    removed = uninstall(args.plugins_dir)
    for folder in removed:
        print(f"removed {folder}")
    if not removed:
        print("the GIMP plug-in was not installed")
    return 0


def _status(args: argparse.Namespace) -> int:
    from bgremove.plugin_gimp.install import status

    result = status(args.plugins_dir)
    print(result.message)
    return 0 if result.current else 1
