"""``bgremove models list|fetch NAME|path [NAME]``: the offline models and their cache."""

from __future__ import annotations

import argparse
from typing import Any

from bgremove.commands.common import EXIT_FAILED, EXIT_OK, add_config_argument


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="list, download or locate the offline models",
                       description="The offline models the local backend runs: list them, "
                       "download one into the cache, or print where its file is.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = msub.add_parser("list", help="each model with its size, licence and whether it is cached")
    add_config_argument(ls)
    ls.set_defaults(func=run_list)

    fetch = msub.add_parser("fetch", help="download a model, verify its sha256 and cache it")
    fetch.add_argument("name", nargs="?", metavar="NAME",
                       help="u2netp or u2net (default: local.model from the config)")
    fetch.add_argument("--force", action="store_true",
                       help="download again even if a verified copy is cached")
    add_config_argument(fetch)
    fetch.set_defaults(func=run_fetch)

    path = msub.add_parser("path", help="print the model file's path (the folder without NAME)")
    path.add_argument("name", nargs="?", metavar="NAME", help="u2netp or u2net")
    add_config_argument(path)
    path.set_defaults(func=run_path)


def run_list(args: argparse.Namespace) -> int:
    from bgremove.commands.common import config_from_args
    from bgremove.local.models import model_status

    config = config_from_args(args)
    rows = [("NAME", "SIZE", "LICENCE", "CACHED", "PATH")]
    for st in model_status(config.local.cache_dir):
        default = "*" if st.spec.name == config.local.model else ""
        rows.append((st.spec.name + default, f"{st.spec.size / 1e6:.1f} MB", st.spec.licence,
                     "yes" if st.cached else "no", str(st.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    print("* the configured model (local.model)")
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    from bgremove.commands.common import config_from_args
    from bgremove.console import DownloadProgress
    from bgremove.local.models import fetch_model, get_spec

    config = config_from_args(args)
    spec = get_spec(_known(args.name or config.local.model))
    bar = DownloadProgress(f"downloading {spec.name}")
    try:
        path = fetch_model(spec.name, config.local.cache_dir, progress=bar, force=args.force)
    finally:
        bar.finish()
    print(path)
    return EXIT_OK


def run_path(args: argparse.Namespace) -> int:
    import sys

    from bgremove.commands.common import config_from_args
    from bgremove.local.models import get_spec, model_dir, model_path, verify_cached

    config = config_from_args(args)
    if not args.name:
        print(model_dir(config.local.cache_dir))
        return EXIT_OK
    spec = get_spec(_known(args.name))
    print(model_path(spec, config.local.cache_dir))
    if verify_cached(spec, config.local.cache_dir) is None:
        print(f"bgremove: error: {spec.name} is not downloaded yet: run `bgremove models fetch "
              f"{spec.name}`", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _known(name: str) -> str:
    """A model name, or a usage error (exit 2) naming the choices."""
    from bgremove.errors import ConfigError
    from bgremove.local.models import MODELS

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}", hint=f"choose one of {', '.join(MODELS)}")
    return name
