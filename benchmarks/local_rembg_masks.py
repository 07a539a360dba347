"""rembg's masks for a folder of images (run inside the rembg venv, see scripts/rembg-env.sh).

Usage: U2NET_HOME=MODELS python benchmarks/local_rembg_masks.py MODEL IN_DIR OUT_DIR NAME...
Writes OUT_DIR/NAME.png, the mask rembg's session predicts for IN_DIR/NAME.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from rembg import new_session, remove

model, src, dst, names = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
dst.mkdir(parents=True, exist_ok=True)
session = new_session(model)
for name in names:
    with Image.open(src / f"{name}.png") as im:
        mask = remove(im.convert("RGB"), session=session, only_mask=True)
    mask.save(dst / f"{name}.png")
