"""The bgremove command: help, version, exit codes, batches, JSON lines, the key kept secret."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bgremove.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def emulator_env(emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Point the command at a running emulator through the environment, as a user would."""
    empty = tmp_path / "empty-config.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("BGREMOVE_CONFIG", str(empty))
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(action.choices)  # type: ignore[attr-defined]


def test_every_command_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    names = _subcommands()
    assert {"remove", "doctor", "emulator", "models", "watch", "status", "gimp"} <= set(names)
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {c.dest: c.help for c in action._choices_actions}  # type: ignore[attr-defined]
    for name in names:
        assert helps.get(name), f"{name} has no help line"
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: bgremove" in capsys.readouterr().out


def test_version_and_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "bgremove", "--version"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout.startswith("bgremove ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def _solid(path: Path, colour: tuple[int, int, int] = (0, 200, 0)) -> Path:
    img = Image.new("RGB", (40, 30), colour)
    img.paste((200, 20, 20), (10, 5, 30, 25))
    img.save(path)
    return path


def test_missing_key_with_wavespeed_backend_exits_2(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WAVESPEED_API_KEY", raising=False)
    monkeypatch.setenv("BGREMOVE_CONFIG", str(tmp_path / "absent.yaml"))
    (tmp_path / "absent.yaml").write_text("{}\n")
    src = _solid(tmp_path / "a.png")
    assert main(["remove", str(src), "--backend", "wavespeed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WAVESPEED_API_KEY" in err[0]


def test_bad_config_exits_2_with_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output:\n  format: gif\n")
    src = _solid(tmp_path / "a.png")
    assert main(["remove", str(src), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and "output.format" in err[0]


def test_bad_background_colour_is_a_usage_error(tmp_path: Path, emulator_env: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = _solid(tmp_path / "a.png")
    assert main(["remove", str(src), "--background", "not-a-colour"]) == 2
    assert "not-a-colour" in capsys.readouterr().err


def test_batch_continues_past_bad_files_and_reports_json(
        tmp_path: Path, emulator_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    good = _solid(tmp_path / "good photo é.png")
    bad = tmp_path / "fake.jpg"
    bad.write_text("this is not an image")
    missing = tmp_path / "missing.png"
    out_dir = tmp_path / "out"
    code = main(["remove", str(good), str(bad), str(missing), "-o", str(out_dir), "--json",
                 "--concurrency", "3"])
    assert code == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_input = {Path(r["input"]).name: r for r in lines}
    assert set(by_input) == {good.name, bad.name, missing.name}
    for record in lines:
        assert set(record) >= {"input", "output", "status", "error", "seconds", "task_id"}
    assert by_input[good.name]["status"] == "ok"
    assert by_input[good.name]["task_id"]
    assert Path(by_input[good.name]["output"]) == out_dir / "good photo é.png"
    assert by_input[bad.name]["status"] == "failed" and "fake.jpg" in by_input[bad.name]["error"]
    assert by_input[missing.name]["status"] == "failed"
    with Image.open(out_dir / "good photo é.png") as result:
        assert result.mode == "RGBA" and result.size == (40, 30)
        # The key-out model keys the corner colour: background transparent, subject opaque.
        assert result.getpixel((0, 0))[3] == 0
        assert result.getpixel((20, 15)) == (200, 20, 20, 255)


def test_outputs_never_collide_or_overwrite_an_input(tmp_path: Path, emulator_env: None) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _solid(tmp_path / "a" / "x.png")
    two = _solid(tmp_path / "b" / "x.png", (0, 0, 200))
    three = _solid(tmp_path / "a" / "x.jpg")
    before = one.read_bytes()
    assert main(["remove", str(one), str(two), str(three), "-o", str(tmp_path / "a")]) == 0
    outputs = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert outputs == ["x-2.png", "x-3.png", "x-4.png", "x.jpg", "x.png"]
    assert one.read_bytes() == before


def test_default_output_is_beside_the_input(tmp_path: Path, emulator_env: None) -> None:
    src = _solid(tmp_path / "photo.png")
    assert main(["remove", str(src), "--format", "webp"]) == 0
    with Image.open(tmp_path / "photo-nobg.webp") as result:
        assert result.size == (40, 30)


def test_unwritable_output_folder_is_one_line_before_any_work(
        tmp_path: Path, emulator_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file-not-folder"
        blocker.write_text("x")
        out_dir = blocker / "sub"  # a folder cannot be made under a file, even as root
    else:
        out_dir = tmp_path / "ro"
        out_dir.mkdir()
        out_dir.chmod(0o500)
    srcs = [_solid(tmp_path / f"{i}.png") for i in range(2)]
    assert main(["remove", *map(str, srcs), "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder" in err[0] and str(out_dir) in err[0]
    assert all(s.exists() for s in srcs)


def test_key_never_printed_even_at_debug(tmp_path: Path, emulator_env: None,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    src = _solid(tmp_path / "a.png")
    missing = tmp_path / "nope.png"
    main(["remove", str(src), str(missing), "--log-level", "debug", "--json"])
    out, err = capfd.readouterr()
    key = os.environ["WAVESPEED_API_KEY"]
    assert key not in out and key not in err


def test_output_folder_spelled_another_way_never_overwrites_an_input(
        tmp_path: Path, emulator_env: None) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    src = _solid(sub / "a.png")
    before = src.read_bytes()
    (tmp_path / "link").symlink_to(sub)
    assert main(["remove", str(src), "-o", str(tmp_path / "sub" / ".." / "sub")]) == 0
    assert main(["remove", str(src), "-o", str(tmp_path / "link")]) == 0
    assert src.read_bytes() == before
    assert sorted(p.name for p in sub.iterdir()) == ["a-2.png", "a.png"]


def test_a_folder_run_twice_does_not_cut_out_its_own_results(
        tmp_path: Path, emulator, emulator_env: None) -> None:  # type: ignore[no-untyped-def]
    _solid(tmp_path / "a.png")
    _solid(tmp_path / "b.jpg")
    assert main(["remove", str(tmp_path)]) == 0
    assert main(["remove", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-nobg.png", "a.png", "b-nobg.png", "b.jpg", "empty-config.yaml"]
    assert emulator.stats()["tasks_submitted"] == 2  # the second run kept both results


def test_the_same_file_named_three_ways_is_processed_once(
        tmp_path: Path, emulator, emulator_env: None,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    _solid(folder / "a.png")
    monkeypatch.chdir(tmp_path)
    assert main(["remove", "t", "t/a.png", "./t/a.png", "-o", "out"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    assert emulator.stats()["tasks_submitted"] == 1


def test_nothing_is_uploaded_when_the_output_cannot_be_written(
        tmp_path: Path, emulator, emulator_env: None) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    src = _solid(tmp_path / "a.png")
    assert main(["remove", str(src), "-o", str(blocker / "out")]) == 2
    assert emulator.stats()["uploads"] == 0 and emulator.stats()["tasks_submitted"] == 0


def test_an_unexpected_error_costs_one_file_not_the_batch(
        tmp_path: Path, emulator_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from bgremove.stages import FileJob

    real = FileJob.prepare

    def flaky(job: FileJob) -> object:
        if job.src.name == "boom.png":
            raise RuntimeError("simulated bug")
        return real(job)

    monkeypatch.setattr(FileJob, "prepare", flaky)
    boom, fine = _solid(tmp_path / "boom.png"), _solid(tmp_path / "fine.png")
    assert main(["remove", str(boom), str(fine)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if "boom.png" in line] == [
        f"bgremove: error: {boom}: internal error: RuntimeError: simulated bug "
        "(please report it with --log-level debug output)"]
    assert (tmp_path / "fine-nobg.png").exists()


@pytest.mark.parametrize("key", ["wsk-line\nbreak", "wsk-ünïcode", "wsk-with space"])
def test_an_unusable_key_is_a_config_error_that_never_echoes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", key)
    src = _solid(tmp_path / "a.png")
    assert main(["remove", str(src), "--backend", "wavespeed"]) == 2
    err = capsys.readouterr().err
    assert "API key contains spaces, control or non-ASCII" in err
    assert "wsk-" not in err


def test_a_key_of_the_wrong_type_in_the_file_is_not_echoed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("wavespeed:\n  api_key: [sk-listed-secret]\n")
    assert main(["doctor", "--config", str(cfg)]) == 1
    cfg.write_text("wavespeed:\n  api_key: {sk-mapped-secret: 1}\n")
    assert main(["remove", str(_solid(tmp_path / "a.png")), "--config", str(cfg)]) == 2
    out = capsys.readouterr()
    assert "sk-listed-secret" not in out.out + out.err
    assert "sk-mapped-secret" not in out.out + out.err
    assert "must be text, not a list" in out.out
    cfg.write_text("wavespeed:\n  api_key: 12345678901\n")  # all digits: YAML reads a number
    assert main(["remove", str(_solid(tmp_path / "a.png")), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "must be text, not a number (put the value in quotes)" in err and "12345" not in err


def test_an_empty_folder_is_a_usage_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["remove", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_a_long_but_legal_output_name_is_written(tmp_path: Path, emulator_env: None) -> None:
    stem = "x" * 240
    src = _solid(tmp_path / f"{stem}.png")
    assert main(["remove", str(src)]) == 0  # "<stem>-nobg.png": 249 bytes, a legal name
    assert (tmp_path / f"{stem}-nobg.png").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(tmp_path: Path, emulator) -> None:  # type: ignore[no-untyped-def]
    from bgremove.backends import make_backend
    from bgremove.batch import plan_outputs
    from bgremove.commands.remove import run_batch
    from tests.conftest import configured

    config = configured(emulator)
    srcs = [_solid(tmp_path / f"{i}.png") for i in range(3)]
    plan = plan_outputs(srcs, tmp_path / "out", config.output)
    backend = make_backend(config)
    try:
        out, err = io.StringIO(), _Terminal()
        run_batch(plan, backend, config, json_lines=False, out=out, err=err)
        assert "3/3" in err.getvalue() and "[" + "#" * 30 + "]" in err.getvalue()
        assert out.getvalue().count(" -> ") == 3
        plain = io.StringIO()
        run_batch(plan, backend, config, json_lines=False, out=io.StringIO(), err=plain)
        assert plain.getvalue() == ""  # not a terminal: no bar (the closing line is run()'s)
    finally:
        backend.close()


def test_a_refused_key_stops_the_batch_after_the_first_image(
        tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    emu = emulator_factory(key_state="inactive")
    monkeypatch.setenv("WAVESPEED_API_KEY", "wsk-new-key-not-topped-up")
    monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
    srcs = [_solid(tmp_path / f"{i}.png") for i in range(6)]
    assert main(["remove", *map(str, srcs), "--concurrency", "1", "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 6 and all(r["status"] == "failed" for r in records)
    # The first refusal stops the batch: the one worker decides before it takes the next image.
    tried = sum(r["error_kind"] == "auth" for r in records)
    assert tried == 1
    assert sum(r["error_kind"] == "not_attempted" and "401" in r["error"]
               for r in records) == 6 - tried
    assert emu.count("upload") + emu.count("upload_binary") == tried
