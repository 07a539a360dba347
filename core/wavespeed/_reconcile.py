"""Finding out whether a submit whose answer was lost created a task, instead of guessing.

A submit whose answer never arrived (dropped connection, read timeout, a
gateway 502/504 without an id) may or may not have created a billed task.
The service lists the account's predictions of the last 7 days, so
``Reconciler.find`` asks it:

1. List this model's predictions created from ``reconcile.clock_skew``
   seconds before the submit was sent to as long after now. The answer's
   ``Date`` header measures this computer's clock against the service's; a
   clock further off than that allowance makes the window meaningless, so
   the answer is "unsure".
2. Drop the ids this client already knows (its own answered tasks, the
   daemon's journal) and match the rest to the upload: by ``input.image``
   when the list carries it, otherwise by downloading the candidate's output
   and comparing it with the uploaded image (``bgremove.imaging._match``).
   Candidates still running are waited for.
3. One match: that task is adopted. A match is made from this very upload:
   its URL when the list carries it, else a cut-out of exactly these pixels
   (``EXACT_SCORE``, rounding at most). A cut-out only within the allowance
   may be a similar photo's (a burst, another program of the account) while
   this submit created none, or this image's scaled by the model: it is
   neither adopted (a mask made for other pixels) nor a reason to submit
   again. None, once ``reconcile.settle`` seconds have passed since the answer
   was lost and the clock is known to be right: no task exists and the image
   may be submitted again (the only safe resend). Several, a near one, a
   candidate that cannot be compared, no list route, or a clock too far off:
   ``SubmitUncertainError`` with the reason.

Identical uploads in one batch are interchangeable: while another submit of
the same bytes is still waiting for its answer nothing is decided, and as
many matching tasks as there are lost submits of those bytes are handed out
one each. The list's own failures are retried until the image's deadline.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgremove.errors import (
    APIStatusError,
    ServiceError,
    ServiceTimeoutError,
    SubmitUncertainError,
)
from bgremove.retry import backoff_delay
from bgremove.wavespeed._answers import Listed, Prediction

if TYPE_CHECKING:
    from PIL import Image

    from bgremove.wavespeed._client import WaveSpeedClient
    from bgremove.wavespeed._http import CallContext

log = logging.getLogger(__name__)

#: The Date header counts whole seconds, and an answer takes a moment to arrive.
DATE_SLACK = 2.0
#: Statuses that mean the list has no such route (an API without it).
NO_LIST = frozenset({404, 405, 501})
#: Next steps when it stays unknown whether the task exists.
UNSURE_HINT = ("look for the task with `bgremove tasks` and get its result with "
               "`bgremove fetch TASK_ID --input FILE`, before submitting this image again")
_MAX_VERDICTS = 4096
#: Matched candidates' outputs kept for the download that follows an adoption.
_MAX_KEPT_OUTPUTS = 4
_MAX_KNOWN = 10_000


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SentSubmit:
    """A submit whose outcome is to be found: what was uploaded and when it was sent."""

    image_url: str
    upload: bytes  # the uploaded file, to compare candidates' outputs with
    sent_at: float  # wall-clock time just before the request left

    @property
    def digest(self) -> str:
        return digest_of(self.upload)


class _Unsure(Exception):
    """Internal: it cannot be told whether (or which) task exists. ``transient``: only
    because time ran out (the list down, a candidate still running): asking again later,
    never submitting, may tell."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


