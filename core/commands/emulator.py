"""``bgremove emulator``: serve the built-in WaveSpeed API emulator until interrupted.

The first line on stdout is the base URL (so scripts can read it with ``--port 0``).
Point bgremove at it with ``WAVESPEED_BASE_URL=<url> WAVESPEED_API_KEY=anything``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bgremove.choices import (
    ACCOUNT_LEVELS,
    EMULATOR_KEY_STATES,
    EMULATOR_MODELS,
    EMULATOR_OUTPUT_COLOURS,
    EMULATOR_SYNC_TIMEOUT_STYLES,
    LOG_LEVELS,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="run a local WaveSpeed API emulator (for tests, benchmarks and trying bgremove)",
        description="Serve the WaveSpeed background-remover API on this machine: submit, "
        "result, the prediction list, both uploads, file download and balance. The default "
        "model keys out the colour of pixel (0,0). Prints the base URL first, then runs until "
        "Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: a free one; default 8765)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host; needs --api-key, which every route "
                        "then requires")
    parser.add_argument("--api-key", help="accept only this key (default: any non-empty key)")
    parser.add_argument("--key-state", choices=EMULATOR_KEY_STATES,
                        default="active", help="simulate an unactivated (401) or suspended "
                        "(403) account")
    parser.add_argument("--model", choices=EMULATOR_MODELS, default="keyout",
                        help="keyout: deterministic colour key; local: the offline model")
    parser.add_argument("--delay", type=float, default=0.0, metavar="S",
                        help="inference seconds per task")
    parser.add_argument("--sync-timeout", type=float, metavar="S",
                        help="a sync-mode submit stops waiting after S seconds")
    parser.add_argument("--sync-timeout-style", choices=EMULATOR_SYNC_TIMEOUT_STYLES,
                        default="504",
                        help="answer a sync timeout with a 504 carrying the task, a 200 with "
                        "code 5004, a proxy's bare 504 without the task, or a closed connection")
    parser.add_argument("--level", choices=ACCOUNT_LEVELS,
                        help="apply an account level's limits (bronze: 2 concurrent tasks, "
                        "2 images per minute)")
    parser.add_argument("--concurrency-cap", type=int, metavar="N",
                        help="tasks running at once; the rest wait (Bronze: 2; 0: no cap)")
    parser.add_argument("--images-per-minute", type=int, metavar="N",
                        help="submits per minute beyond N get 429 (0: no limit)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                        help="larger uploads get 413 (default 20)")
    parser.add_argument("--max-stored-mb", type=float, default=1024.0, metavar="MB",
                        help="memory for uploaded files, and as much for outputs; the oldest "
                        "are dropped beyond it (default 1024)")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help="inject a fault: KIND[,key=value...], e.g. "
                        "'status,route=submit,status=429,every=3,retry_after=2'; kinds: status, "
                        "drop, malformed, truncate, fail_task, delay; may repeat")
    parser.add_argument("--rate-429", type=float, default=0.0, metavar="P",
                        help="share of submits answered 429 (seeded random)")
    parser.add_argument("--rate-5xx", type=float, default=0.0, metavar="P",
                        help="share of API calls answered 503 (seeded random)")
    parser.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                        help="share of API calls whose connection is closed without an answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, metavar="P",
                        help="share of tasks that fail with code 5000")
    parser.add_argument("--lost-answer-rate", type=float, default=0.0, metavar="P",
                        help="share of submits whose task is created but whose answer is lost "
                        "(the connection closes; in sync mode when the task ends)")
    parser.add_argument("--retention", type=float, default=7 * 24 * 3600, metavar="S",
                        help="seconds tasks, outputs and uploads are kept and listed "
                        "(default 7 days)")
    parser.add_argument("--list-input", action="store_true",
                        help="prediction list items carry the submit's input (the documented "
                        "example shows none)")
    parser.add_argument("--no-list-route", dest="list_route", action="store_false",
                        help="answer the prediction list (POST /api/v3/predictions) with 404")
    parser.add_argument("--clock-skew", type=float, default=0.0, metavar="S",
                        help="the service's clock runs S seconds ahead of this machine's "
                        "(negative: behind)")
    parser.add_argument("--uplink-mbit", type=float, default=0.0, metavar="N",
                        help="uploads arrive at N Mbit/s at most, shared by all connections")
    parser.add_argument("--downlink-mbit", type=float, default=0.0, metavar="N",
                        help="answers and downloads leave at N Mbit/s at most, shared by all "
                        "connections")
    parser.add_argument("--output-max-side", type=int, default=0, metavar="PX",
                        help="return outputs scaled down to this longest side (a model that "
                        "answers below full size)")
    parser.add_argument("--output-colours", choices=EMULATOR_OUTPUT_COLOURS, default="input",
                        help="colours of the cut-outs: the input's own everywhere (default), "
                        "0,0,0 under fully transparent pixels (as many services send), or "
                        "premultiplied by alpha (also darker where partly transparent)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random fault rates")
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default="info", help="requests are logged at debug")
    parser.set_defaults(func=run)


def _faults(args: argparse.Namespace) -> tuple[Any, ...]:
    from bgremove.emulator.faults import Fault

    faults = [Fault.parse(spec) for spec in args.fault]
    if args.rate_429:
        faults.append(Fault("status", route="submit", status=429, rate=args.rate_429))
    if args.rate_5xx:
        for route in ("submit", "result", "upload"):
            faults.append(Fault("status", route=route, status=503, rate=args.rate_5xx))
    if args.drop_rate:
        for route in ("submit", "result", "upload"):
            faults.append(Fault("drop", route=route, rate=args.drop_rate))
    if args.lost_answer_rate:
        faults.append(Fault("drop", route="submit", after=True, rate=args.lost_answer_rate))
    if args.fail_rate:
        faults.append(Fault("fail_task", route="submit", code=5000, rate=args.fail_rate))
    return tuple(faults)


def run(args: argparse.Namespace) -> int:
    import sys
    import threading

    from bgremove.choices import ACCOUNT_LIMITS
    from bgremove.commands.common import need_main_thread, stop_signals
    from bgremove.emulator import Emulator, EmulatorOptions
    from bgremove.emulator.options import LOOPBACK_HOSTS
    from bgremove.errors import ConfigError
    from bgremove.logs import register_secret, setup_logging

    need_main_thread("bgremove emulator", "use bgremove.emulator.Emulator (start() and "
                     "stop()) from a thread")
    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        raise ConfigError(f"refusing to listen on {args.host}: the emulator has no real "
                          "security and would be open to the network",
                          hint="add --allow-remote if you mean it")
    if args.allow_remote and not args.api_key:
        raise ConfigError("--allow-remote needs --api-key: an emulator open to the network "
                          "must not serve anyone without the key",
                          hint="add --api-key YOUR-SECRET")
    register_secret(args.api_key)
    setup_logging(args.log_level)
    cap, per_minute = ACCOUNT_LIMITS[args.level] if args.level else (0, 0)
    if args.concurrency_cap is not None:
        cap = args.concurrency_cap
    if args.images_per_minute is not None:
        per_minute = args.images_per_minute
    options = EmulatorOptions(
        host=args.host, port=args.port, api_key=args.api_key, key_state=args.key_state,
        model=args.model, delay=args.delay, sync_timeout=args.sync_timeout,
        sync_timeout_style=args.sync_timeout_style, concurrency_cap=cap,
        images_per_minute=per_minute,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_stored_bytes=int(args.max_stored_mb * 1024 * 1024), faults=_faults(args),
        seed=args.seed, retention=args.retention, list_route=args.list_route,
        list_input=args.list_input, clock_skew=args.clock_skew,
        allow_remote=args.allow_remote, uplink_mbit=args.uplink_mbit,
        downlink_mbit=args.downlink_mbit, output_max_side=args.output_max_side,
        output_colours=args.output_colours)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    with stop_signals(on_signal):
        emulator = Emulator(options)
        try:
            emulator.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {args.host}:{args.port}: "
                              f"{exc.strerror or exc}",
                              hint="pick another --port, or --port 0 for a free one") from None
        try:
            print(emulator.base_url, flush=True)
            print(f"use: WAVESPEED_BASE_URL={emulator.base_url} WAVESPEED_API_KEY="
                  f"{'<your --api-key>' if args.api_key else 'any-value'}; Ctrl-C stops",
                  file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
        finally:
            emulator.stop()
    return 0
