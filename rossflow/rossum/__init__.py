"""Rossum API client: async, deadline-bound, retry-safe, rate-limited.

Public surface::

    from rossflow.rossum import RossumClient, Timeouts, RetryPolicy, RossumError
"""

from rossflow.http import RetryPolicy, Timeouts

from .client import (
    ClientStats,
    RossumClient,
    UploadResult,
    chunked,
    clear_token_cache,
    id_from_url,
)
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RossumAPIError,
    RossumError,
    RossumTransportError,
    ServerError,
    TaskFailedError,
    UncertainOutcomeError,
)
from .ratelimit import (
    RateLimiter,
    SharedRateLimiter,
    default_rate_limit_key,
    shared_limiter,
)

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ClientStats",
    "ConflictError",
    "DeadlineExceededError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RateLimiter",
    "RetryPolicy",
    "RossumAPIError",
    "RossumClient",
    "RossumError",
    "RossumTransportError",
    "ServerError",
    "SharedRateLimiter",
    "TaskFailedError",
    "Timeouts",
    "UncertainOutcomeError",
    "UploadResult",
    "chunked",
    "clear_token_cache",
    "default_rate_limit_key",
    "id_from_url",
    "shared_limiter",
]
