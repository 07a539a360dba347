"""The WaveSpeed client's exact edge cases, on httpx.MockTransport (no sockets, no waiting).

A ``Service`` plays the API: each route answers from a queue (the last item
repeats), items being responses, exceptions to raise, or callables. Time is a
``FakeClock`` whose ``sleep`` records the delay and moves the clock on.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from bgremove.config import PollPolicy, RetryPolicy, Timeouts, WaveSpeedConfig
from bgremove.contract import CancelToken
from bgremove.errors import (
    AccountSuspendedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CancelledError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceConnectionError,
    ServiceError,
    ServiceTimeoutError,
    SubmitUncertainError,
    TaskFailedError,
)
from bgremove.wavespeed import CallContext, Prediction, WaveSpeedClient

KEY = "wsk-live-SECRET-7f3a9c0e5b"
BASE = "https://api.wavespeed.test"
SUBMIT = "/api/v3/wavespeed-ai/image-background-remover"
OUTPUT_URL = "https://cdn.wavespeed.test/outputs/t1.png"
PUT_URL = "https://storage.wavespeed.test/put/abc?sig=xyz"
IMAGE_URL = "https://cdn.wavespeed.test/media/in.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
WALL = 1_700_000_000.0


def envelope(data: Any, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def prediction(status: str = "completed", task_id: str = "t1", **extra: Any) -> dict[str, Any]:
    outputs = [OUTPUT_URL] if status == "completed" else []
    return {"id": task_id, "model": "wavespeed-ai/image-background-remover", "status": status,
            "outputs": extra.pop("outputs", outputs), "error": extra.pop("error", ""),
            "urls": {"get": f"{BASE}/api/v3/predictions/{task_id}/result"}, **extra}


def ok(data: Any, **kwargs: Any) -> httpx.Response:
    return httpx.Response(200, json=envelope(data), **kwargs)


def err(status: int, message: str = "something went wrong", data: Any = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message, "data": data},
                          headers=headers)


TICKET = ok({"upload": {"method": "PUT", "url": PUT_URL,
                        "headers": {"Content-Type": "image/png", "x-amz-meta-k": "v"}},
             "download_url": IMAGE_URL})


class Service:
    """A scripted WaveSpeed API behind httpx.MockTransport."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, list[Any]] = {
            "ticket": [TICKET],
            "put": [httpx.Response(200)],
            "binary": [ok({"type": "image", "download_url": IMAGE_URL, "filename": "in.png",
                           "size": 3})],
            "submit": [ok(prediction("completed"))],
            "result": [ok(prediction("completed"))],
            "download": [httpx.Response(200, content=PNG,
                                        headers={"Content-Type": "image/png"})],
            "balance": [ok({"balance": 12.5})],
        }
        self.hooks: dict[str, Callable[[httpx.Request], None]] = {}

    def on(self, route: str, *items: Any) -> Service:
        self.routes[route] = list(items)
        return self

    def route_of(self, request: httpx.Request) -> str:
        path, method = request.url.path, request.method
        if method == "PUT" and request.url.host == "storage.wavespeed.test":
            return "put"
        if request.url.host == "cdn.wavespeed.test" or path.startswith("/files/"):
            return "download"
        routes = {("POST", "/api/v3/media/uploads"): "ticket",
                  ("POST", "/api/v3/media/upload/binary"): "binary",
                  ("POST", SUBMIT): "submit", ("GET", "/api/v3/balance"): "balance"}
        if (method, path) in routes:
            return routes[(method, path)]
        if method == "GET" and path.startswith("/api/v3/predictions/"):
            return "result"
        raise AssertionError(f"unexpected request {method} {request.url}")

    def handler(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        route = self.route_of(request)
        if route in self.hooks:
            self.hooks[route](request)
        queue = self.routes[route]
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            result: httpx.Response = item(request)
            return result
        assert isinstance(item, httpx.Response)
        # a fresh copy each time, so a repeated item can be read again
        return httpx.Response(item.status_code, headers=item.headers, content=item.content)

    def count(self, route: str) -> int:
        return sum(1 for r in self.requests if self.route_of(r) == route)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_config(**changes: Any) -> WaveSpeedConfig:
    timeouts = dataclasses.replace(Timeouts(), **changes.pop("timeouts", {}))
    retry = dataclasses.replace(RetryPolicy(), **changes.pop("retry", {}))
    poll = dataclasses.replace(PollPolicy(), **changes.pop("poll", {}))
    return dataclasses.replace(WaveSpeedConfig(api_key=KEY, base_url=BASE), timeouts=timeouts,
                               retry=retry, poll=poll, **changes)


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(service: Service, clock: FakeClock) -> Any:
    clients: list[tuple[WaveSpeedClient, httpx.Client]] = []

    def make(**changes: Any) -> WaveSpeedClient:
        http = httpx.Client(transport=httpx.MockTransport(service.handler))
        client = WaveSpeedClient(make_config(**changes), http=http, sleep=clock.sleep,
                                 clock=clock, wall_clock=lambda: WALL, rand=lambda: 0.5)
        clients.append((client, http))
        return client

    yield make
    for client, http in clients:
        client.close()
        http.close()


@pytest.fixture
def client(make_client: Any) -> WaveSpeedClient:
    return make_client()  # type: ignore[no-any-return]


def submit_count(service: Service) -> int:
    return service.count("submit")


# -- headers, the happy path, request counts ----------------------------------------------

def test_sync_flow_sends_four_requests_with_the_right_headers(
        client: WaveSpeedClient, service: Service) -> None:
    ctx = client.context()
    url = client.upload(b"img", "in.png", "image/png", ctx=ctx)
    result = client.run(url, sync=True, ctx=ctx)
    data = client.download_output(result, ctx=ctx)
    assert data == PNG and result.id == "t1" and result.status == "completed"
    assert [service.route_of(r) for r in service.requests] == [
        "ticket", "put", "submit", "download"]
    assert ctx.requests == 4
    ticket, put, submit, download = service.requests
    for api_call in (ticket, submit):
        assert api_call.headers["Authorization"] == f"Bearer {KEY}"
        assert api_call.headers["User-Agent"].startswith("bgremove/")
        assert api_call.headers["X-Client-Name"] == "bgremove"
        assert api_call.headers["X-Client-Version"]
        assert api_call.headers["X-Client-OS"]
    assert json.loads(ticket.content) == {"filename": "in.png", "size": 3,
                                          "content_type": "image/png"}
    assert json.loads(submit.content) == {"image": IMAGE_URL, "enable_base64_output": False,
                                          "enable_sync_mode": True}
    # the PUT carries exactly the ticket's headers: no key to the storage host
    assert put.content == b"img"
    sent = {k.lower() for k in put.headers}
    assert {"content-type", "x-amz-meta-k"} <= sent
    assert sent - {"content-type", "x-amz-meta-k", "host", "content-length"} == set()
    # an output on another host gets no key either
    assert "authorization" not in download.headers
    assert client.stats.snapshot()["requests"] == 4
    assert client.stats.snapshot()["bytes_sent"] >= 3
    assert client.stats.snapshot()["bytes_received"] >= len(PNG)


def test_poll_mode_submits_async_and_polls(client: WaveSpeedClient, service: Service,
                                           clock: FakeClock) -> None:
    service.on("submit", ok(prediction("created")))
    service.on("result", ok(prediction("processing")), ok(prediction("processing")),
               ok(prediction("completed")))
    seen: list[str] = []
    service.hooks["result"] = lambda r: seen.append("poll")
    result = client.run(IMAGE_URL, sync=False, on_task=lambda tid: seen.append(f"task {tid}"))
    assert result.status == "completed"
    assert seen == ["task t1", "poll", "poll", "poll"]  # the id is known before any wait
    assert json.loads(service.requests[0].content)["enable_sync_mode"] is False
    # waits: poll.initial before the first poll, then x factor up to max
    assert clock.sleeps == pytest.approx([0.5, 0.75, 1.125])


def test_first_poll_follows_the_typical_task_time(client: WaveSpeedClient, service: Service,
                                                   clock: FakeClock) -> None:
    service.on("submit", ok(prediction("created")))
    service.on("result", ok(prediction("completed", timings={"inference": 300})))
    client.run(IMAGE_URL, sync=False)
    assert clock.sleeps == pytest.approx([0.5])  # nothing learned yet: poll.initial
    clock.sleeps.clear()
    client.run(IMAGE_URL, sync=False)
    # the service's 300 ms after the submit was sent, plus a small margin (3% + 10 ms)
    assert clock.sleeps == pytest.approx([0.319])
    service.on("result", ok(prediction("processing")), ok(prediction("processing")),
               ok(prediction("completed", timings={"inference": 300})))
    clock.sleeps.clear()
    client.run(IMAGE_URL, sync=False)
    # a miss: one short step (10% of the typical time, at least 0.05 s), then the schedule
    assert clock.sleeps == pytest.approx([0.319, 0.05, 0.5])


def test_poll_intervals_grow_to_the_cap(make_client: Any, service: Service,
                                        clock: FakeClock) -> None:
    client = make_client(poll={"initial": 1.0, "factor": 2.0, "max": 3.0})
    service.on("result", *[ok(prediction("processing"))] * 5, ok(prediction("completed")))
    client.wait("t1", poll_first=True)
    assert clock.sleeps == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.0])
    assert service.count("result") == 6


