"""The emulator open to the network (``allow_remote``), bound to 127.0.0.1 in these tests.

Every route needs the key (the file routes a URL signed with it), the key is checked before
a body is read, and no body, chunked or not, is held beyond the upload size limit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from bgremove.emulator import Emulator, EmulatorOptions
from bgremove.errors import ConfigError
from tests.test_emulator import REPO, SUBMIT, api_client, png_bytes

KEY = "sk-remote-secret"
MiB = 1 << 20

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/_emulator/stats", None),
    ("POST", "/_emulator/reset", None),
    ("GET", "/no/such/route", None),
    ("POST", SUBMIT, {"image": "http://x/a.png"}),
    ("GET", "/api/v3/predictions/abc/result", None),
    ("POST", "/api/v3/predictions", {}),
    ("POST", "/api/v3/media/uploads", {"filename": "a.png", "size": 1}),
    ("GET", "/api/v3/balance", None),
]


@pytest.fixture
def remote(emulator_factory: Callable[..., Emulator]) -> Emulator:
    return emulator_factory(allow_remote=True, api_key=KEY, idle_timeout=20)


def _raw_answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or 8 KiB of it); a reset raises."""
    answer = b""
    while len(answer) < 8192:
        chunk = sock.recv(8192)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_the_key(remote: Emulator, method: str, path: str,
                                   body: dict[str, Any] | None) -> None:
    for key in ("", "sk-a-wrong-key"):
        with api_client(remote, key) as client:
            answer = client.request(method, path, json=body)
        assert answer.status_code == 401, (key, answer.text)
        assert "sk-" not in answer.text
    with api_client(remote, KEY) as client:
        assert client.request(method, path, json=body).status_code != 401


def test_reset_without_the_key_resets_nothing(remote: Emulator) -> None:
    with api_client(remote, KEY) as client:
        client.get("/api/v3/balance")
        assert httpx.post(f"{remote.base_url}/_emulator/reset", timeout=10).status_code == 401
        stats = client.get("/_emulator/stats").json()
    assert stats["requests"]["balance"] == {"GET": 1}
    assert stats["auth_failures"] == 1


def test_on_loopback_the_control_routes_stay_open(emulator: Emulator) -> None:
    assert httpx.get(f"{emulator.base_url}/_emulator/stats", timeout=10).status_code == 200
    assert httpx.get(f"{emulator.base_url}/nothing", timeout=10).status_code == 404


def test_file_urls_are_signed_with_the_key(remote: Emulator,
                                           keyed_image: Callable[..., Image.Image]) -> None:
    data = png_bytes(keyed_image())
    with api_client(remote, KEY) as client:
        ticket = client.post("/api/v3/media/uploads", json={
            "filename": "a.png", "size": len(data), "content_type": "image/png"}).json()["data"]
        put_url, headers = ticket["upload"]["url"], ticket["upload"]["headers"]
        with httpx.Client(timeout=10) as bucket:  # no bearer key: the URL carries the right
            for forged in (put_url.split("?")[0], put_url[:-4] + "0000",
                           put_url.replace(KEY, "x")):
                if forged == put_url:
                    continue
                refused = bucket.put(forged, content=data, headers=headers)
                assert refused.status_code == 403 and b"AccessDenied" in refused.content
            assert bucket.put(put_url, content=data, headers=headers).status_code == 200
            media_url = ticket["download_url"]
            assert bucket.get(media_url).content == data
            assert bucket.get(media_url.split("?")[0]).status_code == 403
            done = client.post(SUBMIT, json={"image": media_url,
                                             "enable_sync_mode": True}).json()["data"]
            assert done["status"] == "completed"
            (output,) = done["outputs"]
            assert bucket.get(output).status_code == 200
            assert bucket.get(output.split("?")[0]).status_code == 403
            other = urlsplit(output)._replace(path=f"/outputs/{'0' * 32}.png").geturl()
            assert bucket.get(other).status_code == 403  # a signature is for its own path
    assert KEY not in put_url + media_url + output


