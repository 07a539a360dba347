"""The WaveSpeed API emulator: a real HTTP/1.1 server speaking the background-remover contract.

``Emulator`` runs it on a background thread. The parts: ``options`` (settings), ``store``
(what the service keeps), ``service`` (its behaviour, no HTTP), ``http`` (the server and the
request plumbing), ``routes`` (the route table: every endpoint, see there), ``faults`` and
``model``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import replace
from typing import Any

from bgremove.emulator.faults import Fault
from bgremove.emulator.http import Server
from bgremove.emulator.options import DEFAULT_API_KEY, EmulatorOptions
from bgremove.emulator.routes import ROUTES
from bgremove.emulator.service import Service

log = logging.getLogger(__name__)


class Emulator:
    """The WaveSpeed emulator, served from a background thread.

    ``with Emulator(EmulatorOptions(delay=0.3)) as emu: ... emu.base_url ...`` or
    ``start()``/``stop()``. Keyword arguments override fields of ``options``.
    """

    def __init__(self, options: EmulatorOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options or EmulatorOptions(), **overrides)
        self._service = Service(self.options)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        self._service.start()
        try:
            server = Server((self.options.host, self.options.port), self._service, ROUTES)
        except BaseException:
            self._service.stop()
            raise
        self._server = server
        self._service.serve_at(self.port)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        log.info("WaveSpeed emulator listening on %s (model %s)", self.base_url, self.options.model)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._service.begin_stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        server.join_handlers(5)
        self._service.stop()
        log.info("WaveSpeed emulator stopped")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public state -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.options.host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.base_url

    @property
    def api_key(self) -> str:
        """The key clients should send (any non-empty key works unless ``api_key`` was set)."""
        return self.options.api_key or DEFAULT_API_KEY

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters.

        ``requests`` is ``{route: {method: n}}``; ``faults`` counts injected faults by kind;
        ``status_codes`` counts answers by status. Other keys: requests_total, connections,
        uploads, upload_bytes, tasks_submitted, tasks_completed, tasks_failed,
        upload_log (one entry per upload, oldest first: filename, content_type, bytes of the
        file, bytes received for it with any form framing, sha256, and when its request
        began and its body was all in: began, ended, epoch seconds of this machine),
        duplicate_submits (same image bytes submitted again), tasks_per_content
        ({sha256 of the uploaded bytes: tasks}), answers_lost (submits whose task was created
        but whose answer was dropped or replaced by an error without an id),
        max_concurrent_tasks, running_tasks, rate_limited, sync_timeouts, auth_failures,
        bytes_in, bytes_out, stored (entries held), evicted.
        """
        return self._service.snapshot()

    def count(self, route: str, method: str | None = None) -> int:
        """Requests seen for ``route`` (one method, or all)."""
        return self._service.stats.count(route, method)

    def reset_stats(self) -> None:
        """Zero the counters and restart the fault counters (stored files are kept)."""
        self._service.reset_stats()

    def end_delays(self) -> None:
        """Tasks submitted by now end their ``delay`` now, started or not (those submitted
        later still wait)."""
        self._service.end_delays()

    def set_faults(self, *faults: Fault) -> None:
        """Replace the injected faults (counting starts again)."""
        self._service.set_faults(*faults)

    def prediction(self, task_id: str) -> dict[str, Any] | None:
        """The prediction ``data`` the result endpoint would answer, or None."""
        task = self._service.store.task(task_id)
        return task.prediction() if task else None

    def list_predictions(self, **filters: Any) -> list[dict[str, Any]]:
        """The live predictions, newest first; filters: model, status, after, before (epoch
        seconds), with_input."""
        return self._service.list_predictions(**filters)

    def tasks_for(self, content: bytes) -> int:
        """How many tasks were submitted for an upload of exactly these bytes."""
        return self._service.stats.tasks_for(hashlib.sha256(content).hexdigest())

    def now(self) -> float:
        """The service's clock (this machine's plus ``clock_skew``), in epoch seconds."""
        return self._service.now()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted task has ended; False on timeout."""
        return self._service.wait_idle(timeout)
