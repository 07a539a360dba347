"""``bgremove doctor``: check config, key, reachability, balance, model and plug-in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from bgremove.commands.common import EXIT_FAILED, EXIT_OK, add_config_argument

OK, WARN, FAIL = "ok", "warn", "FAIL"


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the setup and say what is wrong",
                       description="Check the config, the API key, the service, the balance, "
                       "the offline model and the GIMP plug-in.")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = Checks()
    config = checks.run("config", lambda: _check_config(args))
    if config is not None:
        checks.run("api key", lambda: _check_key(config))
        if config.wavespeed.api_key:
            checks.run("service", lambda: _check_service(config))
        checks.run("offline model", lambda: _check_model(config))
    checks.run("gimp plug-in", _check_plugin)
    return EXIT_FAILED if checks.failed else EXIT_OK


class Checks:
    """Runs each check, prints one line for it, and remembers whether any failed."""

    def __init__(self) -> None:
        self.failed = False

    def run(self, name: str, check: Callable[[], Any]) -> Any:
        from bgremove.errors import BgremoveError

        try:
            outcome = check()
        except BgremoveError as exc:
            self.failed = True
            print(f"[{FAIL:>4}] {name}: {exc}")
            return None
        except Exception as exc:  # doctor reports every problem; it must not crash on one
            self.failed = True
            print(f"[{FAIL:>4}] {name}: unexpected {type(exc).__name__}: {exc}")
            return None
        status, text, value = outcome
        if status == FAIL:
            self.failed = True
        print(f"[{status:>4}] {name}: {text}")
        sys.stdout.flush()
        return value


def _check_config(args: argparse.Namespace) -> tuple[str, str, Any]:
    from bgremove.commands.common import config_from_args
    from bgremove.config import default_config_path

    config = config_from_args(args)
    where = config.source or (f"no config file at {default_config_path()} "
                              "(defaults and environment)")
    return OK, f"{where}; backend {config.backend}", config


def _check_key(config: Any) -> tuple[str, str, None]:
    if config.wavespeed.api_key:
        return OK, f"set in {config.key_source or 'the settings'} (not shown)", None
    if config.backend == "wavespeed":
        return FAIL, "not set, and backend is wavespeed: set WAVESPEED_API_KEY", None
    return WARN, "not set: the offline model is used (set WAVESPEED_API_KEY for the API)", None


def _check_service(config: Any) -> tuple[str, str, None]:
    from bgremove.wavespeed import WaveSpeedClient

    # One retry is enough to tell "down" from "a blip"; doctor should answer quickly.
    quick = config.with_overrides({"wavespeed.retry.max_attempts": 2,
                                   "wavespeed.timeouts.overall": 30.0})
    from bgremove.errors import ServiceError

    client = WaveSpeedClient(quick.wavespeed)
    try:
        balance = client.balance()
    except ServiceError as exc:  # name the address it tried (a typo, a closed port)
        url = config.wavespeed.base_url
        return FAIL, str(exc) if url in str(exc) else f"{url}: {exc}", None
    finally:
        client.close()
    if balance <= 0:
        return (FAIL, f"{config.wavespeed.base_url} reachable, key accepted, balance {balance}: "
                "top up the account before it can run tasks", None)
    return OK, f"{config.wavespeed.base_url} reachable, key accepted, balance {balance}", None


def _check_model(config: Any) -> tuple[str, str, None]:
    from bgremove.backends import missing_local_packages, resolve_backend_name
    from bgremove.local import models

    missing = missing_local_packages()
    if missing:
        text = (f"offline backend not installed ({' and '.join(missing)} missing): "
                "pip install 'bgremove[local]'")
        if resolve_backend_name(config) == "local":  # nothing else would run
            return FAIL, text + ", or set WAVESPEED_API_KEY to use the WaveSpeed API", None
        return WARN, text, None
    name = config.local.model
    path = models.verify_cached(models.get_spec(name), config.local.cache_dir)
    if path is None:
        status = FAIL if config.backend == "local" else WARN
        return status, f"{name} not downloaded yet: run bgremove models fetch {name}", None
    return OK, f"{name} at {path}", None


def _check_plugin() -> tuple[str, str, None]:
    from bgremove.plugin_gimp.install import status

    state = status()
    if not state.installed:
        return WARN, state.message, None
    if not state.current:
        return FAIL, f"{state.path} is out of date: run bgremove gimp install", None
    return OK, f"installed at {state.path}", None