def test_each_call_kind_gets_its_named_timeout(make_client: Any, service: Service) -> None:
    client = make_client(timeouts={"connect": 3.0, "upload": 11.0, "submit": 12.0,
                                   "sync_wait": 13.0, "result": 14.0, "download": 15.0})
    ctx = client.context()
    client.upload(b"img", "in.png", "image/png", ctx=ctx)
    client.submit(IMAGE_URL, sync=True, ctx=ctx)
    service.on("submit", ok(prediction("created")))
    client.submit(IMAGE_URL, sync=False, ctx=ctx)
    client.get_result("t1", ctx=ctx)
    client.download_output(Prediction("t1", "completed", (OUTPUT_URL,)), ctx=ctx)
    reads = [(service.route_of(r), r.extensions["timeout"]["read"],
              r.extensions["timeout"]["connect"]) for r in service.requests]
    assert reads == [("ticket", 11.0, 3.0), ("put", 11.0, 3.0), ("submit", 13.0, 3.0),
                     ("submit", 12.0, 3.0), ("result", 14.0, 3.0), ("download", 15.0, 3.0)]


def test_timeouts_are_clamped_to_the_overall_deadline(make_client: Any, service: Service,
                                                      clock: FakeClock) -> None:
    client = make_client(timeouts={"overall": 100.0, "sync_wait": 300.0})
    ctx = client.context()
    clock.now += 60.0
    client.submit(IMAGE_URL, sync=True, ctx=ctx)
    assert service.requests[-1].extensions["timeout"]["read"] == pytest.approx(40.0)


