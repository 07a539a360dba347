"""The rules around the real-GIMP test: when it may be skipped, and what test.sh says first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "gimp_batch"))
import harness  # noqa: E402  (tests/gimp_batch is not a package)


def run_gimp_test(**env: str) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in os.environ.items() if k not in ("CI", harness.SKIP_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_gimp_integration.py::test_the_fixture_image_is_what_the_test_thinks"],
        cwd=REPO, env={**variables, **env}, capture_output=True, text=True, timeout=120,
        check=False)


def test_the_opt_out_skips_the_real_gimp_test_with_the_reason() -> None:
    done = run_gimp_test(BGREMOVE_SKIP_GIMP="1")
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout and "BGREMOVE_SKIP_GIMP=1 is set" in done.stdout


def test_with_ci_true_a_gimp_root_that_cannot_be_had_fails_the_run() -> None:
    done = run_gimp_test(BGREMOVE_SKIP_GIMP="1", CI="true")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "CI=true and the real-GIMP test cannot run" in done.stdout
    assert "skipped" not in done.stdout


def test_a_failing_build_is_a_reason_not_a_crash(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "gimp-root.sh"
    script.write_text("echo 'E: cannot reach the mirror' >&2\nexit 1\n")
    monkeypatch.setattr(harness, "SCRIPT", script)
    monkeypatch.setattr(harness, "unavailable_reason", lambda: None)
    with pytest.raises(harness.RootUnavailable, match="cannot reach the mirror"):
        harness.ensure_root()


@pytest.mark.skipif(os.geteuid() != 0, reason="test.sh says it only when run as root")
def test_test_sh_says_it_builds_the_gimp_root_and_how_to_opt_out(tmp_path: Path) -> None:
    script = (REPO / "scripts" / "test.sh").read_text()
    head = script.split('echo "== pytest"')[0]
    # only the lines about the root: no pip, ruff or mypy
    snippet = head[head.index('root="${BGREMOVE_GIMP_ROOT'):]
    said = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True,
                          env={**os.environ, "BGREMOVE_GIMP_ROOT": str(tmp_path / "none")})
    [line] = said.stdout.splitlines()
    assert "mmdebstrap" in line and str(tmp_path / "none") in line
    assert "BGREMOVE_SKIP_GIMP=1" in line
    quiet = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True,
                           env={**os.environ, "BGREMOVE_GIMP_ROOT": str(tmp_path / "none"),
                                "BGREMOVE_SKIP_GIMP": "1"})
    assert quiet.stdout == ""
