"""Every list of allowed values, declared once; config validation and argparse use these.

A leaf module: it imports nothing, so the command line can read it at start-up.
"""

from __future__ import annotations

#: ``backend`` / ``--backend``: auto is wavespeed when an API key is set, else local.
BACKENDS = ("auto", "wavespeed", "local")
#: ``output.format`` / ``--format``: the formats results are written in (all lossless but jpg).
OUTPUT_FORMATS = ("png", "webp", "tiff", "jpg")
#: ``wavespeed.wait``: one blocking submit, or an async submit then polling.
WAIT_MODES = ("sync", "poll")
#: ``local.model``: the offline models bgremove knows.
LOCAL_MODELS = ("u2netp", "u2net")
#: ``log_level`` / ``--log-level``.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: WaveSpeedAI account levels from the service's docs: (tasks at once, images a minute).
ACCOUNT_LIMITS: dict[str, tuple[int, int]] = {
    "bronze": (2, 2),
    "silver": (300, 500),
    "gold": (3000, 3000),
    "ultra": (10000, 5000),
}
#: ``watch.account_level`` / ``--account-level``, ``bgremove emulator --level``.
ACCOUNT_LEVELS = tuple(ACCOUNT_LIMITS)

# The emulator's options (``bgremove emulator``, ``EmulatorOptions``):
#: the account's key: accepted, not yet activated (401), suspended (403).
EMULATOR_KEY_STATES = ("active", "inactive", "suspended")
#: how a sync submit that ran out of time is answered.
EMULATOR_SYNC_TIMEOUT_STYLES = ("504", "processing", "gateway", "drop")
#: what makes the emulator's masks: a colour key, or the offline model.
EMULATOR_MODELS = ("keyout", "local")
#: the colours of the emulator's cut-outs: the input's own everywhere; 0,0,0 under alpha 0
#: (as many services send); or premultiplied by alpha (0 under alpha 0, darker where partial).
EMULATOR_OUTPUT_COLOURS = ("input", "zero-clear", "premultiplied")
