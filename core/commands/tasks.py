"""``bgremove tasks`` and ``bgremove fetch``: the account's recent tasks, results fetched again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bgremove.commands.common import EXIT_FAILED, EXIT_OK, add_config_argument, config_from_args
from bgremove.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tasks", help="list the account's background removals of the last 7 days",
        description="List the account's background-removal tasks of the last 7 days (the "
        "service keeps them that long): id, created, status, the input when this computer "
        "ran it, and where its result was saved here.")
    p.add_argument("--json", action="store_true", help="print one JSON object per task")
    add_config_argument(p)
    p.set_defaults(func=run_tasks)

    p = sub.add_parser(
        "fetch", help="download a finished task's result again (within 7 days)",
        description="Download the result of each finished TASK_ID again. Without --input "
        "the service's cut-out is written as <TASK_ID>.png; with --input the mask is applied "
        "to that original as `bgremove remove` would.")
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID", help="task ids (bgremove tasks)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="folder for the results")
    p.add_argument("--input", action="append", metavar="FILE",
                   help="the original image of the task (once per TASK_ID, in order)")
    add_config_argument(p)
    p.set_defaults(func=run_fetch)


def _client(args: argparse.Namespace) -> Any:
    from bgremove.errors import MissingKeyError
    from bgremove.wavespeed import WaveSpeedClient

    config = config_from_args(args)
    if not config.wavespeed.api_key:
        raise MissingKeyError()
    return config, WaveSpeedClient(config.wavespeed)


def run_tasks(args: argparse.Namespace) -> int:
    from bgremove.recover import recent_tasks

    _, client = _client(args)
    with client:
        rows = recent_tasks(client)
    if args.json:
        for row in rows:
            print(json.dumps(row.as_dict(), ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no background removals in the last 7 days")
        return EXIT_OK
    print(f"{'TASK':<32}  {'CREATED (UTC)':<20}  {'STATUS':<10}  {'INPUT':<24}  SAVED")
    for row in rows:
        info = row.as_dict()
        created = (info["created_at"] or "-").replace("T", " ").rstrip("Z")
        print(f"{row.id:<32}  {created:<20}  {row.status:<10}  "
              f"{_short(row.input) or '-':<24}  {row.output or 'no'}")
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    import sys

    from bgremove.errors import BgremoveError
    from bgremove.logs import printable
    from bgremove.recover import fetch_result

    inputs = [Path(p) for p in args.input or []]
    if inputs and len(inputs) != len(args.task_ids):
        raise ConfigError(f"{len(inputs)} --input for {len(args.task_ids)} TASK_ID(s)",
                          hint="give --input once per TASK_ID, in the same order, or not at all")
    config, client = _client(args)
    out_dir = Path(args.output_dir) if args.output_dir else None
    failed = False
    with client:
        for i, task_id in enumerate(args.task_ids):
            try:
                dst = fetch_result(client, config, task_id, out_dir=out_dir,
                                   input=inputs[i] if inputs else None)
            except BgremoveError as exc:
                failed = True
                text = str(exc)
                print(printable(f"bgremove: error: {'' if task_id in text else f'task {task_id}: '}"
                                f"{text}"), file=sys.stderr)
                continue
            print(f"{task_id} -> {dst}")
    return EXIT_FAILED if failed else EXIT_OK


def _short(path: str | None) -> str | None:
    return Path(path).name if path else None
