"""``bgremove remove INPUT...``: cut out a batch of files, N at a time."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bgremove.choices import ACCOUNT_LEVELS, BACKENDS, OUTPUT_FORMATS
from bgremove.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_config_argument,
    check_counts,
    config_from_args,
)
from bgremove.errors import ConfigError

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend
    from bgremove.jobs import JobResult
    from bgremove.origins import Origins


def register(sub: Any) -> None:
    p = sub.add_parser(
        "remove",
        help="remove the background of image files",
        description="Remove the background of each INPUT (files, or folders of images). "
        "Writes DIR/<stem>.<ext> with -o DIR, else <stem>-nobg.<ext> beside the input. "
        "A result this input made that already exists is kept and the input not sent again "
        "(--overwrite to redo it); a name holding another input's result is passed over "
        "for the next free one.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output-dir", "--output", dest="output", metavar="DIR|FILE",
                   help="folder for the results; for a single image, a name ending in .png, "
                   ".jpg, .webp or .tif names the result file itself")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="take the images in subfolders too (mirrored under -o DIR)")
    p.add_argument("--overwrite", action="store_true",
                   help="cut out again images whose result already exists (by default they "
                   "are skipped and not sent)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="images processed at once (default: concurrency in the config, 4)")
    p.add_argument("--images-per-minute", type=int, metavar="N",
                   help="submissions per minute, 0 for no limit (default: "
                   "wavespeed.images_per_minute in the config, 0)")
    p.add_argument("--account-level", choices=ACCOUNT_LEVELS,
                   help="cap concurrency and rate at the WaveSpeed account level's limits")
    p.add_argument("--backend", choices=BACKENDS,
                   help="auto: WaveSpeed when an API key is set, else the offline model")
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="output format (default png; jpg is flattened onto --background, "
                   "white by default)")
    p.add_argument("--model", metavar="NAME",
                   help="the offline model: u2netp (fast) or u2net (better); the WaveSpeed "
                   "service has one model (default: local.model in the config)")
    p.add_argument("--strip-metadata", action="store_true", default=None,
                   help="write no metadata (by default outputs keep the input's EXIF, XMP "
                   "and PNG text, such as artist, copyright, caption, date and camera, but "
                   "never its location)")
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
    with _collection_paused(ends_process=getattr(args, "ends_process", False)) as resume:
        return _run(args, resume)


@contextlib.contextmanager
def _collection_paused(*, ends_process: bool) -> Iterator[Callable[[], None]]:
    """No garbage collection until ``resume()`` (at the latest when the block ends).

    The start-up makes some 100,000 objects that live as long as the process (modules,
    classes, functions, the client): the collector would pass over them some 60 times,
    ~6 ms of a one-image run, and find nothing to free. A batch of several images
    resumes collecting once started, since each image leaves garbage; one image does not.
    When the process ends next (``ends_process``) the block leaves collection paused: turned
    back on, it would first pass over everything made since (~5 ms) for the exit to free.
    """
    was_enabled = gc.isenabled()
    gc.disable()

    def resume() -> None:
        if was_enabled:
            gc.enable()

    try:
        yield resume
    finally:
        if not ends_process:
            resume()


def _run(args: argparse.Namespace, resume_collection: Callable[[], None]) -> int:
    from bgremove.backends import make_backend, resolve_backend_name
    from bgremove.batch import IMAGE_SUFFIXES, expand_inputs, path_key, plan_outputs
    from bgremove.imaging import parse_color
    from bgremove.origins import Origins

    check_counts(args, "concurrency", "images_per_minute")
    out_dir, out_file = output_target(args.output)
    named_format = _format_of(out_file, args.format)
    config = config_from_args(args, {
        "concurrency": args.concurrency,
        "wavespeed.images_per_minute": args.images_per_minute,
        "wavespeed.account_level": args.account_level,
        "backend": args.backend,
        "output.format": args.format or named_format,
        "output.mask_only": args.mask_only,
        "output.background": args.background,
        "output.crop": args.crop,
        "output.crop_margin": args.crop_margin,
        "output.foreground": args.foreground,
        "output.strip_metadata": args.strip_metadata,
        "local.model": args.model,
    })
    if getattr(args, "ends_process", False):
        from bgremove.memory import reuse_image_blocks

        reuse_image_blocks()  # a batch's photos one after another (see bgremove.memory)
    if args.model is not None and resolve_backend_name(config) == "wavespeed":
        raise ConfigError("--model picks the offline model; the WaveSpeed service has one model",
                          hint="add --backend local to use the offline model")
    if config.output.background:
        parse_color(config.output.background)  # a bad colour is a usage error, before any work
    if config.output.foreground and not config.output.mask_only:
        _require_numpy()
    found = expand_inputs(args.inputs, config.output.suffix, out_dir, recursive=args.recursive)
    origins = Origins()
    subfolders = (f"{_count(found.subfolders, 'subfolder')} left out "
                  f"({', '.join(found.subfolder_parents)}): add -r to include them")
    if not found.images:
        raise ConfigError(f"no images found in {', '.join(args.inputs)}",
                          hint=subfolders if found.subfolders else
                          f"images are {', '.join(sorted(IMAGE_SUFFIXES))}")
    if out_file is not None:
        if len(found.images) != 1:
            raise ConfigError(f"-o {out_file} names one result file, but there are "
                              f"{len(found.images)} images", hint="give a folder to -o")
        if path_key(out_file) == path_key(found.images[0]):
            raise ConfigError(f"-o {out_file} is the input itself: its result would replace it",
                              hint="name another result file, or give a folder to -o")
        origin = origins.of(out_file) if origins.is_anothers(out_file, found.images[0]) else None
        if origin is not None:  # skipping it would be a false skip, replacing it a loss
            raise ConfigError(f"-o {out_file} is the result of another image ({origin.input})",
                              hint="name another result file, or move that one away first")
        plan = [(found.images[0], out_file)]
    else:
        plan = plan_outputs(found.images, out_dir, config.output, subdirs=found.subdirs,
                            origins=origins)
    check_output_folder(out_file.parent if out_file is not None else out_dir)
    if found.subfolders:
        _say(subfolders)
    backend = make_backend(config)
    if len(plan) > 1:
        resume_collection()  # started: from here each image leaves garbage to collect
    try:
        _prepare(backend)
        results = run_batch(plan, backend, config, json_lines=args.json,
                            overwrite=args.overwrite, origins=origins)
    finally:
        backend.close()
    _say(summary(results, found.others))
    return EXIT_OK if all(r.status in ("ok", "skipped") for r in results) else EXIT_FAILED


def _say(text: str) -> None:
    from bgremove.logs import printable

    sys.stderr.write(printable(f"bgremove: {text}") + "\n")
    sys.stderr.flush()


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


# --- where the results go ------------------------------------------------------------------

#: ``-o NAME`` with one of these endings (and not an existing folder) names the result file.
_NAMED_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp",
                  ".tif": "tiff", ".tiff": "tiff"}


def output_target(value: str | None) -> tuple[Path | None, Path | None]:
    """``(folder, None)``, ``(None, file)`` or ``(None, None)`` (beside each input) for ``-o``."""
    from bgremove.batch import IMAGE_SUFFIXES

    if not value:
        return None, None
    path = Path(value)
    if path.suffix.lower() in _NAMED_FORMATS and not path.is_dir():
        return None, path
    if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
        # `-o cutout.gif`: a result file was meant, not a folder named so
        raise ConfigError(f"-o {value}: {path.suffix} is not an output format",
                          hint="name the result .png, .jpg, .webp or .tif, or give a folder")
    return path, None


def _format_of(out_file: Path | None, asked: str | None) -> str | None:
    """The output format a result file's name implies; a contradicting ``--format`` is refused."""
    if out_file is None:
        return None
    named = _NAMED_FORMATS[out_file.suffix.lower()]
    if asked is not None and asked != named:
        raise ConfigError(f"--format {asked} contradicts the result name {out_file}",
                          hint=f"name it .{asked if asked != 'tiff' else 'tif'}, "
                          "or drop --format")
    return named