def test_balance(client: WaveSpeedClient, service: Service) -> None:
    assert client.balance() == 12.5
    assert service.requests[0].headers["Authorization"] == f"Bearer {KEY}"


# -- uploads ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [404, 405, 501])
def test_upload_falls_back_to_binary_when_direct_is_unavailable(
        client: WaveSpeedClient, service: Service, status: int) -> None:
    service.on("ticket", err(status, "no such route"))
    assert client.upload(b"abc", "in.png", "image/png") == IMAGE_URL
    assert [service.route_of(r) for r in service.requests] == ["ticket", "binary"]
    binary = service.requests[1]
    assert binary.headers["Authorization"] == f"Bearer {KEY}"
    assert b'name="file"; filename="in.png"' in binary.content and b"abc" in binary.content
    # the next upload goes straight to the binary endpoint
    client.upload(b"abc", "in.png", "image/png")
    assert [service.route_of(r) for r in service.requests[2:]] == ["binary"]


@pytest.mark.parametrize("ticket", [
    ok({"upload": {"method": "POST", "url": PUT_URL}, "download_url": IMAGE_URL}),
    ok({"upload": {"method": "PUT"}, "download_url": IMAGE_URL}),
    ok({"upload": {"method": "PUT", "url": PUT_URL}}),
    ok({"download_url": IMAGE_URL}),
    httpx.Response(200, content=b"<html>gateway</html>"),
], ids=["not-put", "no-url", "no-download-url", "no-upload", "not-json"])
def test_upload_falls_back_on_a_malformed_ticket(client: WaveSpeedClient, service: Service,
                                                 ticket: httpx.Response) -> None:
    service.on("ticket", ticket)
    assert client.upload(b"abc", "in.png", "image/png") == IMAGE_URL
    assert [service.route_of(r) for r in service.requests] == ["ticket", "binary"]


def test_upload_put_refused_by_storage_falls_back_to_binary(
        client: WaveSpeedClient, service: Service) -> None:
    service.on("put", httpx.Response(403, content=b"<Error>SignatureDoesNotMatch</Error>"))
    assert client.upload(b"abc", "in.png", "image/png") == IMAGE_URL
    assert [service.route_of(r) for r in service.requests] == ["ticket", "put", "binary"]


def test_uploads_are_retried(client: WaveSpeedClient, service: Service,
                             clock: FakeClock) -> None:
    service.on("ticket", err(503), TICKET)
    service.on("put", httpx.ReadTimeout("slow", request=httpx.Request("PUT", PUT_URL)),
               httpx.Response(200))
    assert client.upload(b"abc", "in.png", "image/png") == IMAGE_URL
    assert [service.route_of(r) for r in service.requests] == [
        "ticket", "ticket", "put", "put"]
    assert client.stats.snapshot()["retries"] == 2
    assert len(clock.sleeps) == 2


