"""The WaveSpeed emulator over real sockets: every endpoint, auth, sync/async, faults, limits."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bgremove.emulator import MODEL_ID, Emulator, EmulatorOptions, Fault, FaultPlan, keyout_alpha
from bgremove.errors import ConfigError

SUBMIT = f"/api/v3/{MODEL_ID}"
REPO = Path(__file__).resolve().parent.parent


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def api_client(emu: Emulator, key: str | None = None) -> httpx.Client:
    headers = {} if key == "" else {"Authorization": f"Bearer {key or emu.api_key}"}
    return httpx.Client(base_url=emu.base_url, headers=headers, timeout=10)


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    with api_client(emulator) as client:
        yield client


def upload(client: httpx.Client, data: bytes, filename: str = "in.png",
            content_type: str = "image/png") -> str:
    ticket = client.post("/api/v3/media/uploads", json={
        "filename": filename, "size": len(data), "content_type": content_type})
    assert ticket.status_code == 200, ticket.text
    upload = ticket.json()["data"]["upload"]
    assert upload["method"] == "PUT"
    with httpx.Client(timeout=10) as bucket:  # the presigned URL needs no bearer key
        put = bucket.put(upload["url"], content=data, headers=upload["headers"])
    assert put.status_code == 200, put.text
    return str(ticket.json()["data"]["download_url"])


def wait_done(client: httpx.Client, task_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = client.get(f"/api/v3/predictions/{task_id}/result").json()["data"]
        if data["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.01)


def _alpha_of(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGBA"
        alpha: bytes = image.getchannel("A").tobytes()
        return alpha


# -- the key-out model -------------------------------------------------------------------------


def test_keyout_alpha_follows_the_contract(keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image(size=(64, 48), key=(0, 200, 0))
    alpha = keyout_alpha(image)
    assert alpha.mode == "L" and alpha.size == image.size
    assert alpha.getpixel((0, 0)) == 0  # the key itself
    assert alpha.getpixel((20, 15)) == 255  # red block
    assert alpha.getpixel((40, 30)) == 0  # within 24 of the key
    assert alpha.getpixel((60, 5)) == 255  # 40 away from the key
    # the boundary: exactly 24 away is still key, 25 is not
    edge = Image.new("RGB", (3, 1), (100, 100, 100))
    edge.putpixel((1, 0), (124, 100, 76))
    edge.putpixel((2, 0), (100, 125, 100))
    assert list(keyout_alpha(edge).tobytes()) == [0, 0, 255]


def test_keyout_alpha_takes_the_minimum_with_an_input_alpha(
        keyed_image: Callable[..., Image.Image]) -> None:
    image = keyed_image(size=(64, 48), mode="RGBA")
    alpha = keyout_alpha(image)
    assert alpha.getpixel((28, 15)) == 128  # opaque red under the half-transparent stripe
    assert alpha.getpixel((18, 15)) == 255  # red outside the stripe
    assert alpha.getpixel((28, 40)) == 0  # key under the stripe stays transparent


def test_keyout_alpha_accepts_palette_and_grey_images() -> None:
    grey = Image.new("L", (4, 4), 10)
    grey.putpixel((3, 3), 200)
    assert list(keyout_alpha(grey).tobytes()) == [0] * 15 + [255]
    palette = grey.convert("P")
    assert keyout_alpha(palette).tobytes() == keyout_alpha(grey).tobytes()


# -- endpoints -----------------------------------------------------------------------------------


def test_direct_upload_then_async_submit_and_both_result_forms(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.15)
    image = keyed_image()
    data = png_bytes(image)
    with api_client(emu) as client:
        url = upload(client, data, filename="my photo é.png")
        assert url.startswith(emu.base_url + "/media/")
        assert client.get(url).content == data

        answer = client.post(SUBMIT, json={"image": url, "enable_base64_output": False,
                                           "enable_sync_mode": False})
        assert answer.status_code == 200
        envelope = answer.json()
        assert envelope["code"] == 200 and envelope["message"] == "success"
        created = envelope["data"]
        # async: answered before the task ended
        assert created["status"] in ("created", "processing") and created["outputs"] == []
        assert created["model"] == MODEL_ID
        assert created["urls"]["get"] == f"{emu.base_url}/api/v3/predictions/{created['id']}/result"

        done = wait_done(client, created["id"])
        assert done["status"] == "completed" and done["error"] == ""
        assert done["timings"]["inference"] >= 150
        assert done["has_nsfw_contents"] == [False]
        assert done["created_at"].endswith("Z")
        assert "code" not in done
        short = client.get(f"/api/v3/predictions/{created['id']}").json()["data"]
        assert short == done
        png = client.get(done["outputs"][0])
        assert png.headers["content-type"] == "image/png"
        assert _alpha_of(png.content) == keyout_alpha(image).tobytes()

    stats = emu.stats()
    assert stats["requests"]["upload"] == {"POST": 1}
    assert stats["requests"]["upload_put"] == {"PUT": 1}
    assert stats["requests"]["media"] == {"GET": 1}
    assert stats["requests"]["download"] == {"GET": 1}
    assert stats["requests"]["submit"] == {"POST": 1}
    assert stats["requests"]["result"]["GET"] >= 2
    assert stats["uploads"] == 1 and stats["upload_bytes"] == len(data)
    assert stats["tasks_submitted"] == stats["tasks_completed"] == 1


def test_sync_mode_answers_with_the_finished_prediction(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.2)
    image = keyed_image(mode="RGBA")
    with api_client(emu) as client:
        url = upload(client, png_bytes(image))
        started = time.monotonic()
        data = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
        assert time.monotonic() - started >= 0.2
        assert data["status"] == "completed"
        assert _alpha_of(client.get(data["outputs"][0]).content) == keyout_alpha(image).tobytes()
    assert "result" not in emu.stats()["requests"]


def test_base64_output_is_bare_base64(api: httpx.Client,
                                      keyed_image: Callable[..., Image.Image]) -> None:
    import base64

    image = keyed_image()
    url = upload(api, png_bytes(image))
    data = api.post(SUBMIT, json={"image": url, "enable_sync_mode": True,
                                  "enable_base64_output": True}).json()["data"]
    (output,) = data["outputs"]
    assert not output.startswith(("data:", "http"))
    assert _alpha_of(base64.b64decode(output, validate=True)) == keyout_alpha(image).tobytes()


def test_binary_upload_keeps_the_bytes_exactly(emulator: Emulator, api: httpx.Client) -> None:
    data = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n\r\n" + b"\x00\r\r\n\n"
    answer = api.post("/api/v3/media/upload/binary",
                      files={"file": ("scan 1.png", data, "image/png")})
    assert answer.status_code == 200, answer.text
    info = answer.json()["data"]
    assert info["type"] == "image" and info["filename"] == "scan 1.png"
    assert info["size"] == len(data)
    assert api.get(info["download_url"]).content == data
    assert emulator.stats()["requests"]["upload_binary"] == {"POST": 1}


def test_binary_upload_needs_a_file_field(api: httpx.Client) -> None:
    assert api.post("/api/v3/media/upload/binary",
                    files={"other": ("a.png", b"x", "image/png")}).status_code == 400
    assert api.post("/api/v3/media/upload/binary", content=b"x").status_code == 400


def test_presigned_put_checks_the_signed_headers_and_size(api: httpx.Client) -> None:
    ticket = api.post("/api/v3/media/uploads", json={
        "filename": "a.png", "size": 5, "content_type": "image/png"}).json()["data"]
    with httpx.Client(timeout=10) as bucket:
        wrong_type = bucket.put(ticket["upload"]["url"], content=b"12345",
                                headers={"Content-Type": "image/jpeg"})
        assert wrong_type.status_code == 403 and b"SignatureDoesNotMatch" in wrong_type.content
        wrong_size = bucket.put(ticket["upload"]["url"], content=b"1234",
                                headers=ticket["upload"]["headers"])
        assert wrong_size.status_code == 400
        assert bucket.get(ticket["download_url"]).status_code == 404  # nothing stored yet
        unknown = bucket.put(ticket["upload"]["url"].replace("/upload/", "/upload/0"),
                             content=b"12345", headers=ticket["upload"]["headers"])
        assert unknown.status_code == 403

        def chunks() -> Iterator[bytes]:
            yield b"12"
            yield b"345"

        chunked = bucket.put(ticket["upload"]["url"], content=chunks(),
                             headers=ticket["upload"]["headers"])
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert chunked.status_code == 200
        assert bucket.get(ticket["download_url"]).content == b"12345"


@pytest.mark.parametrize("body", [
    {"filename": "a.png"},
    {"filename": "", "size": 3},
    {"filename": "a.png", "size": -1},
    {"filename": "a.png", "size": "3"},
])
def test_upload_ticket_rejects_bad_parameters(api: httpx.Client, body: dict[str, Any]) -> None:
    answer = api.post("/api/v3/media/uploads", json=body)
    assert answer.status_code == 400 and answer.json()["message"]


def test_uploads_over_the_size_limit_get_413(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(max_upload_bytes=1000)
    with api_client(emu) as client:
        ticket = client.post("/api/v3/media/uploads", json={
            "filename": "big.png", "size": 1001, "content_type": "image/png"})
        assert ticket.status_code == 413 and "1000" in ticket.json()["message"]
        assert client.post("/api/v3/media/uploads", json={
            "filename": "ok.png", "size": 1000, "content_type": "image/png"}).status_code == 200
        binary = client.post("/api/v3/media/upload/binary",
                             files={"file": ("big.png", b"x" * 1001, "image/png")})
        assert binary.status_code == 413
        huge = client.post("/api/v3/media/upload/binary",
                           files={"file": ("huge.png", b"x" * 400_000, "image/png")})
        assert huge.status_code == 413
        # refused before it was read: the answer says the connection closes, and the
        # client's next request opens a new one
        assert huge.headers["connection"] == "close"
        assert binary.headers.get("connection") is None
        assert client.get("/api/v3/balance").status_code == 200
    assert emu.stats()["connections"] == 2


def test_balance(api: httpx.Client, emulator_factory: Callable[..., Emulator]) -> None:
    assert api.get("/api/v3/balance").json() == {
        "code": 200, "message": "success", "data": {"balance": 100.0}}
    emu = emulator_factory(balance=0.5)
    with api_client(emu) as client:
        assert client.get("/api/v3/balance").json()["data"]["balance"] == 0.5


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "'image' is required"),
    ({"image": ""}, "'image' is required"),
    ({"image": "data:image/png;base64,iVBORw0KGgo="}, "data URIs are not supported"),
    ({"image": "http://x/a.png", "enable_sync_mode": "yes"}, "must be a boolean"),
])
def test_submit_rejects_bad_parameters_with_400(
        emulator: Emulator, api: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    answer = api.post(SUBMIT, json=body)
    assert answer.status_code == 400
    assert answer.json()["code"] == 400 and fragment in answer.json()["message"]
    assert emulator.stats()["tasks_submitted"] == 0


def test_submit_rejects_a_body_that_is_not_json(api: httpx.Client) -> None:
    answer = api.post(SUBMIT, content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["message"]


def test_a_foreign_url_fails_the_task_with_1402(api: httpx.Client) -> None:
    data = api.post(SUBMIT, json={"image": "https://example.com/photo.png",
                                  "enable_sync_mode": True}).json()["data"]
    assert data["status"] == "failed" and data["code"] == 1402 and data["outputs"] == []
    assert "expired or is unreachable" in data["error"]


def test_an_undecodable_upload_fails_the_task_with_1401(api: httpx.Client) -> None:
    url = upload(api, b"this is not an image", filename="fake.jpg", content_type="image/jpeg")
    data = api.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
    assert data["status"] == "failed" and data["code"] == 1401


def test_an_output_url_can_be_submitted_again(api: httpx.Client,
                                              keyed_image: Callable[..., Image.Image]) -> None:
    first = api.post(SUBMIT, json={"image": upload(api, png_bytes(keyed_image())),
                                   "enable_sync_mode": True}).json()["data"]
    second = api.post(SUBMIT, json={"image": first["outputs"][0],
                                    "enable_sync_mode": True}).json()["data"]
    assert second["status"] == "completed"


def test_unknown_prediction_and_route_get_404(api: httpx.Client) -> None:
    missing = api.get("/api/v3/predictions/0123abc/result")
    assert missing.status_code == 404 and "0123abc" in missing.json()["message"]
    assert api.get("/api/v3/nothing/here").status_code == 404
    assert api.get("/outputs/nothing.png").status_code == 404
    assert api.get("/media/nothing/a.png").status_code == 404


def test_a_bad_content_length_gets_400(emulator: Emulator) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v3/media/uploads HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer k\r\nContent-Length: lots\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"body framing" in answer


def test_head_on_a_file_sends_headers_only(api: httpx.Client) -> None:
    url = upload(api, b"12345", filename="a.bin", content_type="application/octet-stream")
    head = api.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == "5"
    assert head.content == b""
    assert api.get(url).content == b"12345"  # the keep-alive connection is still in step


# -- auth ----------------------------------------------------------------------------------------

API_CALLS = [
    ("POST", SUBMIT, {"image": "http://x/a.png"}),
    ("GET", "/api/v3/predictions/abc/result", None),
    ("GET", "/api/v3/predictions/abc", None),
    ("POST", "/api/v3/media/uploads", {"filename": "a.png", "size": 1}),
    ("POST", "/api/v3/media/upload/binary", None),
    ("GET", "/api/v3/balance", None),
    ("POST", "/api/v3/predictions", {"page": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), API_CALLS)
def test_every_api_call_needs_the_bearer_key(
        emulator_factory: Callable[..., Emulator], method: str, path: str,
        body: dict[str, Any] | None) -> None:
    emu = emulator_factory(api_key="sk-the-one-right-key")
    for key in ("", "sk-a-wrong-key"):
        with api_client(emu, key) as client:
            answer = client.request(method, path, json=body)
        assert answer.status_code == 401
        assert answer.json()["code"] == 401 and "Unauthorized" in answer.json()["message"]
        assert "sk-" not in answer.text  # no key is ever echoed
    with httpx.Client(base_url=emu.base_url) as client:
        basic = client.request(method, path, json=body, headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401
    assert emu.stats()["auth_failures"] == 3
    assert emu.stats()["tasks_submitted"] == 0


def test_any_non_empty_key_is_accepted_by_default(emulator: Emulator) -> None:
    with api_client(emulator, "whatever") as client:
        assert client.get("/api/v3/balance").status_code == 200


@pytest.mark.parametrize(("state", "status", "fragment"), [
    ("inactive", 401, "not activated"),
    ("suspended", 403, "suspended"),
])
def test_key_states(emulator_factory: Callable[..., Emulator], state: str, status: int,
                    fragment: str) -> None:
    emu = emulator_factory(key_state=state)
    with api_client(emu) as client:
        answer = client.get("/api/v3/balance")
    assert answer.status_code == status and fragment in answer.json()["message"]


def test_files_are_served_without_a_key(api: httpx.Client) -> None:
    url = upload(api, b"abc", filename="a.txt", content_type="text/plain")
    assert httpx.get(url, timeout=10).content == b"abc"


# -- sync timeout --------------------------------------------------------------------------------


def test_sync_timeout_as_504_still_carries_the_id_and_the_task_completes(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.3, sync_timeout=0.05, sync_timeout_style="504")
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        answer = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True})
        assert answer.status_code == 504
        body = answer.json()
        assert body["code"] == 504 and "Sync mode timed out" in body["message"]
        assert body["data"]["status"] in ("created", "processing")  # did not wait for the end
        task_id = body["data"]["id"]
        assert wait_done(client, task_id)["status"] == "completed"
    assert emu.stats()["sync_timeouts"] == 1 and emu.stats()["tasks_submitted"] == 1


def test_sync_timeout_as_processing_with_code_5004(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.3, sync_timeout=0.05, sync_timeout_style="processing")
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        answer = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True})
        assert answer.status_code == 200
        envelope = answer.json()
        assert envelope["code"] == 200
        data = envelope["data"]
        assert data["status"] == "processing" and data["code"] == 5004
        assert data["error"].startswith("Sync mode timed out")
        done = wait_done(client, data["id"])
        assert done["status"] == "completed" and "code" not in done


def test_a_sync_submit_that_finishes_in_time_is_not_a_timeout(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.05, sync_timeout=5)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        data = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
    assert data["status"] == "completed" and emu.stats()["sync_timeouts"] == 0


# -- faults --------------------------------------------------------------------------------------


def test_first_n_requests_get_a_status_with_retry_after_seconds(
        emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="balance", status=429, first=2,
                                         retry_after="3"),))
    with api_client(emu) as client:
        answers = [client.get("/api/v3/balance") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "3"
    assert answers[0].json()["code"] == 429 and answers[0].json()["message"]
    assert "retry-after" not in answers[2].headers
    assert emu.stats()["faults"] == {"status": 2}


def test_retry_after_as_an_http_date(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="result", status=429, first=1,
                                         retry_after="date:5"),))
    with api_client(emu) as client:
        answer = client.get("/api/v3/predictions/x/result")
    when = parsedate_to_datetime(answer.headers["retry-after"])
    assert 1 <= when.timestamp() - time.time() <= 6  # ahead by the 5 s, in whole seconds


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_every_nth_request_gets_a_server_error(emulator_factory: Callable[..., Emulator],
                                               status: int) -> None:
    emu = emulator_factory(faults=(Fault("status", route="balance", status=status, every=3),))
    with api_client(emu) as client:
        codes = [client.get("/api/v3/balance").status_code for _ in range(6)]
    assert codes == [200, 200, status, 200, 200, status]


def test_a_status_fault_on_submit_creates_no_task(emulator_factory: Callable[..., Emulator],
                                                  keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="submit", status=503, first=1),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        assert client.post(SUBMIT, json={"image": url}).status_code == 503
        assert emu.stats()["tasks_submitted"] == 0
        assert client.post(SUBMIT, json={"image": url}).status_code == 200
    assert emu.stats()["tasks_submitted"] == 1


def test_a_status_fault_after_the_submit_leaves_a_task_behind(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="submit", status=502, first=1,
                                         after=True),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        assert client.post(SUBMIT, json={"image": url}).status_code == 502
    assert emu.stats()["tasks_submitted"] == 1
    assert emu.wait_idle(5) and emu.stats()["tasks_completed"] == 1


@pytest.mark.parametrize("after", [False, True], ids=["before-create", "answer-lost"])
def test_dropped_submit_connection(emulator_factory: Callable[..., Emulator],
                                   keyed_image: Callable[..., Image.Image], after: bool) -> None:
    emu = emulator_factory(faults=(Fault("drop", route="submit", first=1, after=after),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(SUBMIT, json={"image": url})
        assert emu.stats()["tasks_submitted"] == (1 if after else 0)
        assert client.post(SUBMIT, json={"image": url}).status_code == 200  # fresh connection
    assert emu.wait_idle(5)
    stats = emu.stats()
    assert stats["tasks_submitted"] == stats["tasks_completed"] == (2 if after else 1)
    assert stats["duplicate_submits"] == (1 if after else 0)
    assert stats["faults"] == {"drop": 1}


def test_dropped_result_and_upload_connections(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("drop", route="result", first=1),
                                   Fault("drop", route="uploads", first=1)))
    with api_client(emu) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/api/v3/predictions/x/result")
        assert client.get("/api/v3/predictions/x/result").status_code == 404
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/api/v3/media/uploads", json={"filename": "a", "size": 1})
        assert client.post("/api/v3/media/uploads",
                           json={"filename": "a", "size": 1}).status_code == 200


@pytest.mark.parametrize("code", [1200, 1403, 5000, 5003])
def test_failed_task_with_a_given_code(emulator_factory: Callable[..., Emulator],
                                       keyed_image: Callable[..., Image.Image],
                                       code: int) -> None:
    emu = emulator_factory(faults=(Fault("fail_task", code=code, first=1),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        failed = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
        assert failed["status"] == "failed" and failed["code"] == code and failed["error"]
        assert failed["outputs"] == []
        second = client.post(SUBMIT, json={"image": url}).json()["data"]
        assert wait_done(client, second["id"])["status"] == "completed"
    stats = emu.stats()
    assert stats["tasks_failed"] == 1 and stats["tasks_completed"] == 1


def test_malformed_json(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("malformed", route="result", first=1),))
    with api_client(emu) as client:
        bad = client.get("/api/v3/predictions/x/result")
        with pytest.raises(ValueError):
            bad.json()
        assert bad.headers["content-type"] == "application/json"
        assert client.get("/api/v3/predictions/x/result").json()["code"] == 404


def test_truncated_output_download(emulator_factory: Callable[..., Emulator],
                                   keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("truncate", route="download", first=1),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        data = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(data["outputs"][0])
        full = client.get(data["outputs"][0])
        assert full.status_code == 200 and _alpha_of(full.content)
        assert client.get(url).status_code == 200  # media downloads are not targeted


def test_delay_fault_slows_one_route(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("delay", route="balance", first=1, seconds=0.2),))
    with api_client(emu) as client:
        started = time.monotonic()
        client.get("/api/v3/balance")
        assert time.monotonic() - started >= 0.2
        client.get("/api/v3/balance")
    assert emu.stats()["faults"] == {"delay": 1}  # the second request was not delayed


def test_stop_cuts_a_delay_fault_short() -> None:
    emu = Emulator(EmulatorOptions(faults=(Fault("delay", route="balance", first=1,
                                                 seconds=30),))).start()
    errors: list[Exception] = []

    def call() -> None:
        try:
            with api_client(emu) as client:
                client.get("/api/v3/balance")
        except httpx.TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while emu.stats()["faults"].get("delay") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    emu.stop()
    thread.join(5)
    assert time.monotonic() - started < 5 and len(errors) == 1


def test_random_faults_are_reproducible_with_a_seed() -> None:
    fault = Fault("status", route="submit", status=503, rate=0.3)

    def pattern(seed: int) -> list[bool]:
        plan = FaultPlan((fault,), seed=seed)
        return [bool(plan.pick("submit", ("status",))) for _ in range(200)]

    first = pattern(7)
    assert first == pattern(7)
    assert first != pattern(8)
    assert 30 <= sum(first) <= 90  # about 30 %


def test_set_faults_replaces_them_at_run_time(emulator: Emulator, api: httpx.Client) -> None:
    assert api.get("/api/v3/balance").status_code == 200
    emulator.set_faults(Fault("status", route="*", status=500, first=1))
    assert api.get("/api/v3/balance").status_code == 500
    assert api.get("/api/v3/balance").status_code == 200


@pytest.mark.parametrize(("spec", "expected"), [
    ("status,route=submit,status=429,every=3,retry_after=2",
     Fault("status", route="submit", status=429, every=3, retry_after="2")),
    ("drop, route=submit, first=1, after=true", Fault("drop", route="submit", first=1, after=True)),
    ("fail_task,code=1402,rate=0.5", Fault("fail_task", code=1402, rate=0.5)),
    ("truncate,route=downloads,first=2,fraction=0.1",
     Fault("truncate", route="downloads", first=2, fraction=0.1)),
])
def test_fault_specs_parse(spec: str, expected: Fault) -> None:
    assert Fault.parse(spec) == expected


@pytest.mark.parametrize("spec", [
    "explode,first=1", "status,route=nowhere,first=1", "status", "status,first=x",
    "status,colour=red,first=1", "status,rate=2", "status first=1",
])
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        Fault.parse(spec)


# -- limits --------------------------------------------------------------------------------------


def test_concurrency_cap_makes_extra_tasks_wait(emulator_factory: Callable[..., Emulator],
                                                keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.15, concurrency_cap=2)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        started = time.monotonic()
        ids = [client.post(SUBMIT, json={"image": url}).json()["data"]["id"] for _ in range(5)]
        waiting = client.get(f"/api/v3/predictions/{ids[-1]}/result").json()["data"]
        assert waiting["status"] == "created"  # queued behind the cap
        assert emu.stats()["running_tasks"] <= 2
        results = [wait_done(client, task_id) for task_id in ids]
    assert all(r["status"] == "completed" for r in results)
    # 5 tasks, 2 at a time, 0.15 s each: three rounds
    assert time.monotonic() - started >= 0.15 * 3
    assert emu.stats()["max_concurrent_tasks"] == 2


def test_without_a_cap_tasks_run_side_by_side(emulator_factory: Callable[..., Emulator],
                                              keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.5)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        for _ in range(4):
            client.post(SUBMIT, json={"image": url})
    assert emu.wait_idle(5)
    assert emu.stats()["max_concurrent_tasks"] == 4


def test_sync_submits_in_parallel_respect_the_cap(emulator_factory: Callable[..., Emulator],
                                                  keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=0.15, concurrency_cap=3)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
    statuses: list[str] = []

    def submit() -> None:
        with api_client(emu) as own:
            data = own.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
            statuses.append(data["status"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == ["completed"] * 8
    assert emu.stats()["max_concurrent_tasks"] == 3


def test_images_per_minute_limit_answers_429(emulator_factory: Callable[..., Emulator],
                                             keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(images_per_minute=2)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        codes = [client.post(SUBMIT, json={"image": url}) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert 1 <= int(codes[2].headers["retry-after"]) <= 60
    assert "images-per-minute" in codes[2].json()["message"]
    assert emu.stats()["rate_limited"] == 1 and emu.stats()["tasks_submitted"] == 2


def test_images_per_minute_window_slides(emulator_factory: Callable[..., Emulator],
                                         keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(images_per_minute=1, rate_window=0.2, rate_limit_retry_after=False)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        assert client.post(SUBMIT, json={"image": url}).status_code == 200
        limited = client.post(SUBMIT, json={"image": url})
        assert limited.status_code == 429 and "retry-after" not in limited.headers
        deadline = time.monotonic() + 5
        while client.post(SUBMIT, json={"image": url}).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_stores_are_bounded(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(max_stored=3)
    with api_client(emu) as client:
        urls = [upload(client, bytes([n]) * 10, filename=f"{n}.bin",
                        content_type="application/octet-stream") for n in range(5)]
        assert [client.get(u).status_code for u in urls] == [404, 404, 200, 200, 200]
    stats = emu.stats()
    assert stats["stored"]["media"] == 3 and stats["evicted"] >= 2


def test_stores_are_bounded_by_bytes(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(max_stored_bytes=25)
    with api_client(emu) as client:
        urls = [upload(client, b"x" * 10, filename=f"{n}.bin",
                        content_type="application/octet-stream") for n in range(4)]
        assert [client.get(u).status_code for u in urls] == [404, 404, 200, 200]


# -- stats, keep-alive, life cycle -------------------------------------------------------------


def test_stats_over_http_and_reset(emulator: Emulator, api: httpx.Client) -> None:
    for _ in range(3):
        api.get("/api/v3/balance")
    over_http = httpx.get(f"{emulator.base_url}/_emulator/stats", timeout=10).json()
    assert over_http["requests"]["balance"] == {"GET": 3}
    assert over_http["status_codes"]["200"] == 3
    assert emulator.count("balance") == 3 and emulator.count("balance", "POST") == 0
    assert httpx.post(f"{emulator.base_url}/_emulator/reset", timeout=10).json() == {"reset": True}
    stats = emulator.stats()
    assert stats["requests"] == {} and stats["requests_total"] == 0


def test_requests_share_one_keep_alive_connection(emulator: Emulator,
                                                  api: httpx.Client) -> None:
    for _ in range(20):
        assert api.get("/api/v3/balance").status_code == 200
    api.post("/api/v3/media/upload/binary", files={"file": ("a.png", b"123", "image/png")})
    assert api.get("/api/v3/predictions/nope/result").status_code == 404
    stats = emulator.stats()
    assert stats["connections"] == 1 and stats["requests_total"] == 22
    assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0


def test_stop_closes_idle_connections_and_frees_the_port(keyed_image: Any) -> None:
    emu = Emulator(EmulatorOptions()).start()
    client = api_client(emu)
    try:
        assert client.get("/api/v3/balance").status_code == 200  # leaves an idle connection
        base_url = emu.base_url
        started = time.monotonic()
        emu.stop()
        # well under the 30 s idle timeout: the idle connection did not hold the stop up
        assert time.monotonic() - started < 15
        with pytest.raises(httpx.TransportError):
            client.get(f"{base_url}/api/v3/balance")
    finally:
        client.close()
    emu.stop()  # a second stop is harmless


def test_stop_releases_a_waiting_sync_submit(keyed_image: Callable[..., Image.Image]) -> None:
    emu = Emulator(EmulatorOptions(delay=30)).start()
    errors: list[BaseException] = []
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))

        def submit() -> None:
            try:
                with api_client(emu) as own:
                    own.post(SUBMIT, json={"image": url, "enable_sync_mode": True})
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=submit)
        thread.start()
        deadline = time.monotonic() + 5
        while emu.stats()["running_tasks"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        emu.stop()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 5


def test_base_url_and_default_key(emulator: Emulator) -> None:
    assert emulator.base_url == f"http://127.0.0.1:{emulator.port}"
    assert emulator.api_key and emulator.options.api_key is None


@pytest.mark.network_model
def test_local_model_gives_a_real_cutout(emulator_factory: Callable[..., Emulator]) -> None:
    from PIL import ImageDraw

    emu = emulator_factory(model="local")
    image = Image.new("RGB", (320, 240), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((100, 60, 220, 180), fill=(200, 30, 30))
    with api_client(emu) as client:
        url = upload(client, png_bytes(image))
        data = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()["data"]
        assert data["status"] == "completed"
        with Image.open(io.BytesIO(client.get(data["outputs"][0]).content)) as out:
            alpha = out.getchannel("A")
    assert alpha.size == image.size
    assert alpha.getpixel((160, 120)) >= 200 and alpha.getpixel((5, 5)) <= 30


def test_stop_leaves_no_thread_behind(keyed_image: Callable[..., Image.Image]) -> None:
    before = set(threading.enumerate())
    emu = Emulator(EmulatorOptions(delay=0.05)).start()
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        client.post(SUBMIT, json={"image": url})  # a task still running at stop
        client.get("/api/v3/balance")  # and an idle keep-alive connection
        emu.stop()
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []


def test_local_model_without_the_local_backend_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bgremove.local", None)  # makes the import fail
    with pytest.raises(ConfigError, match="local backend"):
        Emulator(EmulatorOptions(model="local")).start()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        EmulatorOptions(sync_timeout_style="never")
    with pytest.raises(ConfigError):
        EmulatorOptions(key_state="odd")
    with pytest.raises(ConfigError):
        EmulatorOptions(retention=0)
    with pytest.raises(ConfigError):
        Emulator(EmulatorOptions(model="magic")).start()


# -- the command ---------------------------------------------------------------------------------


def _run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bgremove", "emulator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_prints_the_url_first_serves_and_exits_0_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bgremove", "emulator", "--port", "0", "--delay", "0.01",
         "--api-key", "sk-cli-secret", "--fault", "status,route=balance,status=503,first=1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, timeout=10,
                          headers={"Authorization": "Bearer sk-cli-secret"}) as client:
            assert client.get("/api/v3/balance").status_code == 503
            assert client.get("/api/v3/balance").status_code == 200
            assert client.get("/api/v3/balance",
                              headers={"Authorization": "Bearer other"}).status_code == 401
            stats = client.get("/_emulator/stats").json()
        assert stats["requests"]["balance"] == {"GET": 3}
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "sk-cli-secret" not in out + err


def test_cli_stops_on_sigint_too() -> None:
    process = subprocess.Popen([sys.executable, "-m", "bgremove", "emulator", "--port", "0"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("http://")
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0


@contextmanager
def served_cli(*args: str) -> Iterator[httpx.Client]:
    """``bgremove emulator --port 0 ARGS`` in a subprocess, a client for it (key "k"); on
    leaving, SIGTERM and an exit status of 0."""
    process = subprocess.Popen([sys.executable, "-m", "bgremove", "emulator", "--port", "0", *args],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        with httpx.Client(base_url=base_url, timeout=10,
                          headers={"Authorization": "Bearer k"}) as client:
            yield client
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0


def test_cli_account_level_applies_its_limits(keyed_image: Callable[..., Image.Image]) -> None:
    with served_cli("--level", "bronze") as client:
        url = upload(client, png_bytes(keyed_image()))
        codes = [client.post(SUBMIT, json={"image": url}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # bronze: 2 images per minute


def test_requests_are_logged_at_debug_without_the_key(
        emulator: Emulator, api: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    def logged() -> bool:
        return any("GET /api/v3/balance [balance] -> 200" in r.getMessage()
                   for r in caplog.records if r.name.endswith("emulator.http"))

    with caplog.at_level("DEBUG", logger="bgremove.emulator"):
        api.get("/api/v3/balance")
        # The server logs after it has answered: wait for the line on a deadline.
        deadline = time.monotonic() + 10
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert logged()
    assert emulator.api_key not in caplog.text


def test_cli_refuses_a_non_loopback_host() -> None:
    result = _run_cli("--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_cli_refuses_a_bad_fault_spec() -> None:
    result = _run_cli("--port", "0", "--fault", "explode,first=1")
    assert result.returncode == 2 and "unknown fault kind" in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="binding a used port behaves differently")
def test_cli_reports_a_port_in_use(emulator: Emulator) -> None:
    result = _run_cli("--port", str(emulator.port))
    assert result.returncode == 2 and "cannot listen" in result.stderr


def test_the_emulated_service_decodes_uploads_by_its_own_rules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the client sends is checked, not trusted: the EXIF orientation is applied (a
    client must strip it when it turns the mask itself), formats the service does not take
    and images over its pixel limit are refused before any pixel is decoded."""
    from bgremove.emulator import model

    image = Image.new("RGB", (30, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("JPEG", "PNG", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, exif=exif.tobytes())
        assert model.decode_image(buffer.getvalue()).size == (20, 30), fmt
    buffer = io.BytesIO()
    image.save(buffer, format="PCX")
    with pytest.raises(ValueError, match="cannot decode"):
        model.decode_image(buffer.getvalue())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    monkeypatch.setattr(model, "SERVICE_MAX_PIXELS", 599)
    with pytest.raises(ValueError, match="30x20 is more than the 599 pixels"):
        model.decode_image(buffer.getvalue())
