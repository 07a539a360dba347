"""One job on a pipeline of its own: the library's ``remove_file`` and the GIMP bridge.

One image needs no more than one place at the service and one CPU worker. The job's own
cancel token is the pipeline's, so cancelling it ends the job at once, wherever it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import Backend
    from bgremove.stages._pipeline import Job


def run_one(job: Job, backend: Backend, config: Config) -> None:
    """Run ``job`` alone; return once it ended (its ``finish`` or ``failed`` was called)."""
    from bgremove.stages._pipeline import Pipeline

    with Pipeline(backend, config, in_flight=1, cpu_workers=1,
                  cancel=job.hooks.cancel) as pipeline:
        pipeline.start(job)
