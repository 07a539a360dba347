"""httpx's transport with every socket wait bounded by the current call's deadline.

httpx's timeouts apply to each socket operation alone: a server that sends one
byte every half second (headers or body) is never "timed out". Here the
request loop states, for the calls the current thread makes, when they must
end and which cancel token may stop them (``budget``); every connect, read and
write on the sockets of a bound pool (``bound_sockets``) then waits at most until that
moment, and a read wakes every ``CANCEL_POLL`` seconds to look at the token. On the main
thread a read wakes so too, token or not: a Ctrl-C that lands just before a read blocks
interrupts no system call (Python only flags it), and a sync submit's wait is long.

``bound_sockets`` puts this on every connection pool of the client's own
``httpx.Client``: the direct one and those of proxies from the environment
(``HTTPS_PROXY`` and the like). A caller's ``httpx.Client`` keeps httpx's
per-operation timeouts; ``bgremove.wavespeed._body`` still bounds the body
between reads.

The same streams give TLS connections their context (``tls_context``): httpx's own
(``httpx.create_ssl_context()``: verification on, its certificate authorities), made once
per process when first needed. Loading the authorities is most of a small image's TLS
cost (~15-30 ms of CPU): a run against a plain-http address (a local emulator) never pays
it, and ``preload_tls`` loads it on another core while an https run reads and checks its
image (OpenSSL lets go of the GIL meanwhile). The client is built with ``PENDING``, a
context that trusts no authority: were it ever used as it is, every connection would
fail, never be unverified.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from bgremove.contract import CancelToken

#: How often a waiting read looks at the cancel token (and the main thread at a flagged
#: Ctrl-C), seconds.
CANCEL_POLL = 0.2


class _Budget(threading.local):
    ends_at: float | None = None  # time.monotonic() value
    cancel: CancelToken | None = None


_budget = _Budget()


@contextlib.contextmanager
def budget(ends_at: float, cancel: CancelToken | None = None) -> Iterator[None]:
    """Socket waits in this thread end by ``ends_at`` (``time.monotonic``) inside the block."""
    saved = (_budget.ends_at, _budget.cancel)
    _budget.ends_at, _budget.cancel = ends_at, cancel
    try:
        yield
    finally:
        _budget.ends_at, _budget.cancel = saved


def _clamp(timeout: float | None) -> float | None:
    """``timeout`` shortened to the budget's end; raises if it already passed."""
    if _budget.ends_at is None:
        return timeout
    left = _budget.ends_at - time.monotonic()
    if left <= 0:
        raise TimeoutError("the call's time limit ran out")
    return left if timeout is None else min(timeout, left)


#: The context the client is built with; ``_BoundedStream.start_tls`` uses ``tls_context()``
#: in its place (see the module docstring).
PENDING = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

_tls_lock = threading.Lock()
_tls: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """This process's TLS context for the service, made (once) on first use."""
    global _tls
    with _tls_lock:  # a second caller waits for the first one's load
        if _tls is None:
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])  # what httpcore asks of HTTP/1.1 pools
            _tls = context
        return _tls


def preload_tls() -> None:
    """Make ``tls_context()`` in the background now (an https address will need it)."""
    if _tls is None:
        threading.Thread(target=tls_context, name="bgremove-tls", daemon=True).start()


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        started = time.monotonic()
        while True:
            try:
                limit = _clamp(timeout)
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(str(exc)) from None
            cancel = _budget.cancel
            if cancel is not None:
                cancel.raise_if_cancelled()
            sliced = cancel is not None or threading.current_thread() is threading.main_thread()
            if sliced:
                limit = CANCEL_POLL if limit is None else min(limit, CANCEL_POLL)
            try:
                return self._inner.read(max_bytes, limit)
            except httpcore.ReadTimeout:
                # a slice ended (back in Python: a flagged Ctrl-C is raised here): go on
                # unless the real timeout or the deadline is used up
                if not sliced or (timeout is not None
                                  and time.monotonic() - started >= timeout):
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            limit = _clamp(timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from None
        self._inner.write(buffer, limit)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        try:
            limit = _clamp(timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        if ssl_context is PENDING:
            ssl_context = tls_context()
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, limit))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            limit = _clamp(timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        return _BoundedStream(self._inner.connect_tcp(host, port, limit, local_address,
                                                      socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_unix_socket(path, _clamp(timeout),
                                                              socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bound_sockets(client: httpx.Client) -> int:
    """Make every socket wait of ``client``'s pools (direct and proxied) honour ``budget``.

    httpx has no public way to pass a network backend, so the backend of each pool it
    built is replaced (before any connection is made). Returns the number of pools bound.
    A client built with ``verify=PENDING`` gets its TLS context here, through these streams.
    """
    bound = 0
    for transport in [client._transport, *client._mounts.values()]:
        pool = getattr(transport, "_pool", None)
        if isinstance(pool, (httpcore.ConnectionPool, httpcore.SOCKSProxy)):
            pool._network_backend = _BoundedBackend()
            bound += 1
    return bound
