"""The job as three stages, each with its own limit: the pipeline ``remove``, ``watch``
and the GIMP bridge share.

    prepare (CPU pool, ~cores)  ->  remote (IO threads + ONE poller)  ->  finish (CPU pool)

    _pipeline  Pipeline and the Job protocol: admission, the pools, each job ends once
    _poller    Poller: one thread holding the next poll of every waiting task
    _remote    the Remote protocol, Call, CutoutRemote (a mask made on this machine)
    _image     prepare_image: the prepare stage of an image already decoded
    _file      FileJob: one input file to one output file; remove_file runs one
    _one       run_one: one job on a pipeline of its own (remove_file, the GIMP bridge)

The WaveSpeed remote is ``bgremove.wavespeed.WaveSpeedRemote``. The modules are private;
these are the public names.
"""

from bgremove.stages._file import FileJob, job_error, remove_file
from bgremove.stages._image import prepare_image
from bgremove.stages._one import run_one
from bgremove.stages._pipeline import MAX_IO_THREADS, WAKE_SECONDS, Job, Pipeline
from bgremove.stages._poller import Poller
from bgremove.stages._remote import Call, CutoutRemote, Remote, remote_for

__all__ = ["MAX_IO_THREADS", "WAKE_SECONDS", "Call", "CutoutRemote", "FileJob", "Job",
           "Pipeline", "Poller", "Remote", "job_error", "prepare_image", "remote_for",
           "remove_file", "run_one"]
