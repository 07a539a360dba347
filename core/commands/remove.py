"""``bgremove remove INPUT...``: cut out a batch of files, N at a time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bgremove.cli import EXIT_FAILED, EXIT_OK, add_config_argument, config_from_args
from bgremove.errors import ConfigError

if TYPE_CHECKING:
    from bgremove.backends import Backend
    from bgremove.config import Config
    from bgremove.jobs import JobResult

#: Seconds between progress lines when stderr is not a terminal.
PLAIN_PROGRESS_SECONDS = 10.0

def register(sub: Any) -> None:
    p = sub.add_parser(
        "remove",
        help="remove the background of image files",
        description="Remove the background of each INPUT (files, or folders of images). "
        "Writes DIR/<stem>.<ext> with -o, else <stem>-nobg.<ext> beside the input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="folder for the results")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="images processed at once (default: concurrency in the config, 4)")
    p.add_argument("--backend", choices=("auto", "wavespeed", "local"),
                   help="auto: WaveSpeed when an API key is set, else the offline model")
    p.add_argument("--format", choices=("png", "webp", "tiff"), help="output format (default png)")
    p.add_argument("--mask-only", action="store_true", default=None,
                   help="write the mask as a greyscale image instead of the cut-out")
    p.add_argument("--background", metavar="COLOR",
                   help="fill the background with a colour (#ffffff, white, 255,255,255)")
    p.add_argument("--crop", action="store_true", default=None, help="crop to the subject")
    p.add_argument("--crop-margin", type=int, metavar="PX", help="margin kept around the subject")
    p.add_argument("--foreground", action="store_true", default=None,
                   help="estimate the foreground colour of soft edges (no background colour "
                   "bleeding through hair and fur)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per file on stdout")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bgremove.backends import make_backend
    from bgremove.batch import IMAGE_SUFFIXES, expand_inputs, plan_outputs
    from bgremove.imaging import parse_color

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    config = config_from_args(args, {
        "concurrency": args.concurrency,
        "backend": args.backend,
        "output.format": args.format,
        "output.mask_only": args.mask_only,
        "output.background": args.background,
        "output.crop": args.crop,
        "output.crop_margin": args.crop_margin,
        "output.foreground": args.foreground,
    })
    if config.output.background:
        parse_color(config.output.background)  # a bad colour is a usage error, before any work
    if config.output.foreground and not config.output.mask_only:
        _require_numpy()
    out_dir = Path(args.output_dir) if args.output_dir else None
    inputs = expand_inputs(args.inputs, config.output.suffix, out_dir)
    if not inputs:
        raise ConfigError(f"no images found in {', '.join(args.inputs)}",
                          hint=f"images are {', '.join(sorted(IMAGE_SUFFIXES))}")
    plan = plan_outputs(inputs, out_dir, config.output)
    backend = make_backend(config)
    try:
        _prepare(backend)
        results = run_batch(plan, backend, config, json_lines=args.json)
    finally:
        backend.close()
    return EXIT_OK if all(r.status == "ok" for r in results) else EXIT_FAILED


def _prepare(backend: Backend) -> None:
    """Fetch and load the offline model before the batch: with no cached model and no network
    that is one line and exit 2, not one long failure (and download attempt) per image."""
    from bgremove.errors import ModelError

    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        return
    try:
        prepare()
    except ModelError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None


def _require_numpy() -> None:
    from bgremove.errors import ConfigError

    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ConfigError("--foreground needs numpy",
                          hint="pip install 'bgremove[local]'") from None


def run_batch(plan: list[tuple[Path, Path]], backend: Backend, config: Config, *,
              json_lines: bool, out: TextIO | None = None, err: TextIO | None = None
              ) -> list[JobResult]:
    """``bgremove.batch.run_batch`` with each result printed as it ends, a progress line (a bar
    with the time left on a terminal) and a summary line."""
    from bgremove import batch
    from bgremove.console import Console, Progress

    out = out or sys.stdout
    err = err or sys.stderr
    console = Console(err, live=False if json_lines else None,
                      plain_every=None if json_lines else PLAIN_PROGRESS_SECONDS)
    console.attach()
    bar = Progress(console, len(plan))

    def on_result(result: JobResult) -> None:
        with console.cleared():
            _report(result, json_lines, out, err)
        bar.step(result.status == "ok")

    def on_interrupt(in_flight: int) -> None:
        console.close()
        if in_flight:
            err.write(f"bgremove: stopped; {in_flight} image(s) were being processed and may "
                      "still be billed by the service\n")

    try:
        results = batch.run_batch(plan, backend, config, on_result=on_result,
                                  on_interrupt=on_interrupt)
    finally:
        console.close()
    if len(plan) > 1:
        bar.finish(_summary(results, bar.elapsed()))
    return results


def _summary(results: list[JobResult], seconds: float) -> str:
    """``3 images: 2 done, 1 failed in 4.2 s``, the last line of a batch."""
    from bgremove.console import format_duration

    done = sum(r.status == "ok" for r in results)
    parts = [f"{done} done"]
    if len(results) - done:
        parts.append(f"{len(results) - done} failed")
    took = f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
    return f"{len(results)} images: {', '.join(parts)} in {took}"


def _report(result: JobResult, json_lines: bool, out: TextIO, err: TextIO) -> None:
    if json_lines:
        out.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
        out.flush()
    elif result.status == "ok":
        out.write(f"{result.input} -> {result.output} ({result.seconds:.1f} s)\n")
        out.flush()
    else:
        # Core errors usually name the file already; add it only where they do not.
        text = str(result.error)
        where = "" if str(result.input) in text else f"{result.input}: "
        err.write(f"bgremove: {where}{text}\n")
        err.flush()
