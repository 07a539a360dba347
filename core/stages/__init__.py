"""The job as three stages, each with its own limit: the pipeline ``remove`` and ``watch``
share. One job alone (``remove`` of one image, ``remove_file``, the GIMP bridge) runs the
same steps in a row on the calling thread.

    prepare (CPU pool, ~cores)  ->  remote (IO threads + ONE poller)  ->  finish (CPU pool)

    _pipeline  Pipeline and the Job protocol: admission, the pools, each job ends once
    _poller    Poller: one thread holding the next poll of every waiting task
    _remote    the Remote protocol, Call, CutoutRemote (a mask made on this machine)
    _steps     a job's steps, one call each, as Pipeline and Alone run them
    _one       Alone, run_one: one job on the calling thread (remove of one image,
               remove_file, the GIMP bridge)
    _image     prepare_image: the prepare stage of an image already decoded
    _file      FileJob: one input file to one output file; remove_file runs one

The WaveSpeed remote is ``bgremove.wavespeed.WaveSpeedRemote``. The modules are private;
these are the public names.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from bgremove.stages._file import FileJob, job_error, remove_file
    from bgremove.stages._image import prepare_image
    from bgremove.stages._one import Alone, run_one
    from bgremove.stages._pipeline import MAX_IO_THREADS, Job, Pipeline
    from bgremove.stages._poller import Poller
    from bgremove.stages._remote import Call, CutoutRemote, Remote, remote_for
    from bgremove.stages._steps import WAKE_SECONDS

#: Each name and its module, loaded on first use (PEP 562): one image never loads the
#: pipeline's pools and poller.
_LAZY = {
    "FileJob": "_file", "job_error": "_file", "remove_file": "_file",
    "prepare_image": "_image", "Alone": "_one", "run_one": "_one",
    "MAX_IO_THREADS": "_pipeline", "Job": "_pipeline", "Pipeline": "_pipeline",
    "Poller": "_poller", "Call": "_remote", "CutoutRemote": "_remote", "Remote": "_remote",
    "remote_for": "_remote", "WAKE_SECONDS": "_steps",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgremove.stages' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"bgremove.stages.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = ["MAX_IO_THREADS", "WAKE_SECONDS", "Alone", "Call", "CutoutRemote", "FileJob", "Job",
           "Pipeline", "Poller", "Remote", "job_error", "prepare_image", "remote_for",
           "remove_file", "run_one"]
