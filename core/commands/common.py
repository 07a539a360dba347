"""What every sub-command shares: exit codes, the config flags, loading the config."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from bgremove.choices import LOG_LEVELS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, or a second stop signal


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The options every sub-command that reads settings takes."""
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config file "
                        "(default: $BGREMOVE_CONFIG, then the user config dir)")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        help="how much to log on stderr (default: info)")


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM while the block runs; the handlers found are put
    back after it, so a command run in-process (by a library user, a test) leaves the
    process as it found it. Off the main thread, where Python cannot set a handler,
    nothing is installed: a command only a signal stops first calls ``need_main_thread``."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in found:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, previous in found.items():
            # None: set outside Python, which cannot be put back; the default is closest
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)


def check_counts(args: argparse.Namespace, *names: str) -> None:
    """A usage error for a count flag below its least: ``concurrency`` 1, the others 0
    (no limit)."""
    from bgremove.errors import ConfigError

    for name in names:
        value = getattr(args, name, None)
        least = 1 if name == "concurrency" else 0
        if value is not None and value < least:
            must = "at least 1" if least else "0 (no limit) or more"
            raise ConfigError(f"--{name.replace('_', '-')} must be {must}, not {value}")


def need_main_thread(command: str, hint: str) -> None:
    """Refuse to start ``command``, which only a signal stops, off the main thread: signals
    reach only the main thread, so the call would never return (a library user's thread)."""
    import threading

    from bgremove.errors import ConfigError

    if threading.current_thread() is not threading.main_thread():
        raise ConfigError(f"{command} run off the main thread could never be stopped "
                          "(only the main thread gets Ctrl-C and SIGTERM)", hint=hint)


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
