"""bgremove doctor: each check prints one line, and a problem makes it exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgremove.cli import main


@pytest.fixture
def plugins_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Keep the plug-in check away from the real user's GIMP folders.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))
    return tmp_path


def test_doctor_reports_service_and_balance(emulator, plugins_dir: Path,  # type: ignore[no-untyped-def]
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)
    main(["doctor"])
    out = capsys.readouterr().out
    lines = {line.split("]")[1].split(":")[0].strip(): line for line in out.splitlines()}
    assert "[  ok] api key: set in WAVESPEED_API_KEY (not shown)" in out
    assert lines["service"].startswith("[  ok]") and "balance" in lines["service"]
    assert emulator.api_key not in out
    assert "gimp plug-in" in lines


def test_doctor_explains_a_refused_key(emulator_factory, plugins_dir: Path,  # type: ignore[no-untyped-def]
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    emu = emulator_factory(key_state="inactive")
    monkeypatch.setenv("WAVESPEED_API_KEY", "wsk-not-yet-topped-up")
    monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    service = next(line for line in out.splitlines() if "] service:" in line)
    assert service.startswith("[FAIL]") and "401" in service and "top" in service
    assert "wsk-not-yet-topped-up" not in out


def test_doctor_without_key_warns_and_names_the_variable(
        plugins_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "WAVESPEED_API_KEY" in out
    assert "] service:" not in out  # nothing to check without a key


def test_doctor_fails_on_a_bad_config_file(tmp_path: Path, plugins_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("backend: cloud\n")
    assert main(["doctor", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("[FAIL] config:") and "backend" in out
