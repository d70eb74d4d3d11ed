"""Why a file failed, in a form that goes into ``<name>.error.json`` and the run report.

Two kinds of trouble:

* :class:`FileRejected`: a *permanent* problem with one file (empty, too large, wrong type, an
  unsafe name, Rossum refused it with a 4xx, its import task failed). The file goes to
  ``failed/`` with a sidecar; the run continues.
* Everything else that is *transient* (SFTP disconnect, S3 5xx, Rossum 429/5xx, a deadline): it
  is retried where that is safe; if it persists the file is left claimed and a later run picks
  it up again (see :mod:`rossflow.ingest.claims`).
"""

from __future__ import annotations

import errno
import socket
from datetime import UTC, datetime
from typing import Any

from rossflow.rossum.errors import (
    DeadlineExceededError,
    RateLimitedError,
    RossumAPIError,
    RossumError,
    RossumTransportError,
    ServerError,
    TaskFailedError,
)

# Reason codes (stable: they end up in sidecars, reports and dashboards).
EMPTY = "empty_file"
TOO_LARGE = "too_large"
UNSUPPORTED_TYPE = "unsupported_type"
TYPE_MISMATCH = "type_mismatch"
UNSAFE_NAME = "unsafe_name"
UNREADABLE = "unreadable"
VANISHED = "vanished"
REJECTED = "rossum_rejected"
IMPORT_FAILED = "import_task_failed"
DUPLICATE_OF_REJECTED = "identical_content_rejected"
ANNOTATION_MISSING = "annotation_missing"  # the ledger's annotation is gone from Rossum


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FileRejected(Exception):
    """A permanent problem with one file: it goes to ``failed/`` with this reason."""

    def __init__(
        self, reason: str, message: str, *, step: str, rossum: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.step = step
        self.rossum = rossum

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message, "step": self.step}
        if self.rossum:
            out["rossum"] = self.rossum
        return out


def rossum_detail(exc: BaseException) -> dict[str, Any] | None:
    """Status, code and detail of a Rossum error (never a token or a body with secrets)."""
    if not isinstance(exc, RossumError):
        return None
    out: dict[str, Any] = {"error": type(exc).__name__}
    for attr in ("status", "code", "detail", "method", "url"):
        value = getattr(exc, attr, None)
        if value is not None:
            out[attr] = value
    return out


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying later (network, throttling, server trouble, deadlines)."""
    if isinstance(exc, FileRejected):
        return False
    if isinstance(exc, RateLimitedError | ServerError | RossumTransportError):
        return True
    if isinstance(exc, DeadlineExceededError):
        return True
    if isinstance(exc, TaskFailedError):
        return False
    if isinstance(exc, RossumAPIError):
        return exc.status in (408, 409, 423, 429) or (exc.status or 0) >= 500
    from rossflow.delivery.s3 import S3DeliveryError
    from rossflow.delivery.sftp import SftpConnectionError

    if isinstance(exc, SftpConnectionError | S3DeliveryError):
        return True
    if isinstance(exc, socket.timeout | TimeoutError | ConnectionError | EOFError):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return int(status) >= 500 or int(status) in (408, 429)
        if isinstance(exc, BotoCoreError):
            return True
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    import paramiko

    return isinstance(exc, paramiko.SSHException)


def is_missing(exc: BaseException) -> bool:
    """The file is not there (any source)."""
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return True
    try:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return code in ("404", "NoSuchKey", "NotFound")
    except ImportError:  # pragma: no cover
        pass
    return False


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]
