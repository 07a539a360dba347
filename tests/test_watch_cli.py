"""``bgremove watch`` as a user runs it (a subprocess): duplicates, folders, the service, status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_watch_process import Proc
from tests.test_watch_support import files, image_bytes, write_image

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def test_inputs_with_the_same_content_each_get_their_output(tmp_path: Path,
                                                             emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "a.png", 1)
    write_image(inbox / "b.png", 1)  # a SKU-named batch: same photo, two names
    write_image(inbox / "c.png", 2)
    write_image(inbox / "shoot1" / "x.png", 3)  # a mirrored shoot folder
    write_image(inbox / "shoot2" / "x.png", 3)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive")
    assert proc.wait(60) == 0, proc.log()
    assert files(outbox) == ["a.png", "b.png", "c.png", "shoot1/x.png", "shoot2/x.png"]
    assert os.path.samefile(outbox / "a.png", outbox / "b.png")
    assert os.path.samefile(outbox / "shoot1/x.png", outbox / "shoot2/x.png")
    assert emu.stats()["tasks_submitted"] == 3  # one upload per content, not per name
    assert proc.log().count("not sent again") == 2

    # the same file dropped again: already has its output, no second copy, nothing sent
    (inbox / "b.png").write_bytes(image_bytes(1))
    again = Proc(tmp_path, emu, str(inbox), str(outbox), "--once", "--recursive", name="again")
    assert again.wait(60) == 0, again.log()
    assert files(outbox) == ["a.png", "b.png", "c.png", "shoot1/x.png", "shoot2/x.png"]
    assert emu.stats()["tasks_submitted"] == 3
