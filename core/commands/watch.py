"""``bgremove watch`` and ``bgremove status``. Imports only argparse at start-up."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from bgremove.choices import ACCOUNT_LEVELS, BACKENDS
from bgremove.commands.common import (
    EXIT_INTERRUPTED,
    add_config_argument,
    check_counts,
    config_from_args,
    need_main_thread,
    stop_signals,
)

log = logging.getLogger("bgremove.watch")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="watch a folder and cut out every image dropped into it",
        description="Watch INBOX; write each image's cut-out to OUTBOX and move the original "
        "to the done folder (or, with a .error.json beside it, to the failed folder). "
        "Runs until SIGINT/SIGTERM (a second one exits at once), or with --once until INBOX "
        "is drained. Every option can also be set under watch: in the config file.",
    )
    p.add_argument("inbox", nargs="?", metavar="INBOX", help="the folder to watch")
    p.add_argument("outbox", nargs="?", metavar="OUTBOX", help="where the cut-outs go")
    p.add_argument("--done", metavar="DIR", help="processed originals (default INBOX/done)")
    p.add_argument("--failed", metavar="DIR",
                   help="originals that failed, each with <name>.error.json "
                   "(default INBOX/failed)")
    p.add_argument("--recursive", action="store_true", default=None,
                   help="watch sub-folders too and mirror them in OUTBOX, done and failed")
    p.add_argument("--polling", action="store_true", default=None,
                   help="poll instead of using file-system events (network shares)")
    p.add_argument("--once", action="store_true", default=None,
                   help="process what is there, then exit (1 if any file failed)")
    p.add_argument("--concurrency", type=int, metavar="N", help="images processed at once")
    p.add_argument("--images-per-minute", type=int, metavar="N",
                   help="submissions per minute, 0 for no limit (default: "
                   "watch.images_per_minute, else wavespeed.images_per_minute in the config)")
    p.add_argument("--account-level", choices=ACCOUNT_LEVELS,
                   help="cap concurrency and rate at the WaveSpeed account level's limits "
                   "(default: watch.account_level, else wavespeed.account_level)")
    p.add_argument("--max-per-hour", type=int, metavar="N",
                   help="cost guard: pause intake after N images in an hour")
    p.add_argument("--max-per-day", type=int, metavar="N",
                   help="cost guard: pause intake after N images in a day")
    p.add_argument("--stable-seconds", type=float, metavar="S",
                   help="a file must stay unchanged this long before it is taken, unless it "
                   "was renamed into INBOX and decodes (default 0.5)")
    p.add_argument("--reprocess", action="store_true", default=None,
                   help="process content that was already processed")
    p.add_argument("--backend", choices=BACKENDS,
                   help="auto: WaveSpeed when an API key is set, else the offline model")
    p.add_argument("--json", dest="json_logs", action="store_true",
                   help="log one JSON object per line on stdout (as remove --json)")
    add_config_argument(p)
    p.set_defaults(func=run_watch, log_timestamps=True)

    s = sub.add_parser(
        "status",
        help="show what a watch daemon has queued, in flight, done and failed",
        description="Read the journal of a running or stopped `bgremove watch` and show its "
        "queue, counts and last errors.",
    )
    s.add_argument("outbox", nargs="?", metavar="OUTBOX",
                   help="the daemon's OUTBOX (default: watch.outbox of the config)")
    s.add_argument("--journal", metavar="FILE", help="the journal file (watch.journal)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_argument(s)
    s.set_defaults(func=run_status)


def run_watch(args: argparse.Namespace) -> int:
    import os
    import signal

    from bgremove.errors import ConfigError
    from bgremove.logs import setup_logging
    from bgremove.memory import limit_malloc_arenas
    from bgremove.watcher.daemon import Daemon
    from bgremove.watcher.naming import Layout
    from bgremove.watcher.status import StatusLine

    check_counts(args, "concurrency", "images_per_minute", "max_per_hour", "max_per_day")
    config = config_from_args(args, {
        "backend": args.backend,
        "watch.inbox": args.inbox,
        "watch.outbox": args.outbox,
        "watch.done": args.done,
        "watch.failed": args.failed,
        "watch.recursive": args.recursive,
        "watch.polling": args.polling,
        "watch.once": args.once,
        "watch.concurrency": args.concurrency,
        "watch.images_per_minute": args.images_per_minute,
        "watch.account_level": args.account_level,
        "watch.max_per_hour": args.max_per_hour,
        "watch.max_per_day": args.max_per_day,
        "watch.stable_seconds": args.stable_seconds,
        "watch.reprocess": args.reprocess,
        "watch.json": True if args.json_logs else None,
    })
    watch = config.watch
    if not watch.inbox or not watch.outbox:
        raise ConfigError("bgremove watch needs INBOX and OUTBOX",
                          hint="give them as arguments or as watch.inbox / watch.outbox")
    if not watch.once:
        need_main_thread("bgremove watch", "give --once (it stops when INBOX is empty), or "
                         "run it on the main thread")
    if watch.json and not args.json_logs:
        setup_logging(config.log_level, json_lines=True)
    layout = Layout.create(watch.inbox, watch.outbox, watch.done, watch.failed, watch.recursive)

    limit_malloc_arenas()  # before the daemon's threads start (see bgremove.memory)
    status_line: StatusLine | None = None
    if not watch.json:
        status_line = StatusLine()  # a live line on a terminal, nothing elsewhere
    try:  # checks OUTBOX, opens the journal, makes the backend
        daemon = Daemon(config, layout, on_status=status_line.update if status_line else None)
    except BaseException:
        if status_line is not None:
            status_line.close()
        raise

    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("%s received: finishing the jobs in flight (again to exit at once)",
                     signal.Signals(signum).name)
            daemon.request_stop()
        else:
            daemon.abort()
            log.warning("second signal: exiting now; unfinished jobs resume on the next start")
            # the command is the process: end it now (in-process: return to the caller)
            if getattr(args, "ends_process", False):
                logging.shutdown()
                os._exit(EXIT_INTERRUPTED)

    try:
        with stop_signals(on_signal):
            code = daemon.run()
    finally:
        if status_line is not None:
            status_line.close()
    if signals["count"] >= 2:  # aborted: jobs were left unfinished, as the command says
        return EXIT_INTERRUPTED
    return code if watch.once else 0


def run_status(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from bgremove.errors import ConfigError
    from bgremove.watcher.naming import STATE_DIR
    from bgremove.watcher.status import format_status, read_status

    config = config_from_args(args)
    if args.journal:
        journal = Path(args.journal)
    elif args.outbox:
        journal = Path(args.outbox) / STATE_DIR / "journal.sqlite3"
    elif config.watch.journal:
        journal = Path(config.watch.journal)
    elif config.watch.outbox:
        journal = Path(config.watch.outbox) / STATE_DIR / "journal.sqlite3"
    else:
        raise ConfigError("which daemon? give its OUTBOX, --journal, or set watch.outbox")
    journal = journal.expanduser()
    if not journal.is_file():
        raise ConfigError(f"no journal at {journal}",
                          hint="has `bgremove watch` run with this OUTBOX?")
    status = read_status(journal)
    if args.json:
        print(json.dumps(status))
    else:
        print(format_status(status))
    return 0
