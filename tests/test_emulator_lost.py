"""The emulator's prediction list and its lost-answer faults, over real sockets.

A lost submit answer is resolved through ``POST /api/v3/predictions``; these tests pin what
the emulator serves for it: the documented list (newest first, pages, filters, the 7-day
window, no ``input`` unless asked), answers lost after the task was created (sync and async),
an API without the list route, and the count of tasks per uploaded content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from bgremove.emulator import MODEL_ID, Emulator, Fault
from tests.test_emulator import SUBMIT, api_client, png_bytes, served_cli, upload, wait_done

LIST = "/api/v3/predictions"


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    with api_client(emulator) as client:
        yield client


def _list(client: httpx.Client, **query: Any) -> dict[str, Any]:
    answer = client.post(LIST, json=query)
    assert answer.status_code == 200, answer.text
    envelope: dict[str, Any] = answer.json()
    assert envelope["code"] == 200
    return dict(envelope["data"])


def _ids(data: dict[str, Any]) -> list[str]:
    return [item["id"] for item in data["items"]]


def _submit(client: httpx.Client, url: str, **flags: bool) -> str:
    answer = client.post(SUBMIT, json={"image": url, **flags})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["id"])


def _next_millisecond(emu: Emulator) -> None:
    """Wait (on a deadline) until the service clock is in a later millisecond."""
    start = int(emu.now() * 1000)
    deadline = time.monotonic() + 5
    while int(emu.now() * 1000) <= start:
        assert time.monotonic() < deadline


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _differing_images(keyed_image: Callable[..., Image.Image], n: int) -> list[bytes]:
    images = []
    for i in range(n):
        image = keyed_image()
        image.putpixel((63, 47), (i, i, i))  # a different upload each
        images.append(png_bytes(image))
    return images


# -- the list ------------------------------------------------------------------------------------


def test_list_is_newest_first_without_input_and_matches_the_result(
        emulator: Emulator, api: httpx.Client, keyed_image: Callable[..., Image.Image]) -> None:
    urls = [upload(api, data) for data in _differing_images(keyed_image, 3)]
    ids = [_submit(api, urls[0]), _submit(api, urls[1], enable_sync_mode=True),
           _submit(api, urls[2], enable_base64_output=True)]
    assert emulator.wait_idle(10)

    data = _list(api, page=1, page_size=100, model=MODEL_ID)

    assert set(data) == {"page", "total", "items"}
    assert data["page"] == 1 and data["total"] == 3
    assert _ids(data) == ids[::-1]
    for item in data["items"]:
        assert "input" not in item  # the documented example carries none
        result = api.get(f"/api/v3/predictions/{item['id']}/result").json()["data"]
        assert item == result and item["status"] == "completed"
    assert emulator.count("list", "POST") == 1


def test_list_input_flag_adds_the_submit_body(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(list_input=True)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        _submit(client, url, enable_sync_mode=True)
        (item,) = _list(client)["items"]
    assert item["input"] == {"image": url, "enable_sync_mode": True}


def test_list_pages(emulator_factory: Callable[..., Emulator],
                    keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(list_page_size_max=3)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        ids = [_submit(client, url) for _ in range(5)]
        pages = [_list(client, page=n, page_size=2) for n in (1, 2, 3, 4)]
        clamped = _list(client, page=1, page_size=50)
        default = _list(client)
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    assert all(p["total"] == 5 for p in pages)
    assert [i for p in pages for i in _ids(p)] == ids[::-1]
    assert _ids(clamped) == ids[::-1][:3]  # served at most list_page_size_max per page
    assert default["page"] == 1 and _ids(default) == ids[::-1][:3]


def test_list_filters_by_status_and_model(emulator_factory: Callable[..., Emulator],
                                          keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("fail_task", code=5000, first=1),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        failed, done = _submit(client, url), _submit(client, url)
        assert emu.wait_idle(10)
        assert _ids(_list(client, status="failed")) == [failed]
        assert _ids(_list(client, status="completed")) == [done]
        assert _ids(_list(client, status="processing")) == []
        assert _ids(_list(client, model=MODEL_ID)) == [done, failed]
        assert _list(client, model="wavespeed-ai/flux-dev") == {"page": 1, "total": 0,
                                                                "items": []}


def test_list_processing_covers_tasks_not_ended(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=30)  # ended by the fixture's stop
    with api_client(emu) as client:
        task_id = _submit(client, upload(client, png_bytes(keyed_image())))
        (item,) = _list(client, status="processing")["items"]
        assert item["id"] == task_id and item["status"] in ("created", "processing")
        assert _list(client, status="completed")["total"] == 0


def test_list_filters_by_creation_time_inclusively(
        emulator: Emulator, api: httpx.Client, keyed_image: Callable[..., Image.Image]) -> None:
    url = upload(api, png_bytes(keyed_image()))
    ids = []
    for _ in range(3):
        _next_millisecond(emulator)
        ids.append(_submit(api, url))
    created = {item["id"]: item["created_at"] for item in _list(api)["items"]}
    middle = created[ids[1]]
    assert len(set(created.values())) == 3

    assert _ids(_list(api, created_after=middle)) == [ids[2], ids[1]]
    assert _ids(_list(api, created_before=middle)) == [ids[1], ids[0]]
    assert _ids(_list(api, created_after=middle, created_before=middle)) == [ids[1]]
    # an offset and a naive time (taken as UTC) mean the same instants
    when = datetime.fromisoformat(middle.replace("Z", "+00:00"))
    shifted = when.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    naive = when.replace(tzinfo=None).isoformat(timespec="milliseconds")
    assert _ids(_list(api, created_after=shifted)) == [ids[2], ids[1]]
    assert _ids(_list(api, created_before=naive)) == [ids[1], ids[0]]


@pytest.mark.parametrize(("query", "fragment"), [
    ({"page": 0}, "'page'"),
    ({"page_size": "10"}, "'page_size'"),
    ({"page_size": True}, "'page_size'"),
    ({"status": "created"}, "'status'"),
    ({"model": 5}, "'model'"),
    ({"created_after": "yesterday"}, "'created_after'"),
    ({"created_before": 1700000000}, "'created_before'"),
])
def test_list_rejects_bad_parameters(api: httpx.Client, query: dict[str, Any],
                                     fragment: str) -> None:
    answer = api.post(LIST, json=query)
    assert answer.status_code == 400
    assert answer.json()["code"] == 400 and fragment in answer.json()["message"]


def test_the_retention_window_drops_tasks_outputs_and_uploads(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(retention=0.5)  # "7 days", shortened
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        answer = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True})
        data = answer.json()["data"]
        assert _list(client)["total"] == 1
        assert client.get(data["outputs"][0]).status_code == 200
        deadline = time.monotonic() + 10
        while _list(client)["total"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get(f"/api/v3/predictions/{data['id']}/result").status_code == 404
        assert client.get(data["outputs"][0]).status_code == 404
        assert client.get(url).status_code == 404
        assert emu.prediction(data["id"]) is None


def test_clock_skew_shifts_the_service_clock(emulator_factory: Callable[..., Emulator],
                                             keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(clock_skew=-300)  # the service five minutes behind this machine
    with api_client(emu) as client:
        _submit(client, upload(client, png_bytes(keyed_image())))
        here = datetime.now(timezone.utc)
        (item,) = _list(client)["items"]
        created = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
        assert timedelta(seconds=290) < here - created < timedelta(seconds=310)
        # the Date header tells the same clock as created_at
        date = parsedate_to_datetime(client.get("/api/v3/balance").headers["date"])
        assert timedelta(seconds=290) < here - date < timedelta(seconds=310)
        # a window drawn on this machine's clock alone misses the task
        assert _list(client, created_after=_iso(here - timedelta(seconds=60)))["total"] == 0
        assert _list(client, created_after=_iso(here - timedelta(seconds=400)))["total"] == 1


def test_without_the_list_route_it_answers_404(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(list_route=False)
    with api_client(emu) as client:
        answer = client.post(LIST, json={"page": 1})
        assert client.get("/api/v3/balance").status_code == 200
    assert answer.status_code == 404
    assert answer.json()["code"] == 404 and "Not found" in answer.json()["message"]
    assert emu.count("list") == 1  # counted, so tests can see the client asked


def test_list_faults_target_the_list_route(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="list", status=503, first=1),
                                   Fault("drop", route="list", every=3)))
    with api_client(emu) as client:
        assert client.post(LIST, json={}).status_code == 503
        assert client.post(LIST, json={}).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(LIST, json={})
        assert client.get("/api/v3/balance").status_code == 200


# -- answers lost after the task was created -----------------------------------------------------

LOST = [
    pytest.param(Fault("drop", route="submit", first=1, after=True), id="dropped"),
    pytest.param(Fault("status", route="submit", status=502, first=1, after=True), id="502"),
    pytest.param(Fault("status", route="submit", status=504, first=1, after=True), id="504"),
]


def _lose_answer(client: httpx.Client, url: str, sync: bool) -> httpx.Response | None:
    try:
        return client.post(SUBMIT, json={"image": url, "enable_sync_mode": sync})
    except httpx.RemoteProtocolError:
        return None


@pytest.mark.parametrize("fault", LOST)
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_a_lost_answer_leaves_one_task_found_in_the_list(
        emulator_factory: Callable[..., Emulator], keyed_image: Callable[..., Image.Image],
        fault: Fault, sync: bool) -> None:
    # async: a task that outlives the test (ended at stop), so "not yet completed" is no race
    emu = emulator_factory(delay=0.2 if sync else 30, faults=(fault,))
    data = png_bytes(keyed_image())
    with api_client(emu) as client:
        url = upload(client, data)
        answer = _lose_answer(client, url, sync)
        if fault.kind == "drop":
            assert answer is None
        else:
            assert answer is not None and answer.status_code == fault.status
            assert answer.json()["data"] is None  # no task id anywhere
            assert answer.json()["message"]
        (item,) = _list(client)["items"]
        # sync mode loses the answer when the task ends, async mode at once
        assert (item["status"] == "completed") is sync
    stats = emu.stats()
    assert stats["answers_lost"] == 1 and stats["tasks_submitted"] == 1
    assert emu.tasks_for(data) == 1


@pytest.mark.parametrize("style", ["gateway", "drop"])
def test_sync_timeout_losing_the_answer(emulator_factory: Callable[..., Emulator],
                                        keyed_image: Callable[..., Image.Image],
                                        style: str) -> None:
    emu = emulator_factory(delay=2, sync_timeout=0.05, sync_timeout_style=style)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        answer = _lose_answer(client, url, True)
        if style == "drop":
            assert answer is None
        else:
            assert answer is not None and answer.status_code == 504
            assert answer.headers["content-type"] == "text/html"
            assert "id" not in answer.text
        (item,) = _list(client, status="processing")["items"]  # lost while still running
        assert wait_done(client, item["id"])["status"] == "completed"
    stats = emu.stats()
    assert stats["sync_timeouts"] == stats["answers_lost"] == stats["tasks_submitted"] == 1


def test_a_status_fault_before_the_task_is_not_a_lost_answer(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(faults=(Fault("status", route="submit", status=502, first=1),))
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        assert client.post(SUBMIT, json={"image": url}).status_code == 502
        assert _list(client)["total"] == 0
    assert emu.stats()["answers_lost"] == 0


def test_tasks_are_counted_per_uploaded_content(
        emulator: Emulator, api: httpx.Client, keyed_image: Callable[..., Image.Image]) -> None:
    first, second = _differing_images(keyed_image, 2)
    url_first, url_second = upload(api, first), upload(api, second)
    again = upload(api, first, filename="copy.png")  # the same bytes uploaded twice
    for url in (url_first, url_second, again):
        _submit(api, url)
    _submit(api, "https://example.com/elsewhere.png")  # not an upload: counted nowhere
    assert emulator.tasks_for(first) == 2 and emulator.tasks_for(second) == 1
    assert emulator.tasks_for(b"never uploaded") == 0
    stats = emulator.stats()
    assert sorted(stats["tasks_per_content"].values()) == [1, 2]
    assert stats["duplicate_submits"] == 1 and stats["tasks_submitted"] == 4
    over_http = httpx.get(f"{emulator.base_url}/_emulator/stats", timeout=10).json()
    assert over_http["tasks_per_content"] == stats["tasks_per_content"]


# -- the command ---------------------------------------------------------------------------------


def test_cli_flags_for_lost_answers_input_and_clock(
        keyed_image: Callable[..., Image.Image]) -> None:
    with served_cli("--lost-answer-rate", "1", "--list-input", "--clock-skew", "-300") as client:
        url = upload(client, png_bytes(keyed_image()))
        assert _lose_answer(client, url, True) is None
        (item,) = _list(client)["items"]
        stats = client.get("/_emulator/stats").json()
    assert item["input"]["image"] == url
    created = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
    assert datetime.now(timezone.utc) - created > timedelta(seconds=290)
    assert stats["answers_lost"] == 1 and stats["tasks_submitted"] == 1


def test_cli_flags_without_the_list_route_a_retention_and_a_gateway_timeout(
        keyed_image: Callable[..., Image.Image]) -> None:
    with served_cli("--no-list-route", "--retention", "0.5", "--delay", "0.2",
                    "--sync-timeout", "0", "--sync-timeout-style", "gateway") as client:
        assert client.post(LIST, json={}).status_code == 404
        url = upload(client, png_bytes(keyed_image()))
        lost = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True})
        assert lost.status_code == 504 and lost.headers["content-type"] == "text/html"
        deadline = time.monotonic() + 10
        while client.get(url).status_code == 200:  # gone after the retention
            assert time.monotonic() < deadline
            time.sleep(0.02)
