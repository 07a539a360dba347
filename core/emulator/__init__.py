"""A built-in WaveSpeed API emulator for tests, benchmarks and trying bgremove without an account.

    from core.emulator import Emulator, EmulatorOptions, Fault
    with Emulator(EmulatorOptions(delay=0.3, faults=(Fault("status", route="submit",
                                                           status=503, first=1),))) as emu:
        ... emu.base_url, emu.api_key, emu.stats() ...

The default model is a deterministic key-out (``keyout_alpha``), so tests can
predict every pixel of a result.
"""

from __future__ import annotations

from core.emulator.faults import Fault, FaultPlan
from core.emulator.model import keyout_alpha
from core.emulator.options import DEFAULT_API_KEY, MODEL_ID, EmulatorOptions
from core.emulator.server import Emulator

__all__ = ["DEFAULT_API_KEY", "MODEL_ID", "Emulator", "EmulatorOptions", "Fault", "FaultPlan",
           "keyout_alpha"]
