"""Retry policy: explicit, configurable, aware of which requests are safe to repeat.

* Idempotent requests (GET, PUT, PATCH, DELETE, a POST the caller declares idempotent such as
  the id-scoped export ``to_status`` move or a REST delivery carrying an ``Idempotency-Key``)
  are retried on transport errors and on the policy's statuses.
* Other requests are retried only when they cannot have reached the server: the connection was
  never established, or an explicit 429 refusal.
* Backoff is exponential with jitter; ``Retry-After`` wins when the server sends one.
"""

from __future__ import annotations

import email.utils
import random
import time

import httpx
from pydantic import BaseModel, ConfigDict, Field

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})

# Failures where the request provably never left this machine: safe to repeat any method.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


def is_idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT_METHODS


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt? A bad URL scheme or an untrusted certificate will not heal."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    return not (isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc))


def may_have_arrived(exc: BaseException) -> bool:
    """Could the server have received (and processed) the request despite this failure?

    Only failures before anything was sent are certain: no connection, no free connection, a
    request that could not be built.
    """
    not_sent = (*NOT_SENT_ERRORS, httpx.UnsupportedProtocol, httpx.LocalProtocolError)
    return not isinstance(exc, not_sent)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed is None:
        return None
    return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))


class RetryPolicy(BaseModel):
    """How often and how patiently one logical request is repeated.

    ``max_rate_limited_attempts`` bounds the 429s a client that counts them apart (the Rossum
    client, whose rate limiter they pause) accepts; ``max_retry_after_s`` bounds one wait.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=5, ge=1)
    max_rate_limited_attempts: int = 10
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = Field(default=0.25, ge=0, le=1)
    max_retry_after_s: float = 300.0
    retry_statuses: frozenset[int] = RETRYABLE_STATUSES

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number ``attempt`` (counting from 1)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def retry_error(self, exc: BaseException, *, attempt: int, idempotent: bool) -> bool:
        """Repeat after this transport error? Only what is safe to repeat, and may heal."""
        safe = idempotent or isinstance(exc, NOT_SENT_ERRORS)
        return safe and is_transient(exc) and attempt < self.max_attempts

    def retry_status(self, status: int, *, attempt: int, idempotent: bool) -> bool:
        """Repeat after this answer (a status of the policy, attempts left, safe to repeat)?"""
        return idempotent and status in self.retry_statuses and attempt < self.max_attempts
