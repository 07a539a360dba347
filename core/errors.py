"""Every error bgremove raises on purpose.

    BgremoveError                   base class; ``str(err)`` is one line a person can act on
    ├── ConfigError                 bad config file, key or value (CLI exit 2)
    │   ├── MissingKeyError         the wavespeed backend was asked for but no API key is set
    │   └── MissingExtraError       the offline backend is needed but its packages are missing
    ├── InputError                  an input image cannot be used (permanent for that file)
    │   ├── InputNotFoundError      the file does not exist or is not a regular file
    │   ├── UnreadableImageError    not an image, truncated, or a format we do not take
    │   ├── ImageTooLargeError      decompression bomb, or too many pixels for the configured limit
    │   ├── UnsafeInputError        a hot-folder entry not opened: a link, a FIFO, an unsafe name
    │   └── InputChangedError       the file changed between its upload and its result's write
    ├── OutputError                 the result cannot be written (permissions, disk full)
    ├── CancelledError              the caller cancelled the work (GIMP cancel, shutdown)
    ├── NotAttemptedError           a batch stopped before this file: the service refused the others
    ├── ModelError                  the local model is missing, corrupt or cannot be fetched
    └── ServiceError                anything the remote service did wrong
        ├── TransportError          no usable HTTP answer
        │   ├── ServiceConnectionError  cannot connect, or the connection dropped
        │   └── ServiceTimeoutError     a call or the overall deadline ran out
        ├── SubmitUncertainError    a submit's answer was lost: the task may exist and be billed
        ├── APIStatusError          the service answered with an error status
        │   ├── BadRequestError         400: the request must change
        │   ├── AuthenticationError     401: bad key, or a new key not yet activated by a top-up
        │   ├── AccountSuspendedError   403
        │   ├── PayloadTooLargeError    413
        │   ├── RateLimitError          429
        │   └── ServerError             5xx
        ├── TaskFailedError         the task ended failed/cancelled/timeout; carries ``code``
        └── ProtocolError           malformed JSON, missing fields, truncated download

``transient`` says whether trying the same thing again later may succeed; the
hot-folder daemon retries transient errors with backoff and moves a file to
``failed/`` at once on a permanent one.
"""

from __future__ import annotations


class BgremoveError(Exception):
    """Base class of every error bgremove raises on purpose."""

    transient: bool = False
    #: A short machine-readable name, used in ``--json`` output and ``.error.json`` files.
    kind: str = "error"

    def __init__(self, message: str, *, hint: str | None = None,
                 transient: bool | None = None) -> None:
        self.message = message
        self.hint = hint
        if transient is not None:
            self.transient = transient
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(BgremoveError):
    """Raised when the config file, an environment variable or a flag has a bad key or value."""

    kind = "config"


class MissingKeyError(ConfigError):
    """Raised when the wavespeed backend is needed but WAVESPEED_API_KEY is not set."""

    kind = "missing_key"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or "no WaveSpeed API key is configured",
            hint="set WAVESPEED_API_KEY, or api_key under wavespeed: in the config file, "
            "or use --backend local",
        )


class MissingExtraError(ConfigError):
    """Raised when the offline backend is needed but the ``[local]`` extra is not installed."""

    kind = "environment"


class InputError(BgremoveError):
    """Raised when an input image cannot be used; retrying the same file will not help."""

    kind = "input"


class InputNotFoundError(InputError):
    """Raised when an input path does not exist or is not a regular file."""

    kind = "not_found"


class UnreadableImageError(InputError):
    """Raised when a file is not a decodable image of a supported format."""

    kind = "unreadable"
    #: The data ends early or is damaged: a copy still being written looks the same.
    truncated = False


class ImageTooLargeError(InputError):
    """Raised for decompression bombs and images over the configured pixel limit."""

    kind = "too_large"


class UnsafeInputError(InputError):
    """Raised for a hot-folder entry the daemon will not open or place by its name: a
    symbolic or hard link, a FIFO or device, a recorded name that leads out of INBOX."""

    kind = "unsafe"


class InputChangedError(InputError):
    """Raised when a file's bytes at the finish differ from those read and uploaded: its
    result would mix the old content's mask with the new content's pixels, so none is written."""

    kind = "changed"


class OutputError(BgremoveError):
    """Raised when a result cannot be written; the input is kept and can be retried."""

    kind = "output"
    transient = True


class CancelledError(BgremoveError):
    """Raised when the caller cancelled the work before it finished."""

    kind = "cancelled"
    transient = True


class NotAttemptedError(BgremoveError):
    """Raised for a file a batch never started, once the service had refused every file."""

    kind = "not_attempted"


class ModelError(BgremoveError):
    """Raised when the local model file is missing, corrupt or cannot be fetched."""

    kind = "model"


class ServiceError(BgremoveError):
    """Base class of errors from the remote background-removal service."""

    kind = "service"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.task_id = task_id


class TransportError(ServiceError):
    """Raised when no usable HTTP answer arrived."""

    kind = "transport"
    transient = True


class ServiceConnectionError(TransportError):
    """Raised when the service cannot be reached or the connection dropped."""

    kind = "connection"


class ServiceTimeoutError(TransportError):
    """Raised when a call's timeout or the overall deadline ran out."""

    kind = "timeout"


class SubmitUncertainError(ServiceError):
    """Raised when a submit's answer was lost and it cannot be told whether it created a task.

    The client first looks the task up in the service's list (see ``bgremove.retry`` for
    the policy); this error means that could not tell. ``transient`` is true when only
    time ran out (the list unreachable, a candidate still running): a journal may look
    again later. The image is never sent again blindly.
    """

    kind = "submit_uncertain"
    transient = False


class APIStatusError(ServiceError):
    """Raised when the service answered with an error status."""

    kind = "http"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        hint: str | None = None,
        request_id: str | None = None,
        task_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint, task_id=task_id)
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """Raised on 400: the request must change before it can succeed."""

    kind = "bad_request"


class AuthenticationError(APIStatusError):
    """Raised on 401: the key is wrong, or a new key is not yet activated by a top-up."""

    kind = "auth"


class AccountSuspendedError(APIStatusError):
    """Raised on 403: the account is suspended."""

    kind = "suspended"


class PayloadTooLargeError(APIStatusError):
    """Raised on 413: the upload is over the service's size limit."""

    kind = "payload_too_large"


class RateLimitError(APIStatusError):
    """Raised on 429 once retries are used up."""

    kind = "rate_limited"
    transient = True


class ServerError(APIStatusError):
    """Raised on 5xx once retries are used up."""

    kind = "server"
    transient = True


class TaskFailedError(ServiceError):
    """Raised when a task ends failed, cancelled, timed out or deleted.

    ``code`` is the service's task code: 1xxx means the request must change
    (permanent), 5xxx is a service-side problem worth retrying later.
    """

    kind = "task_failed"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: str = "failed",
        hint: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, task_id=task_id)
        self.code = code
        self.status = status
        # 5xxx codes and a service-side timeout are worth retrying; 1xxx never are.
        self.transient = (5000 <= code < 6000) if code is not None else status == "timeout"


class ProtocolError(ServiceError):
    """Raised on malformed JSON, missing fields or a truncated download."""

    kind = "protocol"
    transient = True
