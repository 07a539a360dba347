"""The ``bgremove`` command: parses arguments, calls ``core``, turns errors into one line.

Exit codes: 0 all good; 1 some file or check failed; 2 usage or config error
(including a missing API key). No traceback reaches the user for an error
bgremove raised on purpose.

Sub-commands that live in other packages register themselves through a
``register(subparsers)`` function in the modules listed in ``_COMMAND_MODULES``;
those modules import only argparse at load time so start-up stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from bgremove.errors import BgremoveError, ConfigError
from bgremove.version import __version__

log = logging.getLogger("bgremove")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
environment:
  WAVESPEED_API_KEY   the WaveSpeed API key (without one, the offline model is used)
  WAVESPEED_BASE_URL  the service address (default https://api.wavespeed.ai)
  BGREMOVE_CONFIG     the config file (default: config.yaml in the user config dir)

exit codes:
  0  everything succeeded
  1  a file or a check failed
  2  a usage or config error (a bad flag or value, a missing key or package)
  130  interrupted (Ctrl-C)

`bgremove COMMAND --help` explains each command; `bgremove doctor` checks the setup."""

_COMMAND_MODULES = (
    "bgremove.commands.remove",
    "bgremove.commands.doctor",
    "bgremove.commands.emulator",
    "bgremove.commands.models",
    "bgremove.commands.tasks",
    "bgremove.watcher.cli",
    "bgremove.plugin_gimp.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line error (its default already is 2)."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bgremove: error: {message}\n")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The options every sub-command that reads settings takes."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config file "
                        "(default: $BGREMOVE_CONFIG, then the user config dir)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="how much to log on stderr (default: info)")


def config_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    """Load the config with flags applied, register the key for redaction, set up logging."""
    from bgremove.config import load_config
    from bgremove.logs import register_secret, setup_logging

    flags = dict(overrides or {})
    if getattr(args, "log_level", None):
        flags["log_level"] = args.log_level
    config = load_config(getattr(args, "config", None), overrides=flags)
    register_secret(config.wavespeed.api_key)
    setup_logging(config.log_level, json_lines=bool(getattr(args, "json_logs", False)),
                  timestamps=bool(getattr(args, "log_timestamps", False)))
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bgremove",
        description="Remove image backgrounds with the WaveSpeedAI API or an offline model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bgremove {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package still being built
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"bgremove: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BgremoveError as exc:
        print(f"bgremove: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bgremove: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed by the reader (e.g. `| head`): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
