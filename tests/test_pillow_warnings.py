"""Pillow's warnings are bgremove's to handle inside its own image work, and only there: a
library user's warning filters, and the warnings of their own Pillow calls (on any thread,
while bgremove decodes on another), stay theirs."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from PIL import Image

from bgremove.imaging import load_image, pillow_scope
from tests.test_cli_deliverables import _with_damaged_exif
from tests.test_imaging_inputs import MAX

REPO = Path(__file__).resolve().parents[1]

LIBRARY_USER = """
import sys, warnings
from PIL import Image
from bgremove.errors import ImageTooLargeError
from bgremove.imaging import load_image, prepare_file

damaged, header_only = sys.argv[1], sys.argv[2]
before = list(warnings.filters)
load_image(damaged, max_pixels=10**8)  # a raw Pillow warning would print on stderr
prepare_file(damaged, max_pixels=10**8, max_upload_bytes=10**7, max_upload_side=4096)
Image.MAX_IMAGE_PIXELS = 1000  # the user's own bomb limit: 40x40 only warns in Pillow
try:
    load_image(header_only, max_pixels=1000)
except ImageTooLargeError as exc:
    assert "decompression bomb" in str(exc), exc
else:
    raise AssertionError("a bomb in Pillow's warning range was not refused")
Image.MAX_IMAGE_PIXELS = 10**8
assert warnings.filters == before, [f for f in warnings.filters if f not in before]
with warnings.catch_warnings(record=True) as caught:  # the user's own Pillow call warns
    warnings.simplefilter("always")
    with Image.open(damaged) as im:
        im.getexif()
shown = [(w.category.__name__, w.filename, str(w.message)) for w in caught]
assert caught and all(w.category is UserWarning for w in caught), shown
assert all(w.filename.endswith("TiffImagePlugin.py") for w in caught), shown  # Pillow's line
print("ok")
"""


def test_a_library_users_filters_are_untouched_and_bgremove_prints_no_raw_warning(
        tmp_path: Path) -> None:
    """In a fresh process, as a library user has it: bgremove's decoding of a damaged EXIF
    block and of a bomb in Pillow's warning range adds no filter, prints no raw warning,
    and still refuses the bomb."""
    from tests import images as img

    damaged = _with_damaged_exif(tmp_path / "broken.jpg", "entries")
    header_only = img.make_png_header_only(tmp_path / "warn.png", (40, 40))
    done = subprocess.run([sys.executable, "-c", LIBRARY_USER, str(damaged), str(header_only)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    assert "Warning" not in done.stderr and "warn(" not in done.stderr, done.stderr


def test_bgremove_reports_damaged_exif_in_one_line_and_raises_no_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under this test suite's own filters (every warning an error) bgremove's decode of a
    damaged block raises nothing and says so once."""
    damaged = _with_damaged_exif(tmp_path / "broken.jpg", "value")
    with caplog.at_level("WARNING"):
        source = load_image(damaged, max_pixels=MAX)
    assert source.exif is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{damaged}: its EXIF data is damaged; the cut-out is written without it"]


def test_another_threads_pillow_warning_is_its_own_while_bgremove_decodes(
        tmp_path: Path) -> None:
    """While a thread is inside bgremove's scope, a Pillow warning on another thread still
    meets that thread's filters (here this suite's: an error). A scope made of
    ``warnings.catch_warnings`` would have changed the one list every thread reads."""
    damaged = _with_damaged_exif(tmp_path / "broken.jpg", "entries")
    inside, leave = threading.Event(), threading.Event()

    def bgremove_decoding() -> None:
        with pillow_scope():
            inside.set()
            leave.wait(60)

    worker = threading.Thread(target=bgremove_decoding, daemon=True)
    worker.start()
    try:
        assert inside.wait(60)
        assert any(f[0] == "error" for f in warnings.filters)  # this suite's filter
        with pytest.raises(UserWarning, match="EXIF"), Image.open(damaged) as im:
            im.getexif()
    finally:
        leave.set()
        worker.join(60)
