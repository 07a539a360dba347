"""An untrusted service: `bgremove remove` (and `watch`) against a hostile server on 127.0.0.1.

Each test runs the real command in a subprocess and bounds its exit code, its
time (loosely: the configured deadline plus start-up slack) and its peak memory.
The peak is the child's own ``VmHWM`` (see ``tests.hostile.run_bgremove``). The same
attacks, measured: ``benchmarks/bench_untrusted.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest

from tests.hostile import (
    KEY,
    HostileService,
    Outcome,
    base64_result,
    drip,
    endless,
    fixed,
    gzip_of_zeros,
    huge_png,
    nested_json,
    postscript,
    run_bgremove,
    small_cutout,
)

#: Peak memory allowed to one `bgremove` child (its own baseline is about 40 MB).
MAX_RSS_MB = 300
#: Start-up and teardown of a child, added to every configured deadline.
SLACK = 15.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="peak memory is read from /proc (Linux)")


@pytest.fixture
def child_env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: a fake ``gs`` first on PATH that leaves a marker if run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_gs = bin_dir / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ghostscript-ran'}\nexit 1\n")
    fake_gs.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HOSTILE_TMP"] = str(tmp_path)
    return env


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def image(tmp_path: Path, name: str = "in.png") -> Path:
    from PIL import Image

    path = tmp_path / name
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def remove(svc: HostileService, tmp_path: Path, env: dict[str, str], config: str, *,
           limit: float) -> Outcome:
    cfg = write_config(tmp_path, "backend: wavespeed\n" + config)
    env = {**env, **svc.env(), "BGREMOVE_CONFIG": str(cfg)}
    return run_bgremove(["remove", str(image(tmp_path)), "-o", str(tmp_path / "out")], env,
                        limit=limit)


def processing(handler, service) -> None:  # type: ignore[no-untyped-def]
    """A submit answer: the task runs (its result is asked for next)."""
    fixed(json.dumps(service.prediction("processing")).encode(), "application/json")(
        handler, service)


FAST = """
wavespeed:
  retry: {max_attempts: 2, backoff_initial: 0.01, backoff_max: 0.05}
  poll: {initial: 0.05, max: 0.1}
"""


def test_a_good_answer_still_works(tmp_path: Path, child_env: dict[str, str]) -> None:
    """The control: the hostile server's honest mode gives a cut-out."""
    with HostileService(output=fixed(small_cutout())) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 30)
    assert out.code == 0, out.stderr
    assert (tmp_path / "out" / "in.png").is_file()


def test_postscript_output_is_never_decoded(tmp_path: Path, child_env: dict[str, str]) -> None:
    with HostileService(output=fixed(postscript(), "application/postscript")) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 30)
    assert not (tmp_path / "ghostscript-ran").exists(), "the result was handed to Ghostscript"
    assert out.code == 1
    assert "not a PNG or WebP" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out" / "in.png").exists()


def test_dripped_download_ends_at_the_download_timeout(tmp_path: Path,
                                                       child_env: dict[str, str]) -> None:
    body = small_cutout() + bytes(4000)  # 2 bytes a second: over half an hour if waited for
    config = FAST + "  timeouts: {download: 3, overall: 10}\n"
    with HostileService(output=drip(body)) as svc:
        out = remove(svc, tmp_path, child_env, config, limit=10 + SLACK)
    assert out.code == 1
    assert "download" in out.stderr and "time" in out.stderr, out.stderr
    assert out.seconds < 10 + SLACK
    assert out.max_rss_mb < MAX_RSS_MB


def test_dripped_json_answer_ends_at_the_overall_deadline(tmp_path: Path,
                                                          child_env: dict[str, str]) -> None:
    def result(handler, service) -> None:  # type: ignore[no-untyped-def]
        drip(json.dumps(service.prediction()).encode() + b" " * 4000,
             content_type="application/json")(handler, service)

    config = FAST + "  wait: poll\n  timeouts: {result: 30, overall: 8}\n"
    with HostileService(submit=processing, result=result) as svc:
        out = remove(svc, tmp_path, child_env, config, limit=8 + SLACK)
    assert out.code == 1
    assert "time limit" in out.stderr, out.stderr
    assert out.seconds < 8 + SLACK


def test_gzip_bomb_download_is_capped(tmp_path: Path, child_env: dict[str, str],
                                      gzip_gib: bytes) -> None:
    with HostileService(output=fixed(gzip_gib, headers={"Content-Encoding": "gzip"})) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 60)
    assert out.code == 1
    assert "larger than" in out.stderr, out.stderr
    assert out.max_rss_mb < MAX_RSS_MB


def test_gzip_bomb_json_answer_is_capped(tmp_path: Path, child_env: dict[str, str],
                                         gzip_gib: bytes) -> None:
    config = FAST + "  wait: poll\n"
    with HostileService(
            submit=processing,
            result=fixed(gzip_gib, "application/json", headers={"Content-Encoding": "gzip"}),
    ) as svc:
        out = remove(svc, tmp_path, child_env, config, limit=SLACK + 60)
    assert out.code == 1
    assert "larger than" in out.stderr, out.stderr
    assert out.max_rss_mb < MAX_RSS_MB


def test_huge_download_body_is_refused(tmp_path: Path, child_env: dict[str, str]) -> None:
    with HostileService(output=endless(500 << 20)) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 60)
    assert out.code == 1
    assert "larger than" in out.stderr, out.stderr
    assert out.max_rss_mb < MAX_RSS_MB


def test_huge_png_result_is_refused_before_decoding(tmp_path: Path,
                                                    child_env: dict[str, str],
                                                    png_9000: bytes) -> None:
    with HostileService(output=fixed(png_9000)) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 60)
    assert out.code == 1
    assert "9000x9000" in out.stderr, out.stderr
    assert out.max_rss_mb < MAX_RSS_MB
    assert not (tmp_path / "out" / "in.png").exists()


