"""The account's limits, said once (``wavespeed.account_level`` / ``images_per_minute``), kept
by ``remove`` as by ``watch``: against the emulator, which answers 429 beyond its limit."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bgremove import account
from bgremove.account import account_limits
from bgremove.cli import main
from bgremove.config import Config
from tests.images import tiny_pngs
from tests.test_watch_rate import most_in_any_window


@pytest.mark.parametrize(("keys", "remove", "daemon"), [
    ({}, (4, 0), (2, 0)),
    ({"wavespeed.images_per_minute": 7}, (4, 7), (2, 7)),
    ({"wavespeed.account_level": "bronze"}, (2, 2), (2, 2)),
    ({"wavespeed.account_level": "silver", "concurrency": 400,
      "watch.concurrency": 50}, (300, 500), (50, 500)),
    # the daemon's own keys win for the daemon alone
    ({"wavespeed.images_per_minute": 7, "watch.images_per_minute": 0}, (4, 7), (2, 0)),
    ({"wavespeed.images_per_minute": 7, "watch.images_per_minute": 3}, (4, 7), (2, 3)),
    ({"wavespeed.account_level": "bronze", "watch.account_level": "gold",
      "watch.concurrency": 8}, (2, 2), (8, 3000)),
    # the level caps a rate set higher than its own
    ({"wavespeed.images_per_minute": 900, "wavespeed.account_level": "silver"},
     (4, 500), (2, 500)),
])
def test_the_account_is_said_once_for_remove_and_watch(
        keys: dict[str, Any], remove: tuple[int, int], daemon: tuple[int, int]) -> None:
    config = Config().with_overrides(keys)
    for limits, expect in ((account_limits(config), remove),
                           (account_limits(config, daemon=True), daemon)):
        assert (limits.concurrency, limits.images_per_minute) == expect


@pytest.mark.parametrize(("count", "said"), [(2, False), (3, True)])
def test_remove_says_once_that_it_paces_to_the_account_level(
        tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], count: int, said: bool) -> None:
    monkeypatch.setattr(account, "MINUTE", 0.5)  # the service's minute, shortened for the test
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)
    (tmp_path / "in").mkdir()
    tiny_pngs(tmp_path / "in", count)
    code = main(["remove", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--backend", "wavespeed", "--account-level", "bronze",
                 "--images-per-minute", "3"])  # the level caps it at 2
    assert code == 0
    paced = [line for line in capsys.readouterr().err.splitlines() if "pacing" in line]
    # a batch the rate does not slow is not told about it
    assert paced == (["bgremove: pacing to 2 images a minute (account level bronze)"]
                     if said else []), paced


@pytest.mark.parametrize("limited", [True, False])
def test_remove_keeps_to_the_images_per_minute(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], limited: bool) -> None:
    """More images than the limit, all let in at once: with the limit set none is refused
    (they wait for the window), without it the service refuses some (it is the judge)."""
    limit, window = 3, 2.0  # the service's minute, shortened for the test
    monkeypatch.setattr(account, "MINUTE", window)
    emu = emulator_factory(images_per_minute=limit, rate_window=window)
    monkeypatch.setenv("WAVESPEED_API_KEY", emu.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
    count = 2 * limit + 1
    (tmp_path / "in").mkdir()
    inputs = tiny_pngs(tmp_path / "in", count)
    flags = ["--images-per-minute", str(limit)] if limited else []
    code = main(["remove", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--backend", "wavespeed", "--concurrency", str(count), *flags])
    rate_limited = emu.stats()["rate_limited"]
    if not limited:
        assert rate_limited > 0, "the test does not go over the service's limit"
        return
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in inputs)
    assert rate_limited == 0, "a submit went over the service's images per minute"
    paced = [line for line in capsys.readouterr().err.splitlines() if "pacing" in line]
    assert len(paced) == 1 and paced[0].endswith(
        "pacing to 3 images a minute (wavespeed.images_per_minute or --images-per-minute)")
    created = [datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")).timestamp()
               for p in emu.list_predictions()]
    assert len(created) == count and most_in_any_window(created, window) <= limit
