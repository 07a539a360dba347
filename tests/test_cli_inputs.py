"""The bad-input matrix through the real command: one batch holding every kind of input.

Good inputs of every accepted kind come out at their oriented size; each bad one
gives exactly one line naming its file; the batch completes and exits 1; no
input file is lost or changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from bgremove.cli import main
from tests import images as img

GOOD: dict[str, Callable[[Path], Path]] = {
    "photo.jpg": lambda p: img.make_jpeg_with_exif_orientation(p, 6, (48, 32)),
    "plain.png": lambda p: img.make_rgba_png(p),
    "still.webp": lambda p: img.make_webp(p, img.photo_like((40, 30))),
    "scan.tif": lambda p: img.make_tiff(p, img.photo_like((40, 30))),
    "old.bmp": lambda p: img.make_bmp(p, img.photo_like((40, 30))),
    "anim.gif": img.make_animated_gif,
    "print.jpg": lambda p: img.make_cmyk_jpeg(p),
    "deep.png": img.make_png48,
    "grey16.tif": img.make_tiff16_grey,
    "palette.png": img.make_palette_png_with_transparency,
    "la.png": img.make_la_png,
    "gps and icc.jpg": img.make_jpeg_with_gps_and_icc,
    "naïve café ☕.png": lambda p: _save(img.photo_like((24, 16)), p),
}

BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "bomb.png": (img.make_decompression_bomb, "pixels"),
    "half.jpg": (lambda p: img.make_truncated(p, "JPEG"), "half.jpg"),
    "empty.png": (img.make_zero_byte, "empty"),
    "notes.jpg": (img.make_text_as_jpg, "notes.jpg"),
    "paint.pcx": (img.make_unsupported, "PCX"),
}


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.fixture
def env_for(emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)


def test_every_input_kind_in_one_batch(tmp_path: Path, env_for: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    inbox = tmp_path / "in dir"
    inbox.mkdir()
    paths = {name: make(inbox / name) for name, make in GOOD.items()}
    for name, (make, _) in BAD.items():
        paths[name] = make(inbox / name)
    missing = inbox / "gone.png"
    before = {p: p.read_bytes() for p in paths.values()}
    out_dir = tmp_path / "out"

    code = main(["remove", *map(str, paths.values()), str(missing), "-o", str(out_dir),
                 "--json", "--concurrency", "4"])

    captured = capsys.readouterr()
    records = {Path(r["input"]).name: r for r in map(json.loads, captured.out.splitlines())}
    assert code == 1
    assert set(records) == set(GOOD) | set(BAD) | {"gone.png"}
    for name in GOOD:
        assert records[name]["status"] == "ok", (name, records[name]["error"])
        with Image.open(records[name]["output"]) as out, Image.open(paths[name]) as src:
            expected = src.size[::-1] if name == "photo.jpg" else src.size  # EXIF 6: rotated
            assert out.size == expected, name
    for name, (_, words) in BAD.items():
        record = records[name]
        assert record["status"] == "failed" and record["output"] is None
        assert words in record["error"], (name, record["error"])
        assert "\n" not in record["error"] and "Traceback" not in record["error"]
    assert "gone.png" in records["gone.png"]["error"]
    assert "Traceback" not in captured.err
    assert all(p.read_bytes() == data for p, data in before.items())  # no input lost or changed


def test_error_lines_without_json_name_each_file_once(tmp_path: Path, env_for: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = [make(tmp_path / name) for name, (make, _) in BAD.items()]
    good = GOOD["plain.png"](tmp_path / "fine.png")
    assert main(["remove", *map(str, bad), str(good)]) == 1
    captured = capsys.readouterr()
    *err_lines, closing = captured.err.strip().splitlines()
    assert closing == f"bgremove: 6 images: 1 done, {len(bad)} failed"
    assert len(err_lines) == len(bad)
    for path in bad:
        assert sum(str(path) in line for line in err_lines) == 1
    assert all(line.startswith("bgremove: ") for line in err_lines)
    assert "fine.png" in captured.out and (tmp_path / "fine-nobg.png").exists()
