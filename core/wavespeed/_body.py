"""Reading an answer's body from a service we do not trust: one deadline, a size cap, cancel.

``read_body`` reads the raw bytes of a streamed ``httpx.Response`` itself and
decodes them (identity, gzip, deflate; nothing else is accepted), so that:

* the whole body has one deadline (``ends_at``), checked between reads; the
  socket layer (``bgremove.wavespeed._transport``) keeps each single read from
  waiting past it, so a server dripping a byte every half second ends there;
* the cancel token, when given, is checked between reads;
* the *decoded* size is capped (``max_bytes``): a gzip bomb stops at the cap,
  with at most the cap plus one raw chunk's expansion in memory.

``with_body`` returns a response holding the decoded bytes, for the parsers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from bgremove.errors import ProtocolError, ServiceTimeoutError

if TYPE_CHECKING:
    from bgremove.contract import CancelToken

#: Decoded bytes produced per decompression step, so one step never allocates much.
STEP = 1024 * 1024
#: Encodings the client asks for (``Accept-Encoding``) and can decode within a cap.
ACCEPT_ENCODING = "gzip, deflate"
#: Decoded bytes allowed to a JSON answer (envelopes are tiny; a page of the prediction
#: list is some kilobytes), plus room for a base64 output when one is asked for.
JSON_MAX_BYTES = 4 * 1024 * 1024
#: A result may have this many times the uploaded image's pixels (a 2x upscale), no more.
RESULT_PIXEL_FACTOR = 4


@dataclass(frozen=True)
class OutputLimits:
    """What the result for an upload of ``pixels`` pixels may be, checked before decoding."""

    pixels: int

    @property
    def max_pixels(self) -> int:
        """Pixels its header may announce."""
        return self.pixels * RESULT_PIXEL_FACTOR

    @property
    def max_bytes(self) -> int:
        """Bytes its file may have: twice the raw RGBA of the upload (a PNG or WebP of it is
        smaller than its raw pixels), plus 1 MiB for small images."""
        return 8 * self.pixels + (1 << 20)


def read_body(response: httpx.Response, *, what: str, max_bytes: int, ends_at: float,
              clock: Callable[[], float], cancel: CancelToken | None = None,
              task_id: str | None = None) -> bytes:
    """The decoded body: at most ``max_bytes``, read before ``clock()`` passes ``ends_at``.

    Raises ``ProtocolError`` (too large, not transient; cut short or undecodable,
    transient), ``ServiceTimeoutError`` or ``CancelledError``.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    announced = response.headers.get("content-length", "")
    try:
        ready = response.content  # built in memory (a mock transport), already decoded
    except httpx.ResponseNotRead:
        pass
    else:
        if len(ready) > max_bytes:
            raise too_large(what, max_bytes, task_id)
        if encoding == "identity" and announced.isdigit() and int(announced) != len(ready):
            raise _cut_short(what, len(ready), int(announced), task_id)
        return ready
    decoder = _decoder(encoding, what, task_id)
    if encoding == "identity" and announced.isdigit() and int(announced) > max_bytes:
        raise too_large(what, max_bytes, task_id, f"it announces {int(announced):,} bytes")
    out = bytearray()
    received = 0
    try:
        for raw in response.iter_raw():  # as it arrives (a chunk size would wait for it)
            received += len(raw)
            for piece in decoder(raw):
                if len(out) + len(piece) > max_bytes:
                    raise too_large(what, max_bytes, task_id)
                out += piece
            if cancel is not None:
                cancel.raise_if_cancelled()
            if clock() >= ends_at:
                raise ServiceTimeoutError(
                    f"{what}: the answer was still arriving when its time limit ran out "
                    f"({received:,} bytes received)",
                    hint="check the network and wavespeed.base_url, or raise the matching "
                    "wavespeed.timeouts value", task_id=task_id)
        for piece in decoder(None):
            if len(out) + len(piece) > max_bytes:
                raise too_large(what, max_bytes, task_id)
            out += piece
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise ProtocolError(f"{what}: the answer was cut short after {received:,} bytes "
                            f"({type(exc).__name__})", hint="try again", task_id=task_id) from exc
    except httpx.TimeoutException as exc:
        raise ServiceTimeoutError(
            f"{what}: the answer did not arrive within its time limit ({received:,} bytes "
            f"received, {type(exc).__name__})", hint="check the network, or raise the "
            "matching wavespeed.timeouts value", task_id=task_id) from exc
    except zlib.error as exc:
        raise ProtocolError(f"{what}: the answer's {encoding} data is corrupt ({exc})",
                            hint="try again", task_id=task_id) from None
    if announced.isdigit() and int(announced) != received:
        raise _cut_short(what, received, int(announced), task_id)
    return bytes(out)


