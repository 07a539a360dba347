"""The client's TLS: httpx's own verifying context, made when a connection first needs it.

The client is built with a placeholder context that trusts nothing; its connections get
the real one (``bgremove.wavespeed._transport.tls_context``). These tests talk to a real
TLS server on 127.0.0.1 whose certificate is made here with ``openssl``.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgremove.config import WaveSpeedConfig
from bgremove.errors import BgremoveError
from bgremove.wavespeed import WaveSpeedClient, _transport


class _Balance(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"code": 200, "data": {"balance": 12.5}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Balance)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def _fresh_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # The context is made once per process, from the environment of that moment.
    monkeypatch.setattr(_transport, "_tls", None)


def _client(base_url: str) -> WaveSpeedClient:
    config = dataclasses.replace(WaveSpeedConfig(api_key="tls-test-key", base_url=base_url),
                                 retry=dataclasses.replace(WaveSpeedConfig().retry,
                                                           max_attempts=1))
    return WaveSpeedClient(config)


def test_a_server_the_trust_store_names_is_reached(tls_server: str, certificate: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx's own rules choose the authorities: SSL_CERT_FILE is one of them
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with _client(tls_server) as client:
        assert client.balance() == 12.5
    assert _transport._tls is not None and _transport._tls.verify_mode == ssl.CERT_REQUIRED


def test_a_certificate_no_authority_signed_is_refused(tls_server: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with _client(tls_server) as client, pytest.raises(BgremoveError) as info:
        client.balance()
    assert "certificate" in str(info.value).lower() or "ssl" in str(info.value).lower()


def test_the_placeholder_trusts_no_authority() -> None:
    # were it ever used as it is, a connection would fail, never go unverified
    assert _transport.PENDING.verify_mode == ssl.CERT_REQUIRED
    assert _transport.PENDING.check_hostname
    assert _transport.PENDING.cert_store_stats()["x509_ca"] == 0


def test_an_https_client_loads_the_authorities_ahead_a_plain_http_one_never(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = threading.Event()
    real = _transport.tls_context

    def counting() -> ssl.SSLContext:
        made.set()
        return real()

    monkeypatch.setattr(_transport, "tls_context", counting)
    with _client("http://127.0.0.1:9"):
        pass
    assert not made.is_set() and _transport._tls is None
    with _client("https://api.wavespeed.test"):
        assert made.wait(30)  # in the background, no connection made
