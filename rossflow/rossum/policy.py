"""Timeouts and retry policy: explicit, configurable, aware of which requests are safe to repeat."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Failures where the request provably never left this machine: safe to repeat any method.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


@dataclass(frozen=True)
class Timeouts:
    """httpx timeouts in seconds. None of them is unbounded by default (SDK weakness W3)."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 30.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``Retry-After`` wins when the server sends one.

    * Idempotent requests (GET, PATCH of a status, the id-scoped export ``to_status`` POST) are
      retried on transport errors and on 408/429/5xx.
    * Non-idempotent requests (uploads, confirm, …) are retried only when they cannot have
      reached Rossum: connection never established, or an explicit 429 refusal.
    """

    max_attempts: int = 5
    max_rate_limited_attempts: int = 10
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.25
    max_retry_after_s: float = 300.0
    retry_statuses: frozenset[int] = field(default=RETRYABLE_STATUSES)

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` (attempt counts from 1)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** (attempt - 1)))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


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
