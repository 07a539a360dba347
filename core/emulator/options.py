"""The emulator's settings, and the constants of the service it plays."""

from __future__ import annotations

from dataclasses import dataclass

from bgremove.choices import (
    EMULATOR_KEY_STATES,
    EMULATOR_OUTPUT_COLOURS,
    EMULATOR_SYNC_TIMEOUT_STYLES,
)
from bgremove.emulator.faults import Fault
from bgremove.errors import ConfigError

MODEL_ID = "wavespeed-ai/image-background-remover"
DEFAULT_API_KEY = "emulator-key-0123456789"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
WEEK = 7 * 24 * 3600.0


@dataclass(frozen=True)
class EmulatorOptions:
    """How the emulator behaves. Every field has a default that acts like a healthy service."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    api_key: str | None = None  # None: any non-empty bearer key is accepted
    key_state: str = "active"  # "inactive": 401 key not activated; "suspended": 403
    model: str = "keyout"  # or "local" (bgremove.local)
    delay: float = 0.0  # seconds each task takes (inference), at least
    sync_timeout: float | None = None  # a sync submit gives up waiting after this
    # "504" (a 504 carrying the prediction), "processing" (200, status processing, code 5004),
    # "gateway" (a proxy's bare 504, no id) or "drop" (the connection closes, no answer)
    sync_timeout_style: str = "504"
    concurrency_cap: int = 0  # tasks running at once; the rest wait (Bronze: 2). 0: no cap
    images_per_minute: int = 0  # submits per window beyond this get 429. 0: no limit
    rate_window: float = 60.0  # seconds of the images-per-minute window
    rate_limit_retry_after: bool = True  # send Retry-After with the images-per-minute 429
    max_upload_bytes: int = 20 * 1024 * 1024  # larger uploads get 413
    max_stored: int = 10_000  # uploaded files, outputs and tasks kept (oldest dropped)
    max_stored_bytes: int = 1024 * 1024 * 1024
    balance: float = 100.0
    faults: tuple[Fault, ...] = ()
    seed: int = 0  # for faults with a random rate
    idle_timeout: float = 30.0  # an idle keep-alive connection is closed after this
    retention: float = WEEK  # seconds tasks, outputs and uploads are kept and listed
    list_route: bool = True  # False: POST /api/v3/predictions answers 404 (an API without it)
    list_input: bool = False  # list items carry the submit's ``input`` (the docs show none)
    list_page_size_max: int = 100  # a larger page_size is served as this many
    clock_skew: float = 0.0  # seconds the service's clock is ahead of this machine's
    uplink_mbit: float = 0.0  # request bodies arrive at most this fast, all together. 0: any
    downlink_mbit: float = 0.0  # answers leave at most this fast, all together. 0: any
    output_max_side: int = 0  # outputs scaled down to fit this longest side. 0: full size
    # The cut-out's colours: "input" (the input's own under every alpha), "zero-clear" (0,0,0
    # under alpha 0) or "premultiplied" (colour x alpha / 255: 0 under alpha 0, darker where
    # partly transparent).
    output_colours: str = "input"
    # Served beyond this machine: every route needs the key (the file routes a URL signed
    # with it), checked before a body is read; needs ``api_key``.
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if self.key_state not in EMULATOR_KEY_STATES:
            raise ConfigError(f"unknown key_state {self.key_state!r}",
                              hint=f"allowed: {', '.join(EMULATOR_KEY_STATES)}")
        if self.sync_timeout_style not in EMULATOR_SYNC_TIMEOUT_STYLES:
            raise ConfigError(f"unknown sync_timeout_style {self.sync_timeout_style!r}",
                              hint=f"allowed: {', '.join(EMULATOR_SYNC_TIMEOUT_STYLES)}")
        if self.output_colours not in EMULATOR_OUTPUT_COLOURS:
            raise ConfigError(f"unknown output_colours {self.output_colours!r}",
                              hint=f"allowed: {', '.join(EMULATOR_OUTPUT_COLOURS)}")
        if self.delay < 0 or (self.sync_timeout is not None and self.sync_timeout < 0):
            raise ConfigError("delay and sync_timeout must not be negative")
        if self.allow_remote and not self.api_key:
            raise ConfigError("an emulator open to the network needs its own API key",
                              hint="set api_key (--api-key)")
        if min(self.uplink_mbit, self.downlink_mbit, self.output_max_side) < 0:
            raise ConfigError("uplink_mbit, downlink_mbit and output_max_side must not be "
                              "negative")
        if self.retention <= 0 or self.list_page_size_max < 1:
            raise ConfigError("retention and list_page_size_max must be positive")
