"""The emulator against a client nobody here wrote: the official ``wavespeed`` SDK (2.0.5).

The SDK uses ``requests`` and ``print``; it talks to the emulator over real sockets.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wavespeed
from PIL import Image

from bgremove.emulator import MODEL_ID, Emulator, keyout_alpha


def _alpha_of(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGBA"
        alpha: Image.Image = image.getchannel("A")
        return alpha


def _expected_alpha(path: Path) -> bytes:
    with Image.open(path) as image:
        return keyout_alpha(image).tobytes()


@pytest.fixture
def client(emulator: Emulator) -> Any:
    return wavespeed.Client(api_key=emulator.api_key, base_url=emulator.base_url,
                            max_connection_retries=0)


def test_sdk_version_is_the_one_the_contract_was_written_against() -> None:
    assert wavespeed.__version__.startswith("2.")


@pytest.mark.parametrize("sync", [False, True], ids=["poll", "sync"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_sdk_uploads_runs_and_gets_the_keyout_cutout(
        emulator: Emulator, client: Any, keyed_png: Callable[..., Path], sync: bool,
        mode: str) -> None:
    path = keyed_png(f"photo {mode}.png", size=(80, 60), mode=mode)

    url = client.upload(str(path))
    result = client.run(MODEL_ID, {"image": url}, enable_sync_mode=sync, poll_interval=0.02,
                        timeout=30)

    (output,) = result["outputs"]
    png = httpx.get(output, timeout=10).content
    assert _alpha_of(png).tobytes() == _expected_alpha(path)
    with Image.open(io.BytesIO(png)) as out, Image.open(path) as src:
        assert out.size == src.size
        assert out.convert("RGB").tobytes() == src.convert("RGB").tobytes()
    stats = emulator.stats()
    assert stats["requests"]["upload"] == {"POST": 1}
    assert stats["requests"]["upload_put"] == {"PUT": 1}
    assert stats["requests"]["submit"] == {"POST": 1}
    assert stats["tasks_submitted"] == stats["tasks_completed"] == 1
    assert ("result" in stats["requests"]) is not sync  # sync mode needs no poll


def test_sdk_base64_output_is_bare_base64(client: Any, keyed_png: Callable[..., Path]) -> None:
    path = keyed_png()
    url = client.upload(str(path))
    result = client.run(MODEL_ID, {"image": url, "enable_base64_output": True},
                        enable_sync_mode=True, timeout=30)
    (output,) = result["outputs"]
    assert not output.startswith("data:")
    assert _alpha_of(base64.b64decode(output, validate=True)).tobytes() == _expected_alpha(path)


def test_sdk_sees_a_sync_timeout_as_processing_and_recovers_by_id(
        emulator_factory: Callable[..., Emulator], keyed_png: Callable[..., Path]) -> None:
    emu = emulator_factory(delay=0.4, sync_timeout=0.05, sync_timeout_style="processing")
    client = wavespeed.Client(api_key=emu.api_key, base_url=emu.base_url)
    url = client.upload(str(keyed_png()))

    outcome = client.run_no_throw(MODEL_ID, {"image": url}, enable_sync_mode=True, timeout=30)

    assert outcome["status"] == "processing"  # the SDK recognised code 5004
    assert outcome["outputs"] is None
    assert emu.wait_idle(10)
    data = client.get_result(outcome["task_id"])["data"]
    assert data["status"] == "completed" and len(data["outputs"]) == 1
    assert emu.stats()["tasks_submitted"] == 1


def test_sdk_reports_a_failed_task_with_its_error(
        emulator: Emulator, client: Any) -> None:
    outcome = client.run_no_throw(MODEL_ID, {"image": "http://example.invalid/x.png"},
                                  poll_interval=0.02, timeout=30)
    assert outcome["status"] == "failed"
    assert "unreachable" in outcome["error"]
    assert emulator.prediction(outcome["task_id"])["code"] == 1402  # type: ignore[index]


def test_sdk_with_a_wrong_key_gets_401(emulator_factory: Callable[..., Emulator],
                                       keyed_png: Callable[..., Path]) -> None:
    emu = emulator_factory(api_key="the-right-key")
    client = wavespeed.Client(api_key="a-wrong-key", base_url=emu.base_url)
    with pytest.raises(RuntimeError, match="HTTP 401"):
        client.upload(str(keyed_png()))
    assert emu.stats()["auth_failures"] == 1


def test_sdk_works_against_an_emulator_open_to_the_network(
        emulator_factory: Callable[..., Emulator], keyed_png: Callable[..., Path]) -> None:
    # every route needs the key then; the SDK sends it, and uses the signed file URLs as given
    emu = emulator_factory(allow_remote=True, api_key="sk-remote")
    client = wavespeed.Client(api_key="sk-remote", base_url=emu.base_url)
    path = keyed_png()
    url = client.upload(str(path))
    result = client.run(MODEL_ID, {"image": url}, poll_interval=0.02, timeout=30)
    (output,) = result["outputs"]
    assert "signature=" in url and "signature=" in output
    assert _alpha_of(httpx.get(output, timeout=10).content).tobytes() == _expected_alpha(path)
