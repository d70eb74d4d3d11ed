"""One exception hierarchy for every way a Rossum call can fail.

Each error carries the HTTP method, the URL (credentials stripped), the status and Rossum's
``detail``/``code`` so that a log line or an operator message says exactly what failed. No error
ever carries a token, a password or a request body.
"""

from __future__ import annotations

from typing import Any

from rossflow.http.urls import safe_url


class RossumError(Exception):
    """Base class: something went wrong talking to Rossum."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        detail: str | None = None,
        code: str | None = None,
    ) -> None:
        self.message = message
        self.method = method
        self.url = safe_url(url) if url else None
        self.status = status
        self.detail = detail
        self.code = code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = " ".join(p for p in (self.method, self.url) if p)
        parts = [self.message]
        if where:
            parts.append(f"[{where}]")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.detail:
            parts.append(f"detail={self.detail!r}")
        return " ".join(parts)


class RossumAPIError(RossumError):
    """Rossum answered with an error status (4xx/5xx)."""

    def __init__(self, *args: Any, body: Any = None, retry_after: float | None = None, **kw: Any):
        self.body = body
        self.retry_after = retry_after
        super().__init__(*args, **kw)


class BadRequestError(RossumAPIError):
    """400: invalid input."""


class AuthenticationError(RossumAPIError):
    """401: bad credentials, or a token that expired or was logged out."""


class PermissionDeniedError(RossumAPIError):
    """403."""


class NotFoundError(RossumAPIError):
    """404: unknown id (or already deleted)."""


class ConflictError(RossumAPIError):
    """409: the annotation is not in a status that allows the action."""


class PayloadTooLargeError(RossumAPIError):
    """413: upload over Rossum's 40 MB limit."""


class RateLimitedError(RossumAPIError):
    """429 after the retry budget was spent."""


class ServerError(RossumAPIError):
    """5xx after the retry budget was spent (or on a request that is unsafe to repeat)."""


class RossumTransportError(RossumError):
    """No (complete) HTTP answer: connect failure, timeout, dropped connection."""

    def __init__(self, *args: Any, reached_server: bool, **kw: Any) -> None:
        self.reached_server = reached_server
        super().__init__(*args, **kw)


class UncertainOutcomeError(RossumTransportError):
    """A non-idempotent request may or may not have been applied by Rossum.

    Raised instead of retrying blindly (the official SDK retries uploads and creates duplicates).
    The caller must reconcile, e.g. look the document up by its metadata before uploading again.
    """


class DeadlineExceededError(RossumError):
    """Polling gave up at its deadline (every poll has one)."""


class TaskFailedError(RossumError):
    """An asynchronous Rossum task (e.g. an upload) ended in ``failed``."""


_BY_STATUS: dict[int, type[RossumAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}


def api_error_class(status: int) -> type[RossumAPIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return RossumAPIError
