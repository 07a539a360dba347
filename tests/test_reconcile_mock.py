"""Finding the task of a lost submit, case by case, on httpx.MockTransport with a fake clock.

``Account`` plays the service: uploads, tasks that run for a while, the
prediction list (with or without ``input``, with a Date header), and a
submit whose answer is lost in the ways a network loses one. Every test
counts the tasks the account holds: never more than one per image.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from conftest import make_keyed_image

from bgremove.config import PollPolicy, ReconcilePolicy, RetryPolicy, WaveSpeedConfig
from bgremove.emulator import keyout_alpha
from bgremove.emulator.model import cutout_png
from bgremove.errors import SubmitUncertainError
from bgremove.imaging import cutout_matches
from bgremove.wavespeed import WaveSpeedClient

KEY = "wsk-live-SECRET-reconcile-1"
BASE = "https://api.wavespeed.test"
CDN = "https://cdn.wavespeed.test"
MODEL = "wavespeed-ai/image-background-remover"
WALL = 1_800_000_000.0


def png_of(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class Clock:
    """Monotonic time that moves only when the client sleeps; the wall clock follows it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.on_sleep: Callable[[], None] | None = None  # what else happens meanwhile

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()

    def wall(self) -> float:
        return WALL + self.now


@dataclass
class Task:
    id: str
    created: float  # the account's wall time
    image_url: str | None
    output: bytes | None  # None: the task fails
    ends: float  # clock time it finishes

    def prediction(self, now: float, *, with_input: bool, base64_output: bool) -> dict[str, Any]:
        done = now >= self.ends
        status = ("completed" if self.output else "failed") if done else "processing"
        outputs = []
        if done and self.output:
            outputs = [base64.b64encode(self.output).decode() if base64_output
                       else f"{CDN}/outputs/{self.id}.png"]
        data: dict[str, Any] = {"id": self.id, "model": MODEL, "status": status,
                                "outputs": outputs, "created_at": iso(self.created),
                                "error": "" if status != "failed" else "Task failed"}
        if with_input:
            data["input"] = {"image": self.image_url}
        return data