def test_upload_too_large_is_not_retried(client: WaveSpeedClient, service: Service) -> None:
    service.on("ticket", err(413, "file too large"))
    with pytest.raises(PayloadTooLargeError) as info:
        client.upload(b"abc", "in.png", "image/png")
    assert service.count("ticket") == 1
    assert "max_upload_bytes" in str(info.value)


# -- retries and Retry-After -----------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "2"}, 2.0),
    ({"Retry-After": "0.25"}, 0.25),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After": formatdate(WALL + 7, usegmt=True)}, 7.0),
    ({}, 0.25),  # no header: backoff_initial 0.5 x 2**0 x jitter 0.5
], ids=["seconds", "fraction", "ms", "http-date", "backoff"])
def test_retry_after_is_honoured(client: WaveSpeedClient, service: Service, clock: FakeClock,
                                 headers: dict[str, str], expected: float) -> None:
    service.on("result", err(429, "slow down", headers=headers), ok(prediction("completed")))
    assert client.get_result("t1").status == "completed"
    assert clock.sleeps == [pytest.approx(expected)]


def test_backoff_doubles_with_full_jitter(client: WaveSpeedClient, service: Service,
                                         clock: FakeClock) -> None:
    service.on("result", err(500), err(502), err(503), httpx.ConnectError("refused"),
               ok(prediction("completed")))
    client.get_result("t1")
    assert clock.sleeps == pytest.approx([0.25, 0.5, 1.0, 2.0])  # 0.5 * 2**n * 0.5


