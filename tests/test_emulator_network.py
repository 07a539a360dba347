"""The emulator's network and output settings: link speeds shared by all connections, outputs
below full size, and what each upload brought.

Speeds are checked as lower bounds only (a limited link can never be faster), with amounts
small enough to keep each test under a couple of seconds.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from PIL import Image

from bgremove.emulator import Emulator, EmulatorOptions
from bgremove.emulator.bandwidth import Link, LinkClosed
from bgremove.errors import ConfigError
from tests.test_emulator import SUBMIT, api_client, png_bytes, served_cli, upload

MB = 1_000_000


# -- the link itself, on a fake clock ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.slept.append(round(seconds, 6))
        return False


def test_a_link_books_each_transfer_after_the_ones_before() -> None:
    clock = FakeClock()
    link = Link(8, clock.sleep, clock)  # 8 Mbit/s: 1 MB a second
    link.take(MB)
    link.take(MB // 2)  # booked behind the first: it ends 1.5 s from now
    assert clock.slept == [1.0, 1.5]
    clock.now += 10  # the link was idle meanwhile: no credit is saved up
    link.take(MB // 4)
    assert clock.slept[-1] == 0.25


def test_an_unlimited_link_never_waits() -> None:
    clock = FakeClock()
    link = Link(0, clock.sleep, clock)
    link.take(10 * MB)
    assert not link.limited and clock.slept == []


def test_a_link_gives_up_when_the_emulator_stops() -> None:
    link = Link(8, lambda seconds: True)
    with pytest.raises(LinkClosed):
        link.take(MB)


# -- over sockets --------------------------------------------------------------------------------


def _parallel(calls: list[Callable[[], None]]) -> float:
    """Run ``calls`` on threads at once; the seconds until the last one ended."""
    errors: list[BaseException] = []

    def guarded(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    return time.monotonic() - started


def test_the_uplink_is_shared_by_all_connections(
        emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(uplink_mbit=16)  # 2 MB a second
    bodies = [os.urandom(MB // 2) for _ in range(2)]

    def send(data: bytes) -> Callable[[], None]:
        def call() -> None:
            with api_client(emu) as client:  # a connection each
                answer = client.post("/api/v3/media/upload/binary",
                                     files={"file": ("a.bin", data, "image/png")})
                assert answer.status_code == 200

        return call

    # 1 MB in all through 2 MB/s: at least half a second, whichever way it is split
    assert _parallel([send(b) for b in bodies]) >= 0.5
    assert emu.stats()["connections"] == 2


def test_the_downlink_is_shared_by_all_connections(
        emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(downlink_mbit=16)  # 2 MB a second
    with api_client(emu) as client:
        url = upload(client, os.urandom(MB // 2), filename="a.bin",
                     content_type="application/octet-stream")

    def fetch() -> None:
        assert len(httpx.get(url, timeout=10).content) == MB // 2

    assert _parallel([fetch, fetch]) >= 0.5


def test_stop_ends_a_slow_transfer(keyed_image: Callable[..., Image.Image]) -> None:
    emu = Emulator(EmulatorOptions(downlink_mbit=0.1)).start()  # 12.5 kB a second
    with api_client(emu) as client:
        url = upload(client, os.urandom(MB), filename="a.bin",
                     content_type="application/octet-stream")
    outcome: list[object] = []

    def fetch() -> None:
        try:
            outcome.append(httpx.get(url, timeout=30).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    deadline = time.monotonic() + 10
    while emu.count("media") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    emu.stop()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], httpx.HTTPError)


@pytest.mark.parametrize("base64_output", [False, True])
def test_outputs_capped_to_a_longest_side(emulator_factory: Callable[..., Emulator],
                                          keyed_image: Callable[..., Image.Image],
                                          base64_output: bool) -> None:
    import base64

    emu = emulator_factory(output_max_side=32)
    image = keyed_image(size=(64, 48))  # key green; a red block at x 16-32, y 12-24
    with api_client(emu) as client:
        url = upload(client, png_bytes(image))
        data = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True,
                                         "enable_base64_output": base64_output}).json()["data"]
        (output,) = data["outputs"]
        png = base64.b64decode(output) if base64_output else client.get(output).content
        small = client.post(SUBMIT, json={"image": upload(client, png_bytes(
            keyed_image(size=(32, 20)))), "enable_sync_mode": True}).json()["data"]
        small_png = client.get(small["outputs"][0]).content
    with Image.open(io.BytesIO(png)) as out:
        assert out.size == (32, 24)  # half size, aspect kept
        assert out.getpixel((1, 22)) == (0, 200, 0, 0)  # keyed-out corner
        assert out.getpixel((11, 9)) == (220, 20, 20, 255)  # the middle of the red block
    with Image.open(io.BytesIO(small_png)) as out:
        assert out.size == (32, 20)  # already within the cap: full size


def test_an_upload_is_logged_from_its_request_start_to_its_last_byte(
        emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(uplink_mbit=8)  # 1 MB a second
    with api_client(emu) as client:
        upload(client, b"x" * (MB // 2), filename="slow.bin",
               content_type="application/octet-stream")
    (entry,) = emu.stats()["upload_log"]
    assert entry["ended"] - entry["began"] >= 0.45  # the body took the link's time


def test_each_upload_is_logged_with_the_bytes_received(
        emulator: Emulator, keyed_image: Callable[..., Image.Image]) -> None:
    direct, binary = png_bytes(keyed_image()), png_bytes(keyed_image(size=(40, 30)))
    before = time.time()
    with api_client(emulator) as client:
        upload(client, direct, filename="direct.png")
        answer = client.post("/api/v3/media/upload/binary",
                             files={"file": ("binary.png", binary, "image/png")})
        assert answer.status_code == 200
    after = time.time()
    first, second = emulator.stats()["upload_log"]
    began, ended = first.pop("began"), first.pop("ended")
    assert before <= began <= ended <= second["began"] <= second["ended"] <= after
    assert first == {"filename": "direct.png", "content_type": "image/png",
                     "bytes": len(direct), "received": len(direct),
                     "sha256": hashlib.sha256(direct).hexdigest()}
    assert second["filename"] == "binary.png" and second["bytes"] == len(binary)
    assert len(binary) < second["received"] < len(binary) + 1024  # the form's framing
    assert second["sha256"] == hashlib.sha256(binary).hexdigest()
    assert emulator.stats()["upload_bytes"] == len(direct) + len(binary)


def test_the_upload_log_is_bounded(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(max_stored=3)
    with api_client(emu) as client:
        for n in range(5):
            upload(client, bytes([n]) * 10, filename=f"{n}.bin",
                   content_type="application/octet-stream")
    assert [e["filename"] for e in emu.stats()["upload_log"]] == ["2.bin", "3.bin", "4.bin"]
    assert emu.stats()["uploads"] == 5


def test_network_options_are_checked() -> None:
    for field in ("uplink_mbit", "downlink_mbit", "output_max_side"):
        with pytest.raises(ConfigError):
            EmulatorOptions(**{field: -1})


def test_cli_flags_for_links_and_output_size(keyed_image: Callable[..., Image.Image]) -> None:
    with served_cli("--uplink-mbit", "800", "--downlink-mbit", "800",
                    "--output-max-side", "16") as client:
        data = png_bytes(keyed_image(size=(64, 48)))
        url = upload(client, data)
        done = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
        with Image.open(io.BytesIO(client.get(done["outputs"][0]).content)) as out:
            assert out.size == (16, 12)
        (entry,) = client.get("/_emulator/stats").json()["upload_log"]
    assert entry["bytes"] == len(data)
