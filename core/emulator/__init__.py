"""A built-in WaveSpeed API emulator for tests, benchmarks and trying bgremove without an account.

    from bgremove.emulator import Emulator, EmulatorOptions, Fault
    with Emulator(EmulatorOptions(delay=0.3, faults=(Fault("status", route="submit",
                                                           status=503, first=1),))) as emu:
        ... emu.base_url, emu.api_key, emu.stats() ...

The default model is a deterministic key-out (``keyout_alpha``), so tests can
predict every pixel of a result.
"""

from __future__ import annotations

from bgremove.emulator.faults import Fault, FaultPlan
from bgremove.emulator.model import keyout_alpha
from bgremove.emulator.options import DEFAULT_API_KEY, MODEL_ID, EmulatorOptions
from bgremove.emulator.server import Emulator

__all__ = ["DEFAULT_API_KEY", "MODEL_ID", "Emulator", "EmulatorOptions", "Fault", "FaultPlan",
           "keyout_alpha"]