def test_retry_after_over_the_cap_gives_up_and_reports_it(make_client: Any, service: Service,
                                                          clock: FakeClock) -> None:
    client = make_client(retry={"retry_after_max": 30.0})
    service.on("result", err(429, "slow down", headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimitError) as info:
        client.get_result("t1")
    assert clock.sleeps == []
    assert info.value.retry_after == 3600.0
    assert "retry_after_max" in str(info.value)
    assert info.value.transient


def test_attempts_are_capped(make_client: Any, service: Service, clock: FakeClock) -> None:
    client = make_client(retry={"max_attempts": 3})
    service.on("result", err(502, "bad gateway", headers={"x-request-id": "req-9"}))
    with pytest.raises(ServerError) as info:
        client.get_result("t1")
    assert service.count("result") == 3 and len(clock.sleeps) == 2
    assert info.value.status_code == 502 and info.value.request_id == "req-9"
    assert "gave up after 3 attempts" in str(info.value)


def test_connection_errors_are_retried_then_mapped(make_client: Any, service: Service) -> None:
    client = make_client(retry={"max_attempts": 2})
    service.on("balance", httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(ServiceConnectionError) as info:
        client.balance()
    assert service.count("balance") == 2
    assert "Connection refused" in str(info.value) and "network" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_a_retry_never_sleeps_past_the_deadline(make_client: Any, service: Service,
                                                clock: FakeClock) -> None:
    client = make_client(timeouts={"overall": 10.0})
    service.on("result", err(503, headers={"Retry-After": "20"}))
    with pytest.raises(ServerError) as info:
        client.get_result("t1")
    assert clock.sleeps == [] and service.count("result") == 1
    assert "overall" in str(info.value)


# -- the submit policy -------------------------------------------------------------------

def test_sync_504_with_task_id_is_recovered_by_polling(client: WaveSpeedClient,
                                                       service: Service) -> None:
    service.on("submit", err(504, "gateway timeout", data={"id": "t1"}))
    service.on("result", ok(prediction("processing")), ok(prediction("completed")))
    tasks: list[str] = []
    result = client.run(IMAGE_URL, sync=True, on_task=tasks.append)
    assert result.status == "completed" and result.outputs == (OUTPUT_URL,)
    assert tasks == ["t1"]
    assert submit_count(service) == 1 and service.count("result") == 2


@pytest.mark.parametrize("data", [
    prediction("processing", code=5004, error="Sync mode timed out after 60s"),
    prediction("processing", error="sync wait timed out"),
    {**prediction("failed", code=5004), "error": "Sync mode timed out"},
], ids=["code-5004", "timed-out-text", "failed-5004"])
def test_sync_timeout_inside_a_200_is_recovered_by_polling(
        client: WaveSpeedClient, service: Service, data: dict[str, Any]) -> None:
    service.on("submit", ok(data))
    result = client.run(IMAGE_URL, sync=True)
    assert result.status == "completed"
    assert submit_count(service) == 1 and service.count("result") == 1


def test_sync_504_without_task_id_is_uncertain_and_sent_once(
        client: WaveSpeedClient, service: Service, clock: FakeClock) -> None:
    service.on("submit", err(504, "gateway timeout"))
    with pytest.raises(SubmitUncertainError) as info:
        client.run(IMAGE_URL, sync=True)
    assert submit_count(service) == 1 and clock.sleeps == []
    message = str(info.value)
    assert "may have been created and billed" in message and "dashboard" in message
    assert not info.value.transient


@pytest.mark.parametrize("failure", [
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("[Errno 104] Connection reset by peer"),
    httpx.WriteTimeout("timed out"),
    httpx.Response(200, content=b'{"code": 200, "data": {"id": '),
    httpx.Response(200, json=envelope({"status": "created"})),
    httpx.Response(200, content=b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    httpx.Response(200, content=b'{"code": 200, "data": {"id": "t"}, "x": "'
                   + b"a" * (5 << 20) + b'"}'),
    httpx.Response(200, content=b"<html>502 Bad Gateway</html>"),
    httpx.Response(200, content=b"\xff\xfe{}"),
], ids=["read-timeout", "disconnected", "reset", "write-timeout", "truncated-json", "no-id",
        "nested-too-deep", "too-large", "html", "not-utf8"])
@pytest.mark.parametrize("sync", [True, False])
def test_submit_answer_lost_is_uncertain_and_sent_once(
        client: WaveSpeedClient, service: Service, clock: FakeClock, failure: Any,
        sync: bool) -> None:
    service.on("submit", failure)
    with pytest.raises(SubmitUncertainError) as info:
        client.submit(IMAGE_URL, sync=sync)
    assert submit_count(service) == 1 and clock.sleeps == []
    assert "billed" in str(info.value)


@pytest.mark.parametrize("failure", [
    httpx.ConnectError("[Errno 111] Connection refused"),
    httpx.ConnectTimeout("timed out"),
    httpx.PoolTimeout("no connection free"),
    err(429, "rate limited", headers={"Retry-After": "1"}),
    err(500, "internal"), err(503, "unavailable"), err(408, "request timeout"),
])
def test_submit_is_retried_when_no_task_can_exist(client: WaveSpeedClient, service: Service,
                                                  failure: Any) -> None:
    service.on("submit", failure, ok(prediction("completed")))
    assert client.submit(IMAGE_URL, sync=True).status == "completed"
    assert submit_count(service) == 2


@pytest.mark.parametrize("sync", [True, False])
def test_a_submit_answer_no_parser_foresaw_is_uncertain(
        client: WaveSpeedClient, service: Service, monkeypatch: pytest.MonkeyPatch,
        sync: bool) -> None:
    import bgremove.wavespeed._client as client_module

    def surprised(response: httpx.Response, sync: bool) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(client_module, "parse_submit", surprised)
    with pytest.raises(SubmitUncertainError, match="could not be read"):
        client.submit(IMAGE_URL, sync=sync)
    assert submit_count(service) == 1


@pytest.mark.parametrize("status, uncertain", [(500, True), (502, True), (401, False)])
def test_a_submit_error_answer_too_large_to_read(client: WaveSpeedClient, service: Service,
                                                 status: int, uncertain: bool) -> None:
    # it might have named a task (a 5xx can): uncertain; a 401 created none whatever it says
    service.on("submit", httpx.Response(status, content=b"x" * (5 << 20)))
    expected = SubmitUncertainError if uncertain else AuthenticationError
    with pytest.raises(expected):
        client.submit(IMAGE_URL, sync=True)
    assert submit_count(service) == 1


def test_nested_json_in_a_result_is_a_protocol_error_not_a_crash(
        client: WaveSpeedClient, service: Service) -> None:
    service.on("result", httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(ProtocolError, match="not JSON"):
        client.get_result("t1")


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_without_id_is_uncertain_not_retried(
        client: WaveSpeedClient, service: Service, status: int) -> None:
    # The gateway gave up; the service behind it may have created (and billed) the task.
    service.on("submit", err(status, "gateway"), ok(prediction("created")))
    with pytest.raises(SubmitUncertainError, match=f"HTTP {status}"):
        client.submit(IMAGE_URL, sync=False)
    assert submit_count(service) == 1


def test_service_unavailable_without_id_is_retried(client: WaveSpeedClient,
                                                   service: Service) -> None:
    service.on("submit", err(503, "unavailable"), ok(prediction("created")))
    assert client.submit(IMAGE_URL, sync=False).status == "created"
    assert submit_count(service) == 2


def test_error_answer_naming_a_task_is_polled_not_resubmitted(
        client: WaveSpeedClient, service: Service) -> None:
    service.on("submit", err(500, "internal", data={"id": "t7"}))
    service.on("result", ok(prediction("completed", task_id="t7")))
    result = client.run(IMAGE_URL, sync=False)
    assert result.id == "t7" and submit_count(service) == 1
    assert service.requests[-1].url.path == "/api/v3/predictions/t7/result"


def test_submit_bad_request_is_not_retried(client: WaveSpeedClient, service: Service) -> None:
    service.on("submit", err(400, "image: invalid url", data={"id": "t1"}))
    with pytest.raises(BadRequestError) as info:
        client.submit(IMAGE_URL, sync=True)
    assert submit_count(service) == 1 and "image: invalid url" in str(info.value)


def test_submit_rate_limit_exhausted_raises_rate_limit(make_client: Any,
                                                       service: Service) -> None:
    client = make_client(retry={"max_attempts": 2})
    service.on("submit", err(429, "too many requests"))
    with pytest.raises(RateLimitError):
        client.submit(IMAGE_URL, sync=True)
    assert submit_count(service) == 2


# -- tasks -----------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "transient", "words"), [
    (1200, False, "moderation"), (1401, False, "invalid"), (1402, False, "fetch"),
    (1403, False, "failed"), (5000, True, "internal"), (5003, True, "unavailable"),
    (5004, True, "timed out"), (None, False, "failed"),
])
def test_failed_tasks_map_to_task_failed(client: WaveSpeedClient, service: Service,
                                         code: int | None, transient: bool, words: str) -> None:
    service.on("submit", ok(prediction("created")))
    service.on("result", ok(prediction("failed", code=code, error="model said no")))
    with pytest.raises(TaskFailedError) as info:
        client.run(IMAGE_URL, sync=False)
    error = info.value
    assert error.code == code and error.transient is transient and error.task_id == "t1"
    assert words in str(error) and "model said no" in str(error) and error.hint


@pytest.mark.parametrize("status", ["cancelled", "timeout", "deleted"])
def test_other_terminal_statuses_fail(client: WaveSpeedClient, service: Service,
                                      status: str) -> None:
    service.on("result", ok(prediction(status)))
    with pytest.raises(TaskFailedError) as info:
        client.wait("t1")
    assert info.value.status == status
    assert service.count("result") == 1


def test_sync_failed_task_raises_at_submit(client: WaveSpeedClient, service: Service) -> None:
    service.on("submit", ok(prediction("failed", code=1200, error="nsfw")))
    with pytest.raises(TaskFailedError) as info:
        client.run(IMAGE_URL, sync=True)
    assert info.value.code == 1200 and not info.value.transient
    assert service.count("result") == 0


# -- downloads and outputs -------------------------------------------------------------------

def test_truncated_download_is_a_protocol_error(make_client: Any, service: Service) -> None:
    client = make_client(retry={"max_attempts": 2})
    service.on("download", httpx.Response(200, content=PNG[:100],
                                          headers={"Content-Length": str(len(PNG))}))
    with pytest.raises(ProtocolError) as info:
        client.download_output(Prediction("t1", "completed", (OUTPUT_URL,)))
    assert f"got 100 of {len(PNG)} bytes" in str(info.value)
    assert info.value.task_id == "t1" and service.count("download") == 2


def test_truncated_download_recovers_on_retry(client: WaveSpeedClient, service: Service) -> None:
    service.on("download", httpx.Response(200, content=PNG[:100],
                                          headers={"Content-Length": str(len(PNG))}),
               httpx.Response(200, content=PNG))
    assert client.download_output(Prediction("t1", "completed", (OUTPUT_URL,))) == PNG


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_output_address_is_that_file_s_error_not_the_account_s(
        make_client: Any, service: Service, status: int) -> None:
    # storage answers 403 for an expired or deleted object: never a refused key or account
    client = make_client(retry={"max_attempts": 1})
    service.on("download", httpx.Response(status, content=b"<Error>AccessDenied</Error>"))
    with pytest.raises(APIStatusError) as info:
        client.download_output(Prediction("t1", "completed", (OUTPUT_URL,)))
    assert not isinstance(info.value, (AuthenticationError, AccountSuspendedError))
    assert f"refused the download (HTTP {status})" in str(info.value)
    assert info.value.task_id == "t1" and "submit the image again" in (info.value.hint or "")


def test_download_from_the_api_origin_carries_the_key(client: WaveSpeedClient,
                                                      service: Service) -> None:
    url = f"{BASE}/files/t1.png"
    assert client.download_output(Prediction("t1", "completed", (url,))) == PNG
    assert service.requests[0].headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("output", [
    base64.b64encode(PNG).decode(),
    "data:image/png;base64," + base64.b64encode(PNG).decode(),
    "  " + base64.b64encode(PNG).decode() + "\n",
], ids=["bare", "data-uri", "whitespace"])
def test_base64_outputs_are_decoded(client: WaveSpeedClient, service: Service,
                                    output: str) -> None:
    assert client.download_output(Prediction("t1", "completed", (output,))) == PNG
    assert service.requests == []


def test_base64_output_mode_is_requested(make_client: Any, service: Service) -> None:
    client = make_client(base64_output=True)
    service.on("submit", ok(prediction("completed", outputs=[base64.b64encode(PNG).decode()])))
    result = client.run(IMAGE_URL, sync=True)
    assert json.loads(service.requests[0].content)["enable_base64_output"] is True
    assert client.download_output(result) == PNG
    assert len(service.requests) == 1


@pytest.mark.parametrize("output", ["not base64 at all!", "ftp://x/y.png"])
def test_bad_outputs_are_protocol_errors(client: WaveSpeedClient, output: str) -> None:
    with pytest.raises(ProtocolError, match="neither a URL nor valid base64"):
        client.download_output(Prediction("t1", "completed", (output,)))


@pytest.mark.parametrize("answer", [
    httpx.Response(200, content=b"<html>oops</html>"),
    httpx.Response(200, json={"code": 200, "message": "success"}),
    httpx.Response(200, json=envelope({"id": "t1"})),
    httpx.Response(200, json=envelope({"id": "t1", "status": "completed", "outputs": []})),
    httpx.Response(200, json=envelope({"id": "t1", "status": "completed", "outputs": "x"})),
], ids=["html", "no-data", "no-status", "no-outputs", "outputs-not-list"])
def test_malformed_results_are_retried_then_protocol_errors(
        make_client: Any, service: Service, answer: httpx.Response) -> None:
    client = make_client(retry={"max_attempts": 2})
    service.on("result", answer)
    with pytest.raises(ProtocolError) as info:
        client.get_result("t1")
    assert service.count("result") == 2
    assert info.value.hint


# -- the status table ----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cls", "next_step"), [
    (400, BadRequestError, "will not help"),
    (401, AuthenticationError, "WAVESPEED_API_KEY"),
    (403, AccountSuspendedError, "support"),
    (404, APIStatusError, "base_url"),
    (413, PayloadTooLargeError, "max_upload"),
    (429, RateLimitError, "wavespeed.account_level (or --account-level)"),
    (500, ServerError, "try again later"),
    (502, ServerError, "try again later"),
    (503, ServerError, "try again later"),
    (418, APIStatusError, "request id"),
    (408, ServiceTimeoutError, "timeouts"),
])
def test_every_status_maps_to_its_class_with_a_next_step(
        make_client: Any, service: Service, status: int, cls: type[ServiceError],
        next_step: str) -> None:
    client = make_client(retry={"max_attempts": 1})
    service.on("balance", err(status, "server words", headers={"x-request-id": "req-42"}))
    with pytest.raises(cls) as info:
        client.balance()
    error = info.value
    assert type(error) is cls
    assert next_step in str(error)
    if isinstance(error, APIStatusError):
        assert error.status_code == status and error.request_id == "req-42"
        assert f"HTTP {status}" in str(error) and "server words" in str(error)
        assert "req-42" in str(error)