def test_base64_output_is_capped(tmp_path: Path, child_env: dict[str, str]) -> None:
    config = FAST + "  wait: poll\n  base64_output: true\n"
    with HostileService(
            submit=processing,
            result=base64_result(200 << 20)) as svc:
        out = remove(svc, tmp_path, child_env, config, limit=SLACK + 60)
    assert out.code == 1
    assert "larger than" in out.stderr, out.stderr
    assert out.max_rss_mb < MAX_RSS_MB


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_nested_json_submit_answer_is_uncertain_and_never_resent(
        tmp_path: Path, child_env: dict[str, str], wait: str) -> None:
    with HostileService(submit=fixed(nested_json(), "application/json")) as svc:
        out = remove(svc, tmp_path, child_env, FAST + f"  wait: {wait}\n", limit=SLACK + 30)
        submits = svc.counts.get("submit")
    assert out.code == 1
    assert submits == 1
    assert "may have been created" in out.stderr, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr


def test_daemon_never_resends_a_submit_with_an_unparseable_answer(
        tmp_path: Path, child_env: dict[str, str]) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    image(inbox, "a.png")
    cfg = write_config(tmp_path, "backend: wavespeed\n" + FAST
                       + "watch: {stable_seconds: 0, settle_seconds: 0}\n")
    with HostileService(submit=fixed(nested_json(), "application/json")) as svc:
        env = {**child_env, **svc.env(), "BGREMOVE_CONFIG": str(cfg)}
        out = run_bgremove(["watch", "--once", str(inbox), str(outbox)], env, limit=SLACK + 60)
        submits = svc.counts.get("submit")
    assert submits == 1, out.stderr
    report = json.loads((inbox / "failed" / "a.png.error.json").read_text())
    assert report["kind"] == "submit_uncertain"
    assert "Traceback" not in out.stderr


# --- config and logs --------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [stat.S_IWOTH, stat.S_IWGRP])
def test_config_others_can_write_is_refused(tmp_path: Path, child_env: dict[str, str],
                                            bits: int) -> None:
    cfg = write_config(tmp_path, f"wavespeed:\n  api_key: {KEY}\n")
    cfg.chmod(0o600 | bits)
    env = {**child_env, "BGREMOVE_CONFIG": str(cfg)}
    out = run_bgremove(["remove", str(image(tmp_path))], env, limit=SLACK + 30)
    assert out.code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(cfg) in lines[0] and "chmod" in lines[0]
    assert KEY not in out.stderr + out.stdout


def test_plain_http_to_another_host_is_refused(tmp_path: Path,
                                               child_env: dict[str, str]) -> None:
    cfg = write_config(tmp_path, "wavespeed:\n  base_url: http://api.example.com\n")
    env = {**child_env, "BGREMOVE_CONFIG": str(cfg), "WAVESPEED_API_KEY": KEY}
    out = run_bgremove(["remove", "--backend", "wavespeed", str(image(tmp_path))], env,
                       limit=SLACK + 30)
    assert out.code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "allow_insecure_http" in lines[0]


def test_forged_log_line_from_a_file_name(tmp_path: Path, child_env: dict[str, str]) -> None:
    forged = "x.png\n12:00:00 INFO forged line\x1b[2K"
    name = tmp_path / forged
    name.write_bytes(b"not an image")
    cfg = write_config(tmp_path, "backend: local\n")
    env = {**child_env, "BGREMOVE_CONFIG": str(cfg)}
    out = run_bgremove(["remove", str(name)], env, limit=SLACK + 30)
    assert out.code == 1
    assert "\x1b" not in out.stderr
    assert not any(line.startswith("12:00:00 INFO forged") for line in out.stderr.splitlines())
    assert "x.png\\n12:00:00" in out.stderr


@pytest.fixture(scope="module")
def gzip_gib() -> bytes:
    return gzip_of_zeros(1 << 30)


@pytest.fixture(scope="module")
def png_9000() -> bytes:
    return huge_png(9000, 9000)


def test_forged_log_line_from_a_name_dropped_into_inbox(tmp_path: Path,
                                                         child_env: dict[str, str]) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "x.png\n12:00:00 INFO done y.png\x1b[2K.png").write_bytes(b"not an image")
    cfg = write_config(tmp_path, "backend: local\nwatch: {stable_seconds: 0, settle_seconds: 0}\n")
    env = {**child_env, "BGREMOVE_CONFIG": str(cfg)}
    out = run_bgremove(["watch", "--once", str(inbox), str(outbox)], env, limit=SLACK + 60)
    assert "x.png\\n12:00:00 INFO done y.png\\x1b[2K.png" in out.stderr, out.stderr
    assert "\x1b" not in out.stderr
    assert not any(line.startswith("12:00:00") for line in out.stderr.splitlines())


def test_a_redirect_body_is_capped_too(tmp_path: Path, child_env: dict[str, str],
                                       gzip_gib: bytes) -> None:
    """httpx reads a redirect's whole body before following it: a bomb there is capped too."""
    def redirect(handler, service) -> None:  # type: ignore[no-untyped-def]
        if "final" in handler.path:
            fixed(small_cutout())(handler, service)
            return
        handler.send_response(302)
        handler.send_header("Location", "/out/result?final=1")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(gzip_gib)))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(gzip_gib)

    with HostileService(output=redirect) as svc:
        out = remove(svc, tmp_path, child_env, FAST, limit=SLACK + 60)
    assert out.max_rss_mb < MAX_RSS_MB
    assert out.code == 1
    assert "redirect" in out.stderr, out.stderr
