"""The ``wavespeed`` backend and its client for the WaveSpeedAI API.

    _backend   WaveSpeedBackend: one image in, the service's alpha mask out
    _client    WaveSpeedClient: upload, submit, wait, download, balance
    _http      the retry loop, named timeouts, the key kept to the service's origin
    _answers   reading the service's envelopes
    _errors    the status-to-error table
    _reconcile finding the task of a submit whose answer was lost
    _remote    WaveSpeedRemote: the API as the pipeline's remote stage (send, poll, fetch)

The modules are private; these are the public names.
"""

from bgremove.wavespeed._answers import Prediction
from bgremove.wavespeed._backend import WaveSpeedBackend
from bgremove.wavespeed._client import WaveSpeedClient
from bgremove.wavespeed._http import CallContext, ClientStats
from bgremove.wavespeed._remote import WaveSpeedRemote

__all__ = ["CallContext", "ClientStats", "Prediction", "WaveSpeedBackend", "WaveSpeedClient",
           "WaveSpeedRemote"]
