"""Reading untrusted answers: the decoded-size cap, one deadline over the body, cancel between
reads, and the socket layer that keeps a single read from waiting past the call's deadline."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import httpcore
import httpx
import pytest

from bgremove.contract import CancelToken
from bgremove.errors import CancelledError, ProtocolError, ServiceTimeoutError, SubmitUncertainError
from bgremove.wavespeed._body import OutputLimits, read_body
from bgremove.wavespeed._transport import bound_sockets, budget
from tests.hostile import HostileService, drip, fixed, send_stream


class Chunks(httpx.SyncByteStream):
    """A body that arrives in the given pieces (and can run code between them)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.served = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            self.served += len(piece)
            yield piece


def streamed(pieces: Iterator[bytes] | list[bytes], **headers: str) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=Chunks(iter(pieces)))


def read(response: httpx.Response, max_bytes: int = 1 << 20, **kwargs: object) -> bytes:
    options: dict[str, object] = {"what": "download", "max_bytes": max_bytes,
                                  "ends_at": float("inf"), "clock": lambda: 0.0}
    options.update(kwargs)
    return read_body(response, **options)  # type: ignore[arg-type]


def test_identity_body_is_read_whole() -> None:
    assert read(streamed([b"ab", b"", b"cd"])) == b"abcd"


def test_announced_length_over_the_cap_is_refused_before_reading() -> None:
    stream = Chunks(iter([b"x" * 10]))
    response = httpx.Response(200, headers={"Content-Length": "5000"}, stream=stream)
    with pytest.raises(ProtocolError, match="larger than the 1,000 bytes allowed") as info:
        read(response, 1000)
    assert stream.served == 0 and not info.value.transient


def test_unannounced_body_stops_at_the_cap() -> None:
    stream = Chunks(iter([b"x" * 600] * 1000))
    with pytest.raises(ProtocolError, match="larger than"):
        read(httpx.Response(200, stream=stream), 1000)
    assert stream.served == 1200  # stopped at the chunk that crossed the cap


def test_gzip_bomb_stops_at_the_cap_in_decoded_bytes() -> None:
    bomb = gzip.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in about 64 KB
    pieces = [bomb[i:i + 4096] for i in range(0, len(bomb), 4096)]
    with pytest.raises(ProtocolError, match="larger than the 1,048,576 bytes"):
        read(streamed(pieces, **{"Content-Encoding": "gzip"}), 1 << 20)
    assert read(streamed([gzip.compress(b"hello")], **{"Content-Encoding": "gzip"})) == b"hello"


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_in_both_flavours_even_a_byte_at_a_time(wbits: int) -> None:
    engine = zlib.compressobj(6, zlib.DEFLATED, wbits)
    data = engine.compress(b"payload " * 100) + engine.flush()
    one_by_one = [data[i:i + 1] for i in range(len(data))]
    assert read(streamed(one_by_one, **{"Content-Encoding": "deflate"})) == b"payload " * 100


def test_an_encoding_not_asked_for_is_refused() -> None:
    with pytest.raises(ProtocolError, match="content encoding 'br'"):
        read(streamed([b"\x1b"], **{"Content-Encoding": "br"}))


def test_corrupt_gzip_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="gzip data is corrupt"):
        read(streamed([b"\x1f\x8b\x08\x00garbage-garbage"], **{"Content-Encoding": "gzip"}))


def test_one_deadline_over_all_reads() -> None:
    now = [0.0]

    def slow() -> Iterator[bytes]:
        for _ in range(100):
            now[0] += 0.5  # each piece comes half a second after the last
            yield b"x"

    with pytest.raises(ServiceTimeoutError, match="time limit ran out"):
        read(streamed(slow()), ends_at=3.0, clock=lambda: now[0])
    assert now[0] == 3.0  # not one read more


def test_cancel_is_checked_between_reads() -> None:
    token = CancelToken()

    def pieces() -> Iterator[bytes]:
        yield b"x"
        token.cancel()
        yield b"y"
        pytest.fail("read on after the cancel")

    with pytest.raises(CancelledError):
        read(streamed(pieces()), cancel=token)


def test_output_limits_follow_the_upload() -> None:
    small = OutputLimits(64 * 48)
    assert small.max_pixels == 4 * 64 * 48
    assert small.max_bytes == 8 * 64 * 48 + (1 << 20)
    assert OutputLimits(9000 * 9000).max_pixels > 9000 * 9000


# --- the socket layer ------------------------------------------------------------------------

def _client(proxy: str | None = None) -> httpx.Client:
    client = httpx.Client(limits=httpx.Limits(max_connections=4), timeout=60, proxy=proxy,
                          trust_env=False)
    assert bound_sockets(client) == 1 + (proxy is not None)
    return client