class Reconciler:
    """Remembers the tasks one client knows and finds the task of a lost submit. Thread-safe."""

    def __init__(self, client: WaveSpeedClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._known: dict[str, float] = {}  # task id -> when it became known (clock)
        self._prune_at = _MAX_KNOWN
        self._in_flight: Counter[str] = Counter()  # submits of these bytes awaiting an answer
        self._lost: Counter[str] = Counter()  # lost submits of these bytes being reconciled
        # (task, upload) -> its mismatch score (``imaging.cutout_mismatch``)
        self._verdicts: dict[tuple[str, str], float | None] = {}
        # a matched candidate's output, downloaded to compare it: not fetched a second time
        self._outputs: OrderedDict[str, bytes] = OrderedDict()

    def take_output(self, task_id: str) -> bytes | None:
        """The output of ``task_id`` if it was downloaded to be matched (once)."""
        with self._lock:
            return self._outputs.pop(task_id, None)

    def remember(self, task_id: str) -> None:
        with self._lock:
            self._remember(task_id)

    def _remember(self, task_id: str) -> None:
        """Under the lock. Ids too old to fall in any search window are forgotten."""
        now = self._client.requester.clock()
        self._known[task_id] = now
        if len(self._known) > self._prune_at:
            config = self._client.config
            keep = (config.timeouts.overall + 2 * config.reconcile.clock_skew
                    + config.reconcile.settle + 60.0)
            self._known = {t: at for t, at in self._known.items() if now - at < keep}
            self._prune_at = max(_MAX_KNOWN, 2 * len(self._known))

    @contextmanager
    def sending(self, digest: str) -> Iterator[None]:
        """Marks a submit of these bytes as waiting for its answer."""
        with self._lock:
            self._in_flight[digest] += 1
        try:
            yield
        finally:
            with self._lock:
                _take_one(self._in_flight, digest)

    def find(self, sent: SentSubmit, lost: SubmitUncertainError, *, ctx: CallContext,
             known: Collection[str] = ()) -> Prediction | None:
        """The task ``sent`` created, or None when it surely created none.

        Raises ``SubmitUncertainError`` (built on ``lost``) when that cannot be told.
        """
        digest = sent.digest
        with self._lock:
            self._lost[digest] += 1
        try:
            try:
                found = self._search(sent, digest, ctx, set(known))
            except ServiceTimeoutError as exc:  # never a reason to submit again
                raise _Unsure(f"it could not be told in time ({exc.message})",
                              transient=True) from None
            except ServiceError as exc:  # e.g. a candidate's output that will not download
                raise _Unsure(f"it could not be told ({exc.message})",
                              transient=exc.transient) from None
        except _Unsure as why:
            error = SubmitUncertainError(f"{lost.message}; {why}", hint=UNSURE_HINT,
                                         task_id=lost.task_id)
            error.transient = why.transient  # a journal may look again later, not resubmit
            raise error from lost
        finally:
            with self._lock:
                _take_one(self._lost, digest)
        if found is None:
            log.warning("%s; the service has no task for it: submitting it again",
                        lost.message.split(";")[0])
        else:
            log.warning("%s; found its task %s in the service's list: going on with it",
                        lost.message.split(";")[0], found.id)
        return found

    def _search(self, sent: SentSubmit, digest: str, ctx: CallContext,
                extra_known: set[str]) -> Prediction | None:
        from bgremove.imaging import EXACT_SCORE

        client, settings = self._client, self._client.config.reconcile
        requests = client.requester
        settled_at = requests.clock() + settings.settle
        intervals = client.poll_schedule()
        upload_image: Image.Image | None = None
        while True:
            requests.checkpoint(ctx, "submit", None)
            listing = self._list(sent, ctx)
            with self._lock:
                known = self._known.keys() | extra_known
                others_in_flight = self._in_flight[digest] > 0
                any_in_flight = bool(self._in_flight)  # this client's submits of any image
                lost_here = max(1, self._lost[digest])
            matches: list[Listed] = []
            scores: dict[str, float] = {}  # task id -> mismatch score of a match
            running: list[str] = []
            unknown: list[str] = []
            by_url = False
            for item in listing.items:
                task = item.prediction
                if task.id in known:
                    continue
                if item.input_image is not None:
                    if item.input_image == sent.image_url:
                        matches.append(item)
                        by_url = True
                    continue
                if not task.done:
                    running.append(task.id)
                    continue
                if task.status != "completed":
                    unknown.append(task.id)
                    continue
                if upload_image is None:
                    from bgremove.imaging import decode_image

                    # our own upload (PNG or JPEG, see encode_for_upload)
                    upload_image = decode_image(
                        sent.upload, formats=("PNG", "JPEG"),
                        max_pixels=client.output_limits(ctx).max_pixels)
                score = self._compare(task, digest, upload_image, ctx)
                if score is None:
                    unknown.append(task.id)
                elif score <= 1.0:
                    matches.append(item)
                    scores[task.id] = score
            near: list[str] = []  # cut-outs like this image's, but not exactly of it
            if by_url:  # an upload's URL is unique: decisive whatever else is listed
                matches = [m for m in matches if m.input_image == sent.image_url]
            else:
                # Only the image itself is surely ours. A cut-out merely within the allowance
                # may be a similar photo's (a burst, another program of the account) while
                # ours was never created: never adopted (a mask made for other pixels), and
                # never a reason to submit again either (it may be ours, scaled by the model).
                near = [m.prediction.id for m in matches if scores[m.prediction.id] > EXACT_SCORE]
                matches = [m for m in matches if scores[m.prediction.id] <= EXACT_SCORE]
            # A near candidate may be another image's of this client whose answer is on
            # its way: once that answer came, its task is known and no longer a candidate.
            if not matches and (running or others_in_flight or (near and any_in_flight)):
                log.debug("reconcile: waiting for %d running task(s)%s", len(running),
                          " and a submit's answer" if others_in_flight or near else "")
                requests.pause(next(intervals), ctx, "submit", None)
                continue
            if len(matches) > lost_here:
                raise _Unsure(f"{len(matches)} tasks created since it was sent match this "
                              f"image ({', '.join(m.prediction.id for m in matches)})")
            if matches:
                with self._lock:
                    free = [m for m in matches if m.prediction.id not in self._known]
                    if free:
                        self._remember(free[0].prediction.id)
                if free:
                    return free[0].prediction
                continue  # an identical upload took them meanwhile: look again
            if requests.clock() < settled_at:
                requests.pause(min(next(intervals), settled_at - requests.clock()), ctx,
                               "submit", None)
                continue
            if near:
                raise _Unsure(f"task(s) {', '.join(near)} created since then are like this "
                              "image's cut-out but not exactly it (a similar photo's, or this "
                              "one's scaled by the model)")
            if unknown:
                raise _Unsure(f"task(s) {', '.join(unknown)} created since then cannot be "
                              "compared with this image")
            if not listing.clock_checked:
                raise _Unsure("the service's answers carry no time, so this computer's clock "
                              "cannot be checked against its task list")
            return None

    def _list(self, sent: SentSubmit, ctx: CallContext) -> _Window:
        """The candidates, with the clock checked; the list's failures retried in time."""
        client = self._client
        allowance = client.config.reconcile.clock_skew
        failures = 0
        while True:
            now = client.wall_clock()
            try:
                listing = client.list_predictions(created_after=sent.sent_at - allowance,
                                                  created_before=now + allowance, ctx=ctx)
            except APIStatusError as exc:
                if exc.status_code in NO_LIST:
                    raise _Unsure("the service offers no task list to check whether it "
                                  f"exists (HTTP {exc.status_code})") from None
                if not exc.transient:
                    raise _Unsure(f"its task list cannot be read: {exc.message}") from None
                error: ServiceError = exc
            except ServiceError as exc:
                if not exc.transient:
                    raise _Unsure(f"its task list cannot be read: {exc.message}") from None
                error = exc
            else:
                break
            failures += 1
            remaining = ctx.deadline.remaining()
            delay = backoff_delay(failures + 1, initial=client.config.retry.backoff_initial,
                                  cap=client.config.retry.backoff_max, spread=0)
            if delay >= remaining:
                raise _Unsure(f"its task list could not be read in time: {error.message}",
                              transient=True)
            log.warning("reading the task list failed (%s); trying again in %.1f s",
                        error.message, delay)
            client.requester.pause(delay, ctx, "list", None)
        if listing.server_time is not None:
            skew = listing.server_time - client.wall_clock()
            if abs(skew) > max(0.0, allowance - DATE_SLACK):
                raise _Unsure(f"this computer's clock is {abs(skew):.0f} s "
                              f"{'behind' if skew > 0 else 'ahead of'} the service's, more "
                              f"than wavespeed.reconcile.clock_skew ({allowance:g} s), so its "
                              "task list cannot be matched (set the clock right)")
        lo, hi = sent.sent_at - allowance, now + allowance
        items = [i for i in listing.items
                 if (i.prediction.model in (None, client.model_id))
                 and (i.created_at is None or lo <= i.created_at <= hi)]
        return _Window(items, listing.server_time is not None)

    def _compare(self, task: Prediction, digest: str, upload: Image.Image,
                 ctx: CallContext) -> float | None:
        """How far the candidate's output is from a cut-out of the upload
        (``imaging.cutout_mismatch``; None: cannot tell)."""
        from bgremove.imaging import cutout_mismatch, decode_image

        with self._lock:
            if (task.id, digest) in self._verdicts:
                return self._verdicts[task.id, digest]
        try:
            data = self._client.download_output(task, ctx=ctx)
            limit = self._client.output_limits(ctx).max_pixels
            score = cutout_mismatch(decode_image(data, max_pixels=limit), upload)
        except ValueError:
            score = None  # an output that does not decode cannot be compared
        with self._lock:
            if score is not None and score <= 1.0:
                self._outputs[task.id] = data
                while len(self._outputs) > _MAX_KEPT_OUTPUTS:
                    self._outputs.popitem(last=False)
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[task.id, digest] = score
        return score


def _take_one(counter: Counter[str], key: str) -> None:
    """One less of ``key``; none left: the key goes (one per image would pile up)."""
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


@dataclass(frozen=True)
class _Window:
    """The service's tasks listed around a lost submit."""

    items: list[Listed]
    clock_checked: bool