def test_auth_error_mentions_the_top_up(make_client: Any, service: Service) -> None:
    client = make_client()
    service.on("submit", err(401, "Unauthorized"))
    with pytest.raises(AuthenticationError) as info:
        client.submit(IMAGE_URL, sync=True)
    assert "top-up" in str(info.value) and not info.value.transient
    assert submit_count(service) == 1


# -- the key never leaks ------------------------------------------------------------------

def test_key_never_appears_in_errors_or_logs(make_client: Any, service: Service,
                                            caplog: pytest.LogCaptureFixture) -> None:
    for name in (None, "httpx", "httpcore"):  # another test may have quietened httpx
        caplog.set_level(logging.DEBUG, logger=name)
    client = make_client(retry={"max_attempts": 2})
    leaky = f"Authorization: Bearer {KEY} for {BASE}/api/v3/balance?key={KEY}"
    errors: list[BaseException] = []
    service.on("balance", httpx.ConnectError(leaky))
    service.on("submit", httpx.ReadTimeout(leaky))
    service.on("result", err(500, f"bad key {KEY}", headers={"x-request-id": KEY}))
    service.on("download", httpx.RemoteProtocolError(leaky))
    calls: list[Callable[[], Any]] = [
        client.balance, lambda: client.submit(IMAGE_URL, sync=True),
        lambda: client.get_result("t1"),
        lambda: client.download_output(Prediction("t1", "completed", (OUTPUT_URL,))),
    ]
    for call in calls:
        with pytest.raises(ServiceError) as info:
            call()
        errors.append(info.value)
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert KEY not in str(chain) and KEY not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    assert "[redacted]" in str(errors[0])  # the useful rest of the text is kept
    assert KEY not in repr(client) and KEY not in caplog.text
    assert caplog.records  # retries were logged, without the key