def drip_headers(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
    """The status line and headers one byte every 0.2 s: no read ever waits long."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n{}"
    for i in range(len(head)):
        if service.stopping.wait(0.2):
            return
        try:
            handler.wfile.write(head[i:i + 1])
        except OSError:
            return


def test_dripped_headers_end_at_the_budget() -> None:
    with HostileService(output=drip_headers) as svc, _client() as http:
        budget_seconds = 1.5


        with pytest.raises(httpx.ReadTimeout), budget(time.monotonic() + budget_seconds):
            http.get(svc.base_url + "/out/result")  # 60 s per read would never trigger
        assert svc.counts["output"] == 1


def test_dripped_headers_through_a_proxy_end_at_the_budget() -> None:
    # the proxy itself drips: its pool is bound as well as the direct one
    with HostileService(output=drip_headers) as svc, _client(proxy=svc.base_url) as http:
        with pytest.raises(httpx.ReadTimeout), budget(time.monotonic() + 1.5):
            http.get("http://service.invalid/out/result")
        assert svc.counts["output"] == 1


def test_the_clients_own_pools_are_bound_behind_an_environment_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove.config import WaveSpeedConfig
    from bgremove.wavespeed._client import WaveSpeedClient

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "localhost")
    client = WaveSpeedClient(WaveSpeedConfig(api_key="k"))
    try:
        pools = [getattr(t, "_pool", None) for t in [client._http._transport,
                                                      *client._http._mounts.values()]]
        proxied = [p for p in pools if isinstance(p, httpcore.HTTPProxy)]
        assert proxied, "the environment's proxy is used"
        assert all(type(p._network_backend).__name__ == "_BoundedBackend"
                   for p in pools if p is not None)
    finally:
        client.close()


def test_a_silent_answer_is_cancelled_while_a_read_waits() -> None:
    started = threading.Event()

    def silent(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        def nothing() -> Iterator[bytes]:
            started.set()
            service.stopping.wait(120)
            yield b""

        send_stream(handler, nothing(), 10)

    token = CancelToken()
    outcome: list[BaseException] = []

    def fetch(http: httpx.Client, url: str) -> None:


        try:
            with budget(time.monotonic() + 120, token), http.stream("GET", url) as response:
                response.read()
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    with HostileService(output=silent) as svc, _client() as http:
        worker = threading.Thread(target=fetch, args=(http, svc.base_url + "/out/result"))
        worker.start()
        assert started.wait(20)
        token.cancel()
        worker.join(20)  # a read of 60 s (120 s budget) would still be waiting
        assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)


def test_a_dripped_submit_answer_is_uncertain_and_sent_once() -> None:
    from bgremove.config import Config
    from bgremove.wavespeed._client import WaveSpeedClient

    body = json.dumps({"code": 200, "data": {"id": "t", "status": "completed",
                                             "outputs": ["x"]}}).encode() + b" " * 500
    with HostileService(submit=drip(body, every=0.2, content_type="application/json")) as svc:
        config = Config().with_overrides({
            "wavespeed.base_url": svc.base_url, "wavespeed.api_key": "k" * 20,
            "wavespeed.timeouts.submit": 1.5, "wavespeed.timeouts.sync_wait": 1.5})
        with WaveSpeedClient(config.wavespeed) as client, \
                pytest.raises(SubmitUncertainError, match="time limit"):
            client.submit("https://x/in.png", sync=True)
        assert svc.counts["submit"] == 1


def test_gzip_bomb_of_a_json_answer_is_refused_over_a_socket() -> None:
    from bgremove.config import Config
    from bgremove.wavespeed._client import WaveSpeedClient

    bomb = gzip.compress(b" " * (64 << 20), 9)
    answer = fixed(bomb, "application/json", headers={"Content-Encoding": "gzip"})
    with HostileService(result=answer) as svc:
        config = Config().with_overrides({
            "wavespeed.base_url": svc.base_url, "wavespeed.api_key": "k" * 20})
        with WaveSpeedClient(config.wavespeed) as client, \
                pytest.raises(ProtocolError, match="larger than the 4,194,304 bytes"):
            client.get_result("task-1")
        assert svc.counts["result"] == 1  # too large is not worth another try


def test_a_submit_redirect_with_a_huge_body_is_uncertain_and_sent_once() -> None:
    from bgremove.config import Config
    from bgremove.wavespeed._client import WaveSpeedClient

    def redirect(handler: BaseHTTPRequestHandler, service: HostileService) -> None:
        handler.send_response(307)
        handler.send_header("Location", "/elsewhere")
        body = b"x" * (1 << 20)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(body)

    with HostileService(submit=redirect) as svc:
        config = Config().with_overrides({
            "wavespeed.base_url": svc.base_url, "wavespeed.api_key": "k" * 20})
        with WaveSpeedClient(config.wavespeed) as client, \
                pytest.raises(SubmitUncertainError, match="redirect's body is larger"):
            client.submit("https://x/in.png", sync=True)
        assert svc.counts["submit"] == 1