@pytest.mark.parametrize("remote_mode", [True, False], ids=["remote", "loopback"])
def test_the_key_is_checked_before_the_body_is_read(
        emulator_factory: Callable[..., Emulator], remote_mode: bool) -> None:
    emu = emulator_factory(allow_remote=remote_mode, api_key=KEY, idle_timeout=20)
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        # a body of 10 MB announced and none of it sent: the answer must not wait for it
        sock.sendall(b"POST /api/v3/media/upload/binary HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer wrong\r\nContent-Type: multipart/form-data\r\n"
                     b"Content-Length: 10000000\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in head
    stats = emu.stats()
    assert stats["bytes_in"] == 0 and stats["auth_failures"] == 1


def test_a_refused_body_within_the_limit_is_drained_not_reset(remote: Emulator) -> None:
    # The 401 comes first; the body sent after it is read and thrown away, then the
    # connection ends cleanly, so a client that reads only after sending sees the answer.
    body = 16 * MiB
    with socket.create_connection(("127.0.0.1", remote.port), timeout=10) as sock:
        sock.sendall(b"PUT /upload/abc HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: %d\r\n\r\n" % body)
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 403 ")  # an unsigned upload URL
        sock.sendall(b"\0" * body)  # a reset connection would fail here
        assert (head + _raw_answer(sock)).endswith(b"</Error>")  # then a clean end
    assert remote.stats()["bytes_in"] == 0


def test_a_refused_small_body_still_gets_its_answer(remote: Emulator) -> None:
    # the unread body is drained before the close, so the client reads the 401, not a reset
    with httpx.Client(base_url=remote.base_url, timeout=10) as client:
        answer = client.post("/api/v3/media/upload/binary",
                             files={"file": ("a.png", b"x" * 5 * MiB, "image/png")})
        assert answer.status_code == 401 and answer.headers["connection"] == "close"
        assert client.get("/_emulator/stats",
                          headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def _chunked_head(path: str, key: str) -> bytes:
    return (f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").encode()


def test_one_huge_chunk_is_refused_before_it_is_read(
        emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(allow_remote=True, api_key=KEY, max_upload_bytes=MiB,
                           idle_timeout=20)
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(_chunked_head("/api/v3/media/upload/binary", KEY))
        sock.sendall(b"%x\r\n" % (300 * MiB))  # one 300 MiB chunk announced, none sent
        answer = _raw_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over the limit" in answer


def test_many_small_chunks_are_capped_too(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(max_upload_bytes=MiB, idle_timeout=20)
    piece = b"%x\r\n" % (64 * 1024) + b"x" * (64 * 1024) + b"\r\n"
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(_chunked_head("/api/v3/media/upload/binary", KEY))
        for _ in range(21):  # 1.3 MiB: over 1 MiB plus the multipart slack, no final chunk
            sock.sendall(piece)
        answer = _raw_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_within_the_cap_is_read_whole(remote: Emulator) -> None:
    with api_client(remote, KEY) as client:
        ticket = client.post("/api/v3/media/uploads", json={
            "filename": "a.bin", "size": 3 * MiB,
            "content_type": "application/octet-stream"}).json()["data"]
    blocks = [bytes([n]) * MiB for n in range(3)]
    with httpx.Client(timeout=10) as bucket:
        put = bucket.put(ticket["upload"]["url"], content=iter(blocks),
                         headers=ticket["upload"]["headers"])
        assert put.request.headers["transfer-encoding"] == "chunked"
        assert put.status_code == 200
        assert bucket.get(ticket["download_url"]).content == b"".join(blocks)


def test_options_and_cli_refuse_remote_without_a_key() -> None:
    with pytest.raises(ConfigError, match="API key"):
        EmulatorOptions(allow_remote=True)
    result = subprocess.run([sys.executable, "-m", "bgremove", "emulator", "--port", "0",
                             "--allow-remote"], cwd=REPO, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert "--api-key" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _send_chunked(port: int, key: str, total: int) -> bytes:
    """Announce one chunk of ``total`` bytes and send as much of it as the server takes."""
    block = b"\0" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_chunked_head("/api/v3/media/upload/binary", key) + b"%x\r\n" % total)
        try:
            for _ in range(total // MiB):
                sock.sendall(block)
        except OSError:  # refused and closed: the server stopped reading
            pass
        try:
            return _raw_answer(sock)
        except ConnectionResetError:  # closed on what was still in flight
            return b""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_300_mib_chunked_body_leaves_the_server_small(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bgremove", "emulator", "--host", "127.0.0.1", "--port", "0",
         "--allow-remote", "--api-key", KEY], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        port = int(base_url.rsplit(":", 1)[1])
        with httpx.Client(base_url=base_url, timeout=10,
                          headers={"Authorization": f"Bearer {KEY}"}) as client:
            assert client.get("/api/v3/balance").status_code == 200
            before = _memory_kib(process.pid, "VmRSS")
            unauthenticated = _send_chunked(port, "wrong", 300 * MiB)
            authenticated = _send_chunked(port, KEY, 300 * MiB)
            peak = _memory_kib(process.pid, "VmHWM")
            stats = client.get("/_emulator/stats").json()
        process.terminate()
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert unauthenticated == b"" or unauthenticated.startswith(b"HTTP/1.1 401 ")
    assert authenticated == b"" or authenticated.startswith(b"HTTP/1.1 413 ")
    assert stats["auth_failures"] == 1 and stats["uploads"] == 0
    # 300 MiB were offered twice; the server held at most the 20 MiB limit (loose bound)
    assert peak - before < 64 * 1024, (before, peak)