def _cut_short(what: str, received: int, announced: int, task_id: str | None) -> ProtocolError:
    return ProtocolError(f"{what}: the answer was cut short: got {received} of "
                         f"{announced} bytes", hint="try again", task_id=task_id)


#: Raw bytes a redirect's body may have: httpx reads it whole (and drops it) before
#: following the redirect, so it is capped on the way in (16 KiB, at most 16 MiB gunzipped).
REDIRECT_BODY_MAX = 16 * 1024


def guard_redirect(response: httpx.Response) -> None:
    """An httpx response hook: the body of a redirect is capped like every other body."""
    if response.has_redirect_location:
        response.stream = _CappedStream(response.stream, REDIRECT_BODY_MAX)


class _CappedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._inner, httpx.SyncByteStream)
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise permanent(ProtocolError(
                    f"a redirect's body is larger than the {self._limit:,} bytes allowed for it: "
                    "refused", hint="check that wavespeed.base_url points at the WaveSpeed API"))
            yield chunk

    def close(self) -> None:
        if isinstance(self._inner, httpx.SyncByteStream):
            self._inner.close()


def with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A copy of ``response`` (status, headers, request) holding the decoded ``body``."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=response.request, extensions=response.extensions)


def too_large(what: str, max_bytes: int, task_id: str | None, detail: str = "") -> ProtocolError:
    more = f" ({detail})" if detail else ""
    return permanent(ProtocolError(
        f"{what}: the answer is larger than the {max_bytes:,} bytes allowed for it{more}: "
        "refused", hint="check that wavespeed.base_url points at the WaveSpeed API",
        task_id=task_id))


def permanent(error: ProtocolError) -> ProtocolError:
    """``error`` marked not worth another try (the same answer would come again)."""
    error.transient = False
    return error


Decoder = Callable[[bytes | None], Iterator[bytes]]


def _decoder(encoding: str, what: str, task_id: str | None) -> Decoder:
    """raw chunk -> decoded pieces of at most STEP bytes each; ``None`` ends the body."""
    if encoding in ("identity", ""):
        return _identity
    if encoding in ("gzip", "x-gzip"):
        return _Inflater(gzip=True)
    if encoding == "deflate":
        return _Inflater(gzip=False)
    raise permanent(ProtocolError(
        f"{what}: the answer uses the content encoding {encoding!r}, which was not asked for",
        hint="check wavespeed.base_url", task_id=task_id))


def _identity(raw: bytes | None) -> Iterator[bytes]:
    if raw:
        yield raw


class _Inflater:
    """gzip, or deflate (zlib-wrapped as the standard says, or raw as some servers send)."""

    def __init__(self, *, gzip: bool) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._head = b""

    def __call__(self, raw: bytes | None) -> Iterator[bytes]:
        data = raw or b""
        if self._z is None:  # deflate: the first two bytes tell which flavour
            self._head += data
            if raw is not None and len(self._head) < 2:
                return
            data, self._head = self._head, b""
            wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        z = self._z
        while data and not z.eof:
            piece = z.decompress(data, STEP)
            data = z.unconsumed_tail
            if piece:
                yield piece
        if raw is None and not z.eof:
            tail = z.flush()
            if tail:
                yield tail