class Account:
    """A WaveSpeed account behind MockTransport."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.uploads: dict[str, bytes] = {}
        self.tasks: list[Task] = []
        self.submits: list[str] = []  # scripted outcomes, one per submit ("ok" when empty)
        self.list_input = False
        self.list_status: list[int] = []  # statuses answered by the list before it works
        self.date_header = True
        self.zero_hidden_colour = False
        self.run_for = 0.0  # seconds each task runs
        self.base64_output = False
        self.requests: list[str] = []
        self.broken_outputs: set[str] = set()  # task ids whose output download answers 404
        self.on_hold: Callable[[], None] = lambda: None  # a "hold" submit's answer waits on it

    # -- what a test sets up --------------------------------------------------------------

    def foreign_task(self, image: Any, *, ago: float = 1.0, status: str = "completed",
                     running_for: float = 0.0) -> Task:
        """A task someone else created (the web playground, another program)."""
        data = png_of(image)
        task = Task(uuid.uuid4().hex, self.clock.wall() - ago, f"{CDN}/media/foreign",
                    self._cutout(data) if status == "completed" else None,
                    self.clock.now + running_for)
        self.tasks.append(task)
        return task

    def count(self, route: str) -> int:
        return self.requests.count(route)

    def tasks_for(self, data: bytes) -> int:
        return sum(1 for t in self.tasks if t.image_url and self.uploads.get(t.image_url) == data)

    # -- the service ------------------------------------------------------------------------

    def _cutout(self, data: bytes) -> bytes:
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        out = Image.open(io.BytesIO(cutout_png(image, keyout_alpha(image)))).convert("RGBA")
        if self.zero_hidden_colour:
            clear = out.getchannel("A").point(lambda v: 255 if v == 0 else 0)
            out.paste((0, 0, 0, 0), mask=clear)
        return png_of(out)

    def _answer(self, status: int, data: Any, **headers: str) -> httpx.Response:
        if self.date_header:
            headers["Date"] = formatdate(self.clock.wall(), usegmt=True)
        return httpx.Response(status, json={"code": status, "message": "success" if status ==
                                            200 else "error", "data": data}, headers=headers)

    def handler(self, request: httpx.Request) -> httpx.Response:
        request.read()
        path, now = request.url.path, self.clock.now
        if path == "/api/v3/media/upload/binary":
            self.requests.append("upload")
            body = request.content
            start = body.index(b"\r\n\r\n") + 4
            data = body[start:body.rindex(b"\r\n--")]
            url = f"{CDN}/media/{uuid.uuid4().hex}/image.png"
            self.uploads[url] = data
            return self._answer(200, {"download_url": url})
        if path == "/api/v3/media/uploads":
            return self._answer(404, None)
        if path == f"/api/v3/{MODEL}":
            self.requests.append("submit")
            body = json.loads(request.content)
            outcome = self.submits.pop(0) if self.submits else "ok"
            if outcome == "drop_before":
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            data = self.uploads[body["image"]]
            task = Task(uuid.uuid4().hex, self.clock.wall(), body["image"], self._cutout(data),
                        now + self.run_for)
            self.tasks.append(task)
            if outcome == "drop":
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            if outcome == "hold":  # created; its answer on its way until the test lets it go
                self.on_hold()
            if outcome == "timeout":
                raise httpx.ReadTimeout("timed out")
            if outcome == "504":
                return httpx.Response(504, text="<html>Gateway Timeout</html>")
            return self._answer(200, task.prediction(now, with_input=False,
                                                     base64_output=self.base64_output))
        if path == "/api/v3/predictions" and request.method == "POST":
            self.requests.append("list")
            if self.list_status:
                return self._answer(self.list_status.pop(0), None)
            body = json.loads(request.content)
            after = datetime.fromisoformat(body["created_after"].replace("Z", "+00:00"))
            before = datetime.fromisoformat(body["created_before"].replace("Z", "+00:00"))
            chosen = [t for t in sorted(self.tasks, key=lambda t: -t.created)
                      if after.timestamp() <= t.created <= before.timestamp()]
            size, page = body["page_size"], body["page"]
            items = [t.prediction(now, with_input=self.list_input,
                                  base64_output=self.base64_output)
                     for t in chosen[(page - 1) * size:page * size]]
            return self._answer(200, {"page": page, "total": len(chosen), "items": items})
        if path.startswith("/api/v3/predictions/"):
            self.requests.append("result")
            task_id = path.split("/")[4]
            task = next(t for t in self.tasks if t.id == task_id)
            return self._answer(200, task.prediction(now, with_input=False,
                                                     base64_output=self.base64_output))
        if path.startswith("/outputs/"):
            self.requests.append("download")
            task = next(t for t in self.tasks if t.id == path.split("/")[2][:-4])
            if task.id in self.broken_outputs:
                return httpx.Response(404, text="not found")
            assert task.output is not None
            return httpx.Response(200, content=task.output)
        raise AssertionError(f"unexpected request {request.method} {request.url}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def account(clock: Clock) -> Account:
    return Account(clock)


@pytest.fixture
def make_client(account: Account, clock: Clock) -> Iterator[Any]:
    made: list[tuple[WaveSpeedClient, httpx.Client]] = []

    def make(skew: float = 0.0, **reconcile: Any) -> WaveSpeedClient:
        config = WaveSpeedConfig(
            api_key=KEY, base_url=BASE,
            retry=dataclasses.replace(RetryPolicy(), backoff_initial=0.5, backoff_max=5.0),
            poll=PollPolicy(initial=0.5, factor=1.5, max=2.0),
            reconcile=dataclasses.replace(ReconcilePolicy(), settle=3.0, **reconcile))
        http = httpx.Client(transport=httpx.MockTransport(account.handler))
        client = WaveSpeedClient(config, http=http, sleep=clock.sleep, clock=clock,
                                 wall_clock=lambda: clock.wall() + skew, rand=lambda: 0.5)
        made.append((client, http))
        return client

    yield make
    for client, http in made:
        client.close()
        http.close()


def run_image(client: WaveSpeedClient, image: Any, *, sync: bool = True) -> tuple[Any, bytes]:
    data = png_of(image)
    ctx = client.context()
    url = client.upload(data, "image.png", "image/png", ctx=ctx)
    prediction = client.run(url, sync=sync, ctx=ctx, upload=data)
    return prediction, client.download_output(prediction, ctx=ctx)


def assert_cutout_of(output: bytes, image: Any) -> None:
    from PIL import Image

    out = Image.open(io.BytesIO(output))
    assert out.getchannel("A").tobytes() == keyout_alpha(image).tobytes()


# -- adopting the task -------------------------------------------------------------------------

@pytest.mark.parametrize("lost", ["drop", "timeout", "504"])
@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("list_input", [False, True], ids=["by-pixels", "by-input-url"])
def test_a_lost_answer_adopts_the_task_it_created(account: Account, make_client: Any,
                                                  lost: str, sync: bool,
                                                  list_input: bool) -> None:
    account.submits, account.list_input, account.run_for = [lost], list_input, 2.0
    client = make_client()
    other = make_keyed_image(size=(64, 48), key=(10, 10, 200))
    account.foreign_task(other)  # someone else's task in the window: not ours
    image = make_keyed_image()
    prediction, output = run_image(client, image, sync=sync)
    assert_cutout_of(output, image)
    assert account.count("submit") == 1 and account.tasks_for(png_of(image)) == 1
    assert prediction.id == account.tasks[-1].id
    if list_input:  # decided by the upload's URL: no candidate's output downloaded
        assert account.count("download") == 1


def test_base64_outputs_are_compared_too(account: Account, make_client: Any) -> None:
    account.submits, account.base64_output = ["drop"], True
    image = make_keyed_image()
    _, output = run_image(make_client(), image)
    assert_cutout_of(output, image)
    assert account.count("submit") == 1 and account.count("download") == 0


def test_no_task_created_means_one_resubmit_after_the_settle_time(
        account: Account, make_client: Any, clock: Clock) -> None:
    account.submits = ["drop_before"]
    image = make_keyed_image()
    started = clock.now
    _, output = run_image(make_client(), image)
    assert_cutout_of(output, image)
    assert account.count("submit") == 2 and account.tasks_for(png_of(image)) == 1
    assert clock.now - started >= 3.0  # not before the settle time


def test_a_task_still_running_is_waited_for_then_adopted(account: Account,
                                                         make_client: Any) -> None:
    account.submits, account.run_for = ["drop"], 20.0
    image = make_keyed_image()
    account.foreign_task(make_keyed_image(key=(200, 0, 200)), running_for=10.0)
    _, output = run_image(make_client(), image)
    assert_cutout_of(output, image)
    assert account.count("submit") == 1 and len(account.tasks) == 2


def test_the_task_on_a_later_page_is_found(account: Account, make_client: Any) -> None:
    client = make_client()
    for i in range(120):  # this client's own answered tasks fill the first page
        run_image(client, make_keyed_image(size=(16, 16), key=(i, 50, 50)))
    account.submits = ["drop"]
    image = make_keyed_image()
    account.requests.clear()
    _, output = run_image(client, image)
    assert_cutout_of(output, image)
    assert account.count("submit") == 1 and account.count("list") == 2
    # ours downloaded once, to compare it, and that copy is the result; the 120 known ones
    # never downloaded
    assert account.count("download") == 1
    # nothing is kept per image once its submit is answered or reconciled
    assert not client._reconciler._in_flight and not client._reconciler._lost


def test_the_list_failing_for_a_while_is_retried(account: Account, make_client: Any) -> None:
    account.submits, account.list_status = ["drop"], [500, 503, 502, 500, 500, 500, 500, 500]
    image = make_keyed_image()
    _, output = run_image(make_client(), image)
    assert_cutout_of(output, image)
    assert account.count("submit") == 1 and account.count("list") >= 9


def test_a_subject_inside_another_image_is_told_apart_by_its_hidden_colours(
        account: Account, make_client: Any) -> None:
    # the other image: the same background and a smaller red block inside ours
    from PIL import Image

    ours = make_keyed_image(size=(64, 48))
    inner = Image.new("RGB", (64, 48), (0, 200, 0))
    inner.paste((220, 20, 20), (20, 16, 28, 22))
    account.submits = ["drop"]
    account.foreign_task(inner)
    _, output = run_image(make_client(), ours)
    assert_cutout_of(output, ours)
    assert account.count("submit") == 1


def near_copy(image: Any) -> Any:
    """A burst's next photo: 16 of ~3,750 subject pixels differ (0.4 %, within the
    rounding allowance, but not rounding)."""
    near = image.copy()
    near.paste((10, 10, 250), (60, 45, 64, 49))
    return near


def test_its_own_task_wins_over_a_near_identical_photos(account: Account,
                                                        make_client: Any) -> None:
    # a burst: the other photo differs in 16 of ~3,750 subject pixels (0.4 %, within the
    # rounding allowance); the exact one is ours, the near one must not be taken (it would
    # leave ours unclaimed and the other photo's submitted again: a wrong mask, billed twice)
    ours = make_keyed_image(size=(200, 150))
    account.submits = ["drop"]
    account.foreign_task(near_copy(ours), ago=0.5)
    _, output = run_image(make_client(), ours)
    assert_cutout_of(output, ours)  # the near photo's mask differs in those 16 pixels
    assert account.count("submit") == 1


def test_without_its_own_task_a_near_identical_photos_is_not_adopted(
        account: Account, make_client: Any) -> None:
    # the submit created nothing; a similar photo's task (another program of the account)
    # is the only candidate: taking it would give this photo a mask made for other pixels,
    # and the list cannot tell that this photo has no task (a model's scaled answer is near
    # too): the clear error, no second submit
    ours = make_keyed_image(size=(200, 150))
    account.submits = ["drop_before"]
    other = account.foreign_task(near_copy(ours), ago=0.5)
    error = unsure(account, make_client(), ours)
    assert f"task(s) {other.id}" in str(error) and "not exactly" in str(error)
    assert account.tasks_for(png_of(ours)) == 0


def test_a_list_naming_inputs_tells_a_near_identical_photos_task_apart(
        account: Account, make_client: Any) -> None:
    # the list carries each task's input: none is this upload, so none was created and the
    # one safe resend is made; the similar photo's task is left alone
    ours = make_keyed_image(size=(200, 150))
    account.submits, account.list_input = ["drop_before"], True
    account.foreign_task(near_copy(ours), ago=0.5)
    _, output = run_image(make_client(), ours)
    assert_cutout_of(output, ours)
    assert account.count("submit") == 2 and account.tasks_for(png_of(ours)) == 1


def test_a_near_photos_task_whose_answer_is_on_its_way_is_not_taken_for_ours(
        account: Account, make_client: Any, clock: Clock) -> None:
    """One client, a burst of two photos: the near photo's submit created its task and its
    answer is still on its way (past the settle time) while ours created none. That task
    is this client's own, about to be known: wait for its answer, then the one resend."""
    ours = make_keyed_image(size=(200, 150))
    near = near_copy(ours)
    client = make_client()
    release, answered = threading.Event(), threading.Event()
    account.submits = ["hold", "drop_before"]
    account.on_hold = lambda: release.wait(30)
    other: dict[str, Any] = {}

    def run_other() -> None:
        other["result"] = run_image(client, near)
        answered.set()

    thread = threading.Thread(target=run_other, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not account.tasks:  # the near photo's task exists, its answer held
        assert time.monotonic() < deadline, "the near photo's submit never came"
        time.sleep(0.01)
    let_go_at = clock.now + 10.0  # well past the settle time (3 s)

    def meanwhile() -> None:
        if clock.now >= let_go_at and not release.is_set():
            release.set()
            assert answered.wait(30)

    clock.on_sleep = meanwhile
    _, output = run_image(client, ours)
    thread.join(30)
    assert_cutout_of(output, ours)
    assert_cutout_of(other["result"][1], near)
    assert account.count("submit") == 3  # the near one, ours lost, ours again
    assert account.tasks_for(png_of(ours)) == 1 and account.tasks_for(png_of(near)) == 1


# -- the clear error, never a second task --------------------------------------------------------

def unsure(account: Account, client: WaveSpeedClient, image: Any, *,
           transient: bool = False) -> SubmitUncertainError:
    with pytest.raises(SubmitUncertainError) as info:
        run_image(client, image)
    assert account.count("submit") == 1
    assert "bgremove tasks" in str(info.value) and KEY not in str(info.value)
    assert info.value.transient is transient  # only "ran out of time" may be asked again
    return info.value


def test_no_list_route_is_the_clear_error(account: Account, make_client: Any) -> None:
    account.submits, account.list_status = ["drop"], [404]
    error = unsure(account, make_client(), make_keyed_image())
    assert "no task list" in str(error) and "HTTP 404" in str(error)


@pytest.mark.parametrize("skew", [300.0, -300.0])
def test_a_clock_five_minutes_off_is_the_clear_error(account: Account, make_client: Any,
                                                     skew: float) -> None:
    account.submits = ["drop_before"]
    error = unsure(account, make_client(skew=skew), make_keyed_image())
    assert "clock is 300 s" in str(error)


def test_the_same_image_submitted_elsewhere_too_is_ambiguous(account: Account,
                                                            make_client: Any) -> None:
    image = make_keyed_image()
    account.submits = ["drop"]
    account.foreign_task(image)
    error = unsure(account, make_client(), image)
    assert "2 tasks" in str(error)


def test_hidden_colours_dropped_make_a_contained_subject_ambiguous(account: Account,
                                                                  make_client: Any) -> None:
    from PIL import Image

    ours = make_keyed_image(size=(64, 48))
    inner = Image.new("RGB", (64, 48), (0, 200, 0))
    inner.paste((220, 20, 20), (20, 16, 28, 22))
    account.submits, account.zero_hidden_colour = ["drop"], True
    account.foreign_task(inner)
    assert "2 tasks" in str(unsure(account, make_client(), ours))


def test_an_unknown_failed_task_in_the_window_is_unsure(account: Account,
                                                        make_client: Any) -> None:
    account.submits = ["drop_before"]
    account.foreign_task(make_keyed_image(), status="failed")
    assert "cannot be compared" in str(unsure(account, make_client(), make_keyed_image()))


def test_a_candidate_whose_output_will_not_download_is_unsure(account: Account,
                                                              make_client: Any) -> None:
    account.submits = ["drop"]
    other = account.foreign_task(make_keyed_image(key=(200, 0, 200)))
    account.broken_outputs.add(other.id)
    error = unsure(account, make_client(), make_keyed_image())
    assert "could not be told" in str(error) and "billed" in str(error)


def test_no_date_header_means_no_resubmit(account: Account, make_client: Any) -> None:
    account.submits, account.date_header = ["drop_before"], False
    assert "clock" in str(unsure(account, make_client(), make_keyed_image()))


def test_the_list_down_until_the_deadline_is_the_clear_error(account: Account,
                                                            make_client: Any) -> None:
    account.submits, account.list_status = ["drop"], [503] * 10_000
    error = unsure(account, make_client(), make_keyed_image(), transient=True)
    assert "in time" in str(error)


# -- the comparison itself -----------------------------------------------------------------------

def cutout(image: Any, *, zero_hidden: bool = False) -> Any:
    from PIL import Image

    out = Image.open(io.BytesIO(cutout_png(image, keyout_alpha(image)))).convert("RGBA")
    if zero_hidden:
        out.paste((0, 0, 0, 0), mask=out.getchannel("A").point(lambda v: 255 if v == 0 else 0))
    return out


@pytest.mark.parametrize("zero_hidden", [False, True])
def test_a_cutout_matches_its_own_image(zero_hidden: bool) -> None:
    image = make_keyed_image()
    assert cutout_matches(cutout(image, zero_hidden=zero_hidden), image) is True


def test_a_cutout_does_not_match_another_size_or_picture() -> None:
    image = make_keyed_image()
    assert cutout_matches(cutout(image), make_keyed_image(size=(65, 48))) is False
    assert cutout_matches(cutout(image), make_keyed_image(key=(0, 0, 200))) is False


@functools.lru_cache(maxsize=8)
def noisy_photo(seed: int, size: tuple[int, int] = (1200, 800)) -> Any:
    """A photo-like image: smooth shapes under sensor-like noise (sd about 10)."""
    import random

    from PIL import Image, ImageChops, ImageDraw, ImageFilter

    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(40, 300)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image = image.filter(ImageFilter.GaussianBlur(6))
    noise = Image.merge("RGB", [Image.effect_noise(size, 10) for _ in range(3)])
    return ImageChops.add(image, noise, offset=-128)


def subject_alpha(size: tuple[int, int]) -> Any:
    from PIL import Image, ImageDraw

    alpha = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(alpha).ellipse((w // 4, h // 5, 3 * w // 4, 4 * h // 5), fill=255)
    return alpha


def scaled_cutout(image: Any, size: tuple[int, int], resample: Any,
                  zero_hidden: bool = False) -> Any:
    """The cut-out a model answering below full size returns, scaled with ``resample``."""
    out = image.resize(size, resample)
    out.putalpha(subject_alpha(image.size).resize(size, resample))
    if zero_hidden:
        out.paste((0, 0, 0, 0), mask=out.getchannel("A").point(lambda v: 255 if v == 0 else 0))
    return out


@pytest.mark.parametrize("resample", ["BILINEAR", "BICUBIC", "LANCZOS", "BOX", "HAMMING"])
@pytest.mark.parametrize("zero_hidden", [False, True])
def test_a_scaled_down_cutout_matches_its_own_photo_whatever_the_filter(
        resample: str, zero_hidden: bool) -> None:
    from PIL import Image

    photo = noisy_photo(1)
    filt = getattr(Image.Resampling, resample)
    for size in ((512, 341), (512, 342), (300, 200)):
        assert cutout_matches(scaled_cutout(photo, size, filt, zero_hidden), photo) is True
        # nor does it match another photo, or the same one turned
        assert cutout_matches(scaled_cutout(photo, size, filt, zero_hidden),
                              noisy_photo(2)) is False
    portrait = photo.transpose(Image.Transpose.ROTATE_90)
    assert cutout_matches(scaled_cutout(portrait, (341, 512), filt, zero_hidden),
                          portrait) is True
    assert cutout_matches(scaled_cutout(portrait, (341, 512), filt), photo) is False


def test_a_scaled_down_cutout_of_a_subject_inside_another_photo_is_told_apart() -> None:
    # the same photo with a smaller subject painted over: its hidden colours give it away
    from PIL import Image

    photo = noisy_photo(3)
    other = photo.copy()
    other.paste((220, 20, 20), (500, 300, 700, 500))
    small = scaled_cutout(photo, (480, 320), Image.Resampling.BILINEAR)
    assert cutout_matches(small, photo) is True
    assert cutout_matches(small, other) is False


def test_a_cutout_that_is_not_a_scaled_copy_does_not_match() -> None:
    from PIL import Image

    photo = noisy_photo(4)
    for size in ((512, 300), (1180, 787), (1300, 866)):  # another shape; a rounding; bigger
        assert cutout_matches(scaled_cutout(photo, size, Image.Resampling.BILINEAR),
                              photo) is False


def test_a_blank_cutout_without_hidden_colours_cannot_be_told() -> None:
    from PIL import Image

    blank = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    assert cutout_matches(blank, make_keyed_image()) is None


def test_known_ids_too_old_for_any_window_are_forgotten(make_client: Any, clock: Clock) -> None:
    from bgremove.wavespeed._reconcile import _MAX_KNOWN

    client = make_client()
    reconciler = client._reconciler
    for i in range(_MAX_KNOWN):
        reconciler.remember(f"old{i}")
    clock.sleep(3600.0)  # an hour on: far outside any search window
    reconciler.remember("new")
    assert set(reconciler._known) == {"new"}
    for i in range(_MAX_KNOWN):  # recent ones are all kept, however many
        reconciler.remember(f"recent{i}")
    assert len(reconciler._known) == _MAX_KNOWN + 1