# -- deadline and cancel ---------------------------------------------------------------------

def test_overall_deadline_stops_polling(make_client: Any, service: Service,
                                        clock: FakeClock) -> None:
    client = make_client(timeouts={"overall": 30.0}, poll={"initial": 1.0, "factor": 2.0,
                                                           "max": 8.0})
    service.on("submit", ok(prediction("created")))
    service.on("result", ok(prediction("processing")))
    with pytest.raises(ServiceTimeoutError) as info:
        client.run(IMAGE_URL, sync=False)
    assert info.value.task_id == "t1" and "t1" in str(info.value)
    assert "timeouts.overall" in str(info.value)
    assert sum(clock.sleeps) == pytest.approx(30.0)
    assert service.count("result") == 5  # at 1, 3, 7, 15, 23 s; the deadline at 30 s


def test_deadline_hit_during_a_request_is_a_timeout_with_the_task(
        make_client: Any, service: Service, clock: FakeClock) -> None:
    client = make_client(timeouts={"overall": 20.0, "result": 30.0})

    def slow(request: httpx.Request) -> httpx.Response:
        clock.now += request.extensions["timeout"]["read"]
        raise httpx.ReadTimeout("timed out", request=request)

    service.on("result", slow)
    with pytest.raises(ServiceTimeoutError) as info:
        client.wait("t9")
    assert info.value.task_id == "t9" and "overall" in str(info.value)
    assert service.count("result") == 1


