"""bgremove: the service client, the image pipeline, config and backends.

The public names are re-exported here; modules stay importable on their own.
Only the errors and the version load with the package: the other names load on
first use (PEP 562), so ``import bgremove.x`` and the command line start fast
and a broken dependency (YAML, Pillow, httpx) surfaces where it is used, where it
can be reported in one line.
"""

import importlib as _importlib
import typing as _typing

from bgremove.errors import (
    AccountSuspendedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BgremoveError,
    CancelledError,
    ConfigError,
    ImageTooLargeError,
    InputChangedError,
    InputError,
    InputNotFoundError,
    MissingExtraError,
    MissingKeyError,
    ModelError,
    NotAttemptedError,
    OutputError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitError,
    ServerError,
    ServiceConnectionError,
    ServiceError,
    ServiceTimeoutError,
    SubmitUncertainError,
    TaskFailedError,
    TransportError,
    UnreadableImageError,
    UnsafeInputError,
)
from bgremove.version import __version__

if _typing.TYPE_CHECKING:
    from bgremove.backends import make_backend
    from bgremove.config import Config, load_config
    from bgremove.contract import Backend, CancelToken, Cutout, JobHooks
    from bgremove.jobs import JobResult, output_path_for
    from bgremove.stages import remove_file

#: The names loaded on first use, and the module each comes from.
_LAZY = {
    "Backend": "bgremove.contract", "CancelToken": "bgremove.contract",
    "Cutout": "bgremove.contract", "JobHooks": "bgremove.contract",
    "make_backend": "bgremove.backends",
    "Config": "bgremove.config", "load_config": "bgremove.config",
    "JobResult": "bgremove.jobs", "output_path_for": "bgremove.jobs",
    "remove_file": "bgremove.stages",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgremove' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "APIStatusError",
    "AccountSuspendedError",
    "AuthenticationError",
    "Backend",
    "BadRequestError",
    "BgremoveError",
    "CancelToken",
    "CancelledError",
    "Config",
    "ConfigError",
    "Cutout",
    "ImageTooLargeError",
    "InputChangedError",
    "InputError",
    "InputNotFoundError",
    "JobHooks",
    "JobResult",
    "MissingExtraError",
    "MissingKeyError",
    "ModelError",
    "NotAttemptedError",
    "OutputError",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "ServiceConnectionError",
    "ServiceError",
    "ServiceTimeoutError",
    "SubmitUncertainError",
    "TaskFailedError",
    "TransportError",
    "UnreadableImageError",
    "UnsafeInputError",
    "__version__",
    "load_config",
    "make_backend",
    "output_path_for",
    "remove_file",
]
