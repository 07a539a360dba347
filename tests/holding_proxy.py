"""A TCP proxy in front of the emulator that can hold a submit's answer (or the submit itself).

``HoldingProxy(emu.host, emu.port, hold="answer")`` forwards every connection
both ways; the first ``count`` requests whose bytes contain ``marker`` are
forwarded, but the server's answer on that connection is swallowed, so the
client waits with its request handled and its answer never read: the moment
between "the task exists" and "the program knows its id". ``held`` is set
once the server has answered such a request. ``hold="request"`` swallows the
request instead (the server never sees it: no task exists). Used to kill a
daemon at exactly that moment.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

SUBMIT_MARKER = b"POST /api/v3/wavespeed-ai/image-background-remover"


class HoldingProxy:
    def __init__(self, host: str, port: int, *, hold: str = "answer",
                 marker: bytes = SUBMIT_MARKER, count: int = 1) -> None:
        assert hold in ("answer", "request")
        self.target = (host, port)
        self.hold, self.marker = hold, marker
        self._left = count
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopping = False
        self._accept = threading.Thread(target=self._serve, name="holding-proxy", daemon=True)
        self._accept.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in [self._accept, *self._threads]:
            thread.join(5)

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            state = {"holding": False, "open": 2}
            with self._lock:
                self._sockets += [client, server]
                for args in ((client, server, True, state), (server, client, False, state)):
                    thread = threading.Thread(target=self._pump, args=args, daemon=True,
                                              name="holding-proxy-pump")
                    self._threads.append(thread)
                    thread.start()

    def _take(self, data: bytes) -> bool:
        with self._lock:
            if self.marker in data and self._left > 0:
                self._left -= 1
                return True
            return False

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool,
              state: dict[str, Any]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and not state["holding"] and self._take(data):
                    state["holding"] = True
                    if self.hold == "request":
                        self.held.set()
                        continue  # the server never hears of it
                if state["holding"] and (self.hold == "request") == upstream:
                    if not upstream:
                        self.held.set()  # the server answered; the client never will know
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                state["open"] -= 1
                last = state["open"] == 0
            if last:  # both directions are over: this connection pair is done
                src.close()
                dst.close()