def check_output_folder(folder: Path | None) -> None:
    """Check once, before anything is sent, that ``-o``'s folder can take the results."""
    if folder is None:
        return
    from bgremove.batch import OutputCheck

    problem = OutputCheck.probe(folder)
    if problem is not None:
        raise ConfigError(problem.message, hint=problem.hint)


def summary(results: list[JobResult], others: Counter[str] | None = None) -> str:
    """The closing line: what was done, skipped and failed, and what was left out."""
    counts = Counter(r.status for r in results)
    parts = [f"{counts['ok']} done"]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped (result already there; --overwrite "
                     "to redo)")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    text = f"{_count(len(results), 'image')}: {', '.join(parts)}"
    empty = sum(1 for r in results if r.warning)
    if empty:
        text += f"; {empty} with no subject found"
    if others:
        endings = ", ".join(sorted(others))
        text += (f"; {_count(sum(others.values()), 'other file')} left out "
                 f"(not images bgremove reads: {endings})")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def run_batch(plan: list[tuple[Path, Path]], backend: Backend, config: Config, *,
              json_lines: bool, out: TextIO | None = None, err: TextIO | None = None,
              overwrite: bool = False, origins: Origins | None = None) -> list[JobResult]:
    """``bgremove.batch.run_batch`` with each result printed as it ends and a progress line
    (a bar with the time left on a terminal, a plain line every 10 s elsewhere)."""
    from bgremove import batch
    from bgremove.console import PLAIN_EVERY_SECONDS, Console, Progress

    out = out or sys.stdout
    err = err or sys.stderr
    console = Console(err, live=False if json_lines else None,
                      plain_every=None if json_lines else PLAIN_EVERY_SECONDS)
    console.attach()
    bar = Progress(console, len(plan))

    def on_result(result: JobResult) -> None:
        with console.cleared():
            _report(result, json_lines, out, err)
        bar.step(result.status != "failed")

    def on_interrupt(in_flight: int) -> None:
        console.close()
        if in_flight:
            err.write(f"bgremove: stopped; {in_flight} image(s) were at the service and may "
                      "still be billed: run the same command again to get their results "
                      "without paying twice (`bgremove tasks` lists them)\n")

    try:
        return batch.run_batch(plan, backend, config, on_result=on_result,
                               on_interrupt=on_interrupt, overwrite=overwrite,
                               origins=origins)
    finally:
        bar.finish()  # the closing line is run()'s summary


def _report(result: JobResult, json_lines: bool, out: TextIO, err: TextIO) -> None:
    from bgremove.logs import printable

    if json_lines:
        out.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
        out.flush()
    elif result.status == "skipped":
        pass  # counted in the summary: a re-run of a big folder is not a page of lines
    elif result.status == "ok":
        out.write(printable(f"{result.input} -> {result.output} ({result.seconds:.1f} s)") + "\n")
        out.flush()
        if result.warning:
            err.write(printable(f"bgremove: warning: {result.input}: {result.warning}") + "\n")
            err.flush()
    else:
        # Core errors usually name the file already; add it only where they do not.
        text = str(result.error)
        where = "" if str(result.input) in text else f"{result.input}: "
        err.write(printable(f"bgremove: error: {where}{text}") + "\n")
        err.flush()
