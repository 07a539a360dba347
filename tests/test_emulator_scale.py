"""The emulator at the scale of the photo benchmark: an upload seen before is not cut out
again, hundreds of tasks wait side by side, the delays can be ended at once, and the stores'
memory budget is a flag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

import bgremove.emulator.service as service_module
from bgremove.emulator import Emulator
from tests.test_emulator import SUBMIT, api_client, png_bytes, served_cli, upload, wait_done


def _counting_cutout(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the emulator's PNG encodes (one per cut-out it makes)."""
    calls: list[int] = []
    real = service_module.cutout_png

    def counted(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "cutout_png", counted)
    return calls


def test_the_same_upload_is_cut_out_once(emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
                                         keyed_image: Callable[..., Image.Image]) -> None:
    calls = _counting_cutout(monkeypatch)
    first, second = png_bytes(keyed_image(key=(0, 200, 0))), png_bytes(keyed_image(key=(0, 0, 200)))
    outputs = []
    with api_client(emulator) as client:
        for data in (first, first, second):
            url = upload(client, data)  # a new upload (a new URL) of these bytes
            done = client.post(SUBMIT, json={"image": url, "enable_sync_mode": True}).json()
            assert done["data"]["status"] == "completed"
            outputs.append(client.get(done["data"]["outputs"][0]).content)
    assert outputs[0] == outputs[1] != outputs[2]
    assert len(calls) == 2
    assert emulator.stats()["tasks_completed"] == 3


def test_hundreds_of_tasks_wait_side_by_side_and_end_their_delays_at_once(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    emu = emulator_factory(delay=600)
    count = 300
    ids: list[str] = []
    lock = threading.Lock()
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))

        def submit(n: int) -> None:
            for _ in range(n):
                task = client.post(SUBMIT, json={"image": url}).json()["data"]
                with lock:
                    ids.append(task["id"])

        threads = [threading.Thread(target=submit, args=(count // 20,)) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(ids) == count
        assert emu.stats()["max_concurrent_tasks"] == count
        emu.end_delays()
        deadline = time.monotonic() + 30
        while emu.stats()["tasks_completed"] < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {client.get(f"/api/v3/predictions/{i}").json()["data"]["status"]
                for i in ids} == {"completed"}
        late = client.post(SUBMIT, json={"image": url}).json()["data"]
        # Over HTTP too; it ends only the delays of tasks running when it is asked.
        assert httpx.post(f"{emu.base_url}/_emulator/end-delays", timeout=10).json() == {
            "ended": True}
        assert wait_done(client, late["id"])["status"] == "completed"
        later = client.post(SUBMIT, json={"image": url}).json()["data"]
        assert wait_done(client, later["id"], timeout=0.3)["status"] != "completed"
    assert emu.stats()["tasks_completed"] == count + 1


def test_cli_max_stored_mb_bounds_the_stores() -> None:
    with served_cli("--max-stored-mb", "0.00002") as client:  # 20 bytes
        urls = [upload(client, bytes([n]) * 10, filename=f"{n}.bin",
                       content_type="application/octet-stream") for n in range(3)]
        assert [client.get(u).status_code for u in urls] == [404, 200, 200]


def test_end_delays_reaches_a_task_still_making_its_cut_out(
        emulator_factory: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch,
        keyed_image: Callable[..., Image.Image]) -> None:
    entered, release = threading.Event(), threading.Event()
    real = service_module.cutout_png

    def slow(*args: Any, **kwargs: Any) -> bytes:
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "cutout_png", slow)
    emu = emulator_factory(delay=600)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        task = client.post(SUBMIT, json={"image": url}).json()["data"]
        assert entered.wait(10)
        emu.end_delays()
        release.set()
        assert wait_done(client, task["id"], timeout=30)["status"] == "completed"


def test_end_delays_reaches_a_task_created_but_not_yet_started(
        emulator_factory: Callable[..., Emulator],
        keyed_image: Callable[..., Image.Image]) -> None:
    """A test that sees a task submitted and ends the delays must not race the task's
    thread: here the second task waits behind the cap when they are ended."""
    emu = emulator_factory(delay=600, concurrency_cap=1)
    with api_client(emu) as client:
        url = upload(client, png_bytes(keyed_image()))
        first, second = (client.post(SUBMIT, json={"image": url}).json()["data"]
                         for _ in range(2))
        assert emu.stats()["running_tasks"] <= 1  # the second has not started
        emu.end_delays()
        assert wait_done(client, first["id"], timeout=30)["status"] == "completed"
        assert wait_done(client, second["id"], timeout=30)["status"] == "completed"


def test_cut_outs_are_made_one_per_core_at_a_time(
        emulator_factory: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch,
        keyed_image: Callable[..., Image.Image]) -> None:
    monkeypatch.setattr(service_module.os, "cpu_count", lambda: 2)
    changed = threading.Condition()
    busy, most = [0], [0]
    real = service_module.cutout_png

    def tracked(*args: Any, **kwargs: Any) -> bytes:
        with changed:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
            changed.notify_all()
            # Give a third cut-out the chance to start beside this one, were it let in.
            changed.wait_for(lambda: busy[0] > 2, timeout=0.2)
        try:
            return real(*args, **kwargs)
        finally:
            with changed:
                busy[0] -= 1

    monkeypatch.setattr(service_module, "cutout_png", tracked)
    emu = emulator_factory()
    with api_client(emu) as client:
        urls = [upload(client, png_bytes(keyed_image(key=(0, 10 * n, 0)))) for n in range(12)]
        ids = [client.post(SUBMIT, json={"image": u}).json()["data"]["id"] for u in urls]
        assert {wait_done(client, i, timeout=30)["status"] for i in ids} == {"completed"}
    assert most[0] == 2


def test_stopping_drops_the_cut_outs_still_queued(monkeypatch: pytest.MonkeyPatch,
                                                  keyed_image: Callable[..., Image.Image]) -> None:
    monkeypatch.setattr(service_module.os, "cpu_count", lambda: 1)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []
    real = service_module.cutout_png

    def blocking(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "cutout_png", blocking)
    emu = Emulator(delay=600).start()
    try:
        with api_client(emu) as client:
            for n in range(3):
                url = upload(client, png_bytes(keyed_image(key=(0, 50 * n, 0))))
                client.post(SUBMIT, json={"image": url})
        assert entered.wait(10)
    finally:
        stopper = threading.Thread(target=emu.stop)
        stopper.start()
        assert emu._service._stopped.wait(10)  # stopping has begun
        release.set()
        stopper.join(30)
    assert not stopper.is_alive()
    assert len(calls) == 1  # the two queued behind the first were not made
