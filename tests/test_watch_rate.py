"""Images per minute as the service counts them: at its submit times, against the emulator.

Jobs admitted together whose uploads take different times must not send a burst of
submits when the slow uploads end: the daemon's token counts from the moment its submit
leaves, and the emulator (which answers 429 beyond its limit) is the judge.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from bgremove.emulator import Fault
from tests.test_watch_support import DaemonRun, files, wait_until, write_image


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window)
                for i, start in enumerate(times)), default=0)


def test_images_per_minute_holds_at_the_services_submit_times(
        tmp_path: Path, emulator_factory: Any) -> None:
    limit, window = 3, 2.0  # the service's minute, shortened for the test
    # the first uploads take 1.5 s: their submits leave together, late; the next ones'
    # uploads are quick, so their submits would follow at once if tokens counted from
    # the jobs' start
    emu = emulator_factory(images_per_minute=limit, rate_window=window, faults=(
        Fault("delay", route="upload_put", first=limit, seconds=1.5),))
    count = 2 * limit
    with DaemonRun(tmp_path, emu, "native", images_per_minute=limit,
                   concurrency=count) as run:
        run.daemon.rate.window = window
        for i in range(count):
            write_image(run.inbox / f"p{i}.png", 40 + i)
        wait_until(lambda: len(files(run.done)) == count, 60, what="every image done")
    stats = emu.stats()
    assert emu.count("upload_put") == count  # the slow uploads were the direct ones
    assert stats["rate_limited"] == 0, "a submit went over the service's images per minute"
    created = [datetime.fromisoformat(p["created_at"].replace("Z", "+00:00")).timestamp()
               for p in emu.list_predictions()]
    assert len(created) == count and most_in_any_window(created, window) <= limit
