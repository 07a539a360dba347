"""The ``bgremove`` command: parses arguments, calls ``core``, turns errors into one line.

Exit codes: 0 all good; 1 some file or check failed; 2 usage or config error
(including a missing API key). No traceback reaches the user for an error
bgremove raised on purpose.

The command line is the top layer: it imports core, the watcher and the
plug-in, and none of them imports it. Each sub-command is a module of
``bgremove.commands`` that registers itself through ``register(subparsers)``;
those modules import only argparse at load time so start-up stays fast, and
load what they run on first use. A command's ``args.ends_process`` says whether the
process ends right after it (``main()`` with the process's own command line), so it may
leave what the exit frees anyway.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from bgremove.commands.common import EXIT_FAILED, EXIT_USAGE
from bgremove.errors import BgremoveError, ConfigError
from bgremove.logs import printable
from bgremove.version import __version__

log = logging.getLogger("bgremove")

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


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line error (its default already is 2)."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"bgremove: error: {message}\n")


#: Each sub-command and its module in ``bgremove.commands`` (in the order of ``--help``).
#: A run loads only the module of its command: all of them cost ~12 ms of every start.
COMMANDS = {"remove": "remove", "doctor": "doctor", "emulator": "emulator",
            "models": "models", "tasks": "tasks", "fetch": "tasks", "watch": "watch",
            "status": "watch", "gimp": "gimp"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or only of ``command``'s module when it is one."""
    parser = _Parser(
        prog="bgremove",
        description="Remove image backgrounds with the WaveSpeedAI API or an offline model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bgremove {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for module in modules:
        importlib.import_module(f"bgremove.commands.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None: this process's own command line (it ends after)."""
    if argv is not None:
        return _main(list(argv), whole_process=False)
    return _main(sys.argv[1:], whole_process=True)


def _main(argv: list[str], *, whole_process: bool) -> int:
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.ends_process = whole_process  # the command may leave what the exit frees anyway
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"bgremove: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BgremoveError as exc:
        print(f"bgremove: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if whole_process:
            # The exit still waits for a request already sent (a sync submit cannot be
            # cut short): a second Ctrl-C ends the process there, not in a traceback.
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
        print("bgremove: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed by the reader (e.g. `| head`): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if whole_process:
            # The process ends next and its objects with it: frozen, they spare the
            # interpreter's last full garbage collection over every module (~20 ms).
            gc.freeze()


if __name__ == "__main__":
    raise SystemExit(main())
