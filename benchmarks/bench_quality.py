"""Quality of the local backend's alpha on images with known alpha, beside rembg.

    .venv/bin/python benchmarks/bench_quality.py [--set DIR] [--no-rembg]

The set (16 images, 800x600) is built once by ``benchmarks/local_dataset.py``
from scikit-image's bundled public-domain photos (see that file); it runs in
the throwaway rembg venv (``scripts/rembg-env.sh``), which has scikit-image.
Models come from the bgremove cache (``bgremove models fetch u2netp``, ``... u2net``);
rembg is pointed at the same files with ``U2NET_HOME`` and given its session
explicitly.

Alpha metrics, averaged over the images (alpha in 0..1):
    IoU   of the masks thresholded at 0.5 (higher is better)
    SAD   sum of |predicted - true| over the image, in thousands (lower is better)
    MSE   mean squared error, x 1e-3 (lower is better)
Foreground colour on the true soft edge (0 < alpha < 1), alpha-weighted mean
absolute error in 0..255 levels against the true foreground colour: the raw
pixel (what a plain cut-out keeps), ``bgremove.imaging.estimate_foreground``,
and pymatting's ``estimate_foreground_ml`` (what rembg uses), all given the
true alpha.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import throwaway_state
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SET = Path(os.environ.get("BGREMOVE_BENCH_DIR", "/tmp/bgremove-bench")) / "quality-set"


def rembg_python() -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "rembg-env.sh")], check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def ensure_set(folder: Path) -> list[str]:
    if not any(folder.glob("*.alpha.png")):
        subprocess.run([rembg_python(), str(ROOT / "benchmarks" / "local_dataset.py"),
                        str(folder)], check=True)
    return sorted(p.name[: -len(".alpha.png")] for p in folder.glob("*.alpha.png"))


def load_alpha(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def alpha_metrics(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    p, t = pred > 0.5, true > 0.5
    union = (p | t).sum()
    iou = float((p & t).sum() / union) if union else 1.0
    diff = pred - true
    return iou, float(np.abs(diff).sum() / 1000), float((diff**2).mean() * 1000)


def score(masks: dict[str, np.ndarray], folder: Path) -> tuple[float, float, float]:
    rows = [alpha_metrics(masks[n], load_alpha(folder / f"{n}.alpha.png")) for n in masks]
    return tuple(float(np.mean([r[i] for r in rows])) for i in range(3))  # type: ignore[return-value]


Masks = dict[str, np.ndarray]


def ours(model: str, refine: bool, folder: Path, names: list[str]) -> tuple[Masks, float]:
    from bgremove.config import Config, LocalConfig
    from bgremove.local import LocalBackend

    backend = LocalBackend(Config(local=LocalConfig(model=model, refine=refine)))
    backend.prepare()
    masks, spent = {}, 0.0
    for n in names:
        with Image.open(folder / f"{n}.png") as im:
            img = im.convert("RGB")
        t = time.perf_counter()
        alpha = backend.cut_out(img).alpha
        spent += time.perf_counter() - t
        masks[n] = np.asarray(alpha, dtype=np.float64) / 255.0
    return masks, spent / len(names)


def rembg(model: str, folder: Path, names: list[str], py: str) -> tuple[Masks, float]:
    from bgremove.local.models import model_dir

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, U2NET_HOME=str(model_dir()))
        t = time.perf_counter()
        subprocess.run([py, str(ROOT / "benchmarks" / "local_rembg_masks.py"), model, str(folder),
                        tmp, *names], check=True, env=env)
        spent = time.perf_counter() - t  # includes start-up; bench_local.py measures speed
        masks = {n: load_alpha(Path(tmp) / f"{n}.png") for n in names}
    return masks, spent / len(names)


def fg_error(fg: np.ndarray, folder: Path, name: str) -> tuple[float, float]:
    """Alpha-weighted absolute error (levels) on the soft edge, and the weight."""
    alpha = load_alpha(folder / f"{name}.alpha.png")
    with Image.open(folder / f"{name}.fg.png") as im:
        true = np.asarray(im.convert("RGB"), dtype=np.float64)
    soft = (alpha > 0) & (alpha < 1)
    w = alpha[soft]
    err = np.abs(fg[soft] - true[soft]).mean(axis=1)
    return float((err * w).sum()), float(w.sum())


def foreground_rows(folder: Path, names: list[str],
                    py: str | None) -> list[tuple[str, float, float]]:
    from bgremove.imaging import estimate_foreground

    totals: dict[str, list[float]] = {"raw pixel": [0, 0, 0], "bgremove blur fusion": [0, 0, 0]}
    for n in names:
        with Image.open(folder / f"{n}.png") as im:
            img = im.convert("RGB")
        with Image.open(folder / f"{n}.alpha.png") as im:
            alpha = im.convert("L")
        e, w = fg_error(np.asarray(img, dtype=np.float64), folder, n)
        totals["raw pixel"][0] += e
        totals["raw pixel"][1] += w
        t = time.perf_counter()
        fg = estimate_foreground(img, alpha)
        totals["bgremove blur fusion"][2] += time.perf_counter() - t
        e, w = fg_error(np.asarray(fg, dtype=np.float64), folder, n)
        totals["bgremove blur fusion"][0] += e
        totals["bgremove blur fusion"][1] += w
    if py:
        code = (
            "import sys,time,numpy as np\nfrom PIL import Image\n"
            "from pymatting import estimate_foreground_ml\n"
            "src,dst=sys.argv[1],sys.argv[2]\nspent=0\n"
            "for n in sys.argv[3:]:\n"
            "    img=np.asarray(Image.open(f'{src}/{n}.png').convert('RGB'))/255.0\n"
            "    a=np.asarray(Image.open(f'{src}/{n}.alpha.png').convert('L'))/255.0\n"
            "    t=time.perf_counter(); f=estimate_foreground_ml(img,a)\n"
            "    spent+=time.perf_counter()-t; f=(np.clip(f,0,1)*255+0.5).astype(np.uint8)\n"
            "    Image.fromarray(f).save(f'{dst}/{n}.png')\n"
            "print(spent)\n")
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([py, "-c", code, str(folder), tmp, *names], check=True,
                                 stdout=subprocess.PIPE, text=True)
            spent = float(out.stdout.strip().splitlines()[-1])
            acc = [0.0, 0.0, spent]
            for n in names:
                with Image.open(Path(tmp) / f"{n}.png") as im:
                    e, w = fg_error(np.asarray(im.convert("RGB"), dtype=np.float64), folder, n)
                acc[0] += e
                acc[1] += w
            totals["pymatting estimate_foreground_ml"] = acc
    return [(k, v[0] / v[1], v[2] / len(names)) for k, v in totals.items()]


def main() -> int:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="folder of the image set")
    parser.add_argument("--no-rembg", action="store_true", help="skip rembg and pymatting")
    parser.add_argument("--models", default="u2netp,u2net")
    args = parser.parse_args()
    names = ensure_set(args.set)
    py = None if args.no_rembg else rembg_python()
    print(f"{len(names)} images of 800x600 with known alpha in {args.set}\n")
    print("| model | method | IoU | SAD (k) | MSE (1e-3) | s/image |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for label, refine in (("bgremove", False), ("bgremove + refine", True)):
            masks, spent = ours(model, refine, args.set, names)
            iou, sad, mse = score(masks, args.set)
            print(f"| {model} | {label} | {iou:.4f} | {sad:.2f} | {mse:.2f} "
                  f"| {spent:.2f} |", flush=True)
        if py:
            masks, spent = rembg(model, args.set, names, py)
            iou, sad, mse = score(masks, args.set)
            print(f"| {model} | rembg {_rembg_version(py)} | {iou:.4f} | {sad:.2f} "
                  f"| {mse:.2f} | {spent:.2f}* |", flush=True)
    if py:
        print("\n* rembg's time includes its process start-up; see bench_local.py for speed")
    print("\nForeground colour on the true soft edge (true alpha given), alpha-weighted mean "
          "absolute error in 0..255 levels:\n")
    print("| method | error | s/image |")
    print("|---|---|---|")
    for label, err, spent in foreground_rows(args.set, names, py):
        print(f"| {label} | {err:.2f} | {spent:.3f} |")
    return 0


def _rembg_version(py: str) -> str:
    out = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('rembg'))"],
                         stdout=subprocess.PIPE, text=True, check=False)
    return out.stdout.strip()


if __name__ == "__main__":
    raise SystemExit(main())
