"""What a hostile service costs `bgremove remove`, and what verifying the local model costs.

Each attack of issue 8 (served by ``tests/hostile.py`` on 127.0.0.1) is run against a
real `bgremove remove` of one 64x48 image; reported: exit code, wall time and the
child's peak resident memory (its own VmHWM). Then the model check done once per
process: ``load_verified("u2netp")`` when it is cached, and read + sha256 of a file
the size of u2net (176 MiB).

    .venv/bin/python benchmarks/bench_untrusted.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import throwaway_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import (  # noqa: E402 - after the path set-up
    Handler,
    HostileService,
    base64_result,
    drip,
    endless,
    fixed,
    gzip_of_zeros,
    huge_png,
    nested_json,
    postscript,
    run_bgremove,
    small_cutout,
)

CONFIG = """backend: wavespeed
wavespeed:
  retry: {max_attempts: 2, backoff_initial: 0.01, backoff_max: 0.05}
  poll: {initial: 0.05, max: 0.1}
  timeouts: {download: 3, result: 30, overall: 10}
"""


def processing(handler: Any, service: HostileService) -> None:
    fixed(json.dumps(service.prediction("processing")).encode(), "application/json")(
        handler, service)


def attacks() -> list[tuple[str, dict[str, Handler], str]]:
    """(name, HostileService handlers, extra config under wavespeed:)."""
    bomb = gzip_of_zeros(1 << 30)
    gzip = {"Content-Encoding": "gzip"}
    return [
        ("honest answer", {"output": fixed(small_cutout())}, ""),
        ("PostScript result", {"output": fixed(postscript(), "application/postscript")}, ""),
        ("download drip, 1 byte / 0.5 s", {"output": drip(small_cutout() + bytes(4000))}, ""),
        ("1 GiB gzip bomb download", {"output": fixed(bomb, headers=gzip)}, ""),
        ("1 GiB gzip bomb JSON answer", {"submit": processing,
                                         "result": fixed(bomb, "application/json", gzip)},
         "  wait: poll\n"),
        ("500 MiB download", {"output": endless(500 << 20)}, ""),
        ("9000x9000 PNG result", {"output": fixed(huge_png(9000, 9000))}, ""),
        ("200 MiB base64 output", {"submit": processing, "result": base64_result(200 << 20)},
         "  wait: poll\n  base64_output: true\n"),
        ("nested JSON submit answer",
         {"submit": fixed(nested_json(), "application/json")}, ""),
    ]


def run_attacks() -> list[dict[str, Any]]:
    from PIL import Image

    rows = []
    for name, handlers, extra in attacks():
        with tempfile.TemporaryDirectory() as tmp_name, HostileService(**handlers) as svc:
            tmp = Path(tmp_name)
            cfg = tmp / "config.yaml"
            cfg.write_text(CONFIG + extra)
            cfg.chmod(0o600)
            Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp / "in.png")
            env = {**os.environ, **svc.env(), "BGREMOVE_CONFIG": str(cfg),
                   "HOSTILE_TMP": str(tmp)}
            out = run_bgremove(["remove", str(tmp / "in.png"), "-o", str(tmp / "out")], env,
                               limit=120)
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
            rows.append({"attack": name, "exit": out.code, "seconds": round(out.seconds, 2),
                         "peak_mb": round(out.max_rss_mb, 1),
                         "submits": svc.counts.get("submit", 0), "said": last[-160:]})
    return rows


def timed(fn: Callable[[], object], reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def model_check() -> dict[str, Any]:
    from bgremove.local.models import get_spec, load_verified, verify_cached

    result: dict[str, Any] = {}
    if verify_cached(get_spec("u2netp")) is not None:
        result["u2netp_load_verified_ms"] = round(1000 * timed(lambda: load_verified("u2netp")), 1)
    with tempfile.NamedTemporaryFile() as blob:
        chunk = os.urandom(1 << 20)
        for _ in range(176):
            blob.write(chunk)
        blob.flush()
        path = Path(blob.name)
        result["176MiB_read_ms"] = round(1000 * timed(path.read_bytes, 3), 1)
        data = path.read_bytes()
        result["176MiB_sha256_ms"] = round(1000 * timed(lambda: hashlib.sha256(data).digest(),
                                                        3), 1)
    return result


def main() -> None:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    rows = run_attacks()
    width = max(len(r["attack"]) for r in rows)
    print(f"{'attack':<{width}}  exit  seconds  peak MB  submits")
    for r in rows:
        print(f"{r['attack']:<{width}}  {r['exit']:>4}  {r['seconds']:>7}  {r['peak_mb']:>7}  "
              f"{r['submits']:>7}")
    check = model_check()
    for key, value in check.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps({"attacks": rows, "model": check}, indent=2))


if __name__ == "__main__":
    main()