def test_cancel_during_polling(make_client: Any, service: Service) -> None:
    client = make_client(poll={"initial": 30.0, "max": 30.0})
    token = CancelToken()
    service.on("result", ok(prediction("processing")))
    service.hooks["result"] = lambda r: token.cancel()
    started = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        started.set()
        try:
            client.wait("t1", ctx=client.context(token))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=5.0)  # the 30 s poll interval is cut short by the token
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)
    assert service.count("result") == 1


def test_cancelled_before_a_call_sends_nothing(client: WaveSpeedClient,
                                               service: Service) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        client.upload(b"x", "in.png", "image/png", ctx=client.context(token))
    assert service.requests == []


def test_context_counts_requests_per_image(client: WaveSpeedClient, service: Service) -> None:
    service.on("result", err(503), ok(prediction("completed")))
    first, second = client.context(), client.context()
    client.get_result("t1", ctx=first)
    client.get_result("t1", ctx=second)
    assert (first.requests, second.requests) == (2, 1)
    assert isinstance(first, CallContext)


def test_pooled_client_is_built_with_tls_verification_and_closed() -> None:
    client = WaveSpeedClient(make_config(), max_connections=32)
    try:
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections >= 32 and pool._max_keepalive_connections >= 32
        assert pool._ssl_context.verify_mode.name == "CERT_REQUIRED"
    finally:
        client.close()
    assert client._http.is_closed


@pytest.mark.parametrize("status", [404, 410])
def test_unknown_task_is_task_failed_not_found(client: WaveSpeedClient, service: Service,
                                               status: int) -> None:
    service.on("result", err(status, "Prediction t1 not found"))
    with pytest.raises(TaskFailedError) as info:
        client.wait("t1")
    error = info.value
    assert error.status == "not_found" and error.task_id == "t1" and not error.transient
    assert "submit the image again" in str(error)
    assert service.count("result") == 1  # a 404 is not retried


@pytest.mark.parametrize("allowed", [False, True])
def test_a_plain_http_output_on_another_host_is_refused_unless_allowed(
        make_client: Any, service: Service, allowed: bool) -> None:
    client = make_client(allow_insecure_http=allowed)
    plain = "http://cdn.wavespeed.test/out/x.png"
    prediction = Prediction("t1", "completed", (plain,))
    if allowed:
        assert client.download_output(prediction) == PNG
    else:
        with pytest.raises(ProtocolError,
                           match=r"plain-http address on cdn\.wavespeed\.test") as info:
            client.download_output(prediction)
        assert not info.value.transient and service.count("download") == 0
