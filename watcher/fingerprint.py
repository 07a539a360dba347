"""The journal key's parts: a file's content hash and the settings that shape its cut-out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgremove.config import Config


def settings_fingerprint(config: Config, backend_name: str) -> str:
    """What makes two cut-outs of one image differ: backend and output options."""
    output = dataclasses.asdict(config.output)
    output.pop("suffix", None)  # names files next to their input; unused by the daemon
    parts: dict[str, Any] = {"backend": backend_name, "output": output,
                             "max_pixels": config.input.max_pixels}
    if backend_name == "wavespeed":  # what is uploaded decides the cut-out's detail
        parts["upload"] = {"max_side": config.wavespeed.max_upload_side,
                           "max_bytes": config.wavespeed.max_upload_bytes}
    if backend_name == "local":
        parts["local"] = {"model": config.local.model, "refine": config.local.refine,
                          "refine_size": config.local.refine_size}
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()
