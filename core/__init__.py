"""bgremove core: the service client, the image pipeline, config and backends.

The public names are re-exported here; modules stay importable on their own.
Heavy libraries (httpx, Pillow, onnxruntime) load only when first used, so the
command line starts fast.
"""

from core.backends import Backend, CancelToken, Cutout, JobHooks, make_backend
from core.config import Config, load_config
from core.errors import (
    AccountSuspendedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BgremoveError,
    CancelledError,
    ConfigError,
    ImageTooLargeError,
    InputError,
    InputNotFoundError,
    MissingKeyError,
    ModelError,
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
from core.jobs import JobResult, output_path_for, remove_file

__version__ = "0.1.0"

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
    "InputError",
    "InputNotFoundError",
    "JobHooks",
    "JobResult",
    "MissingKeyError",
    "ModelError",
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
