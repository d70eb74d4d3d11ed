"""A process-wide request budget shared by every client talking to the same Rossum host.

Prefect runs tasks in several threads, each with its own event loop, so the limiter is
thread-safe and loop-agnostic: a reservation is computed under a ``threading.Lock`` and the
caller sleeps outside it. A 429 with ``Retry-After`` pauses *all* callers, not just the one that
was refused.
"""

from __future__ import annotations

import asyncio
import threading
import time


class RateLimiter:
    """Token bucket with reservations (tokens may go negative = queued callers)."""

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate = float(rate_per_s)
        self.burst = max(1, int(burst))
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before sending."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            return max(wait, self._paused_until - now)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (server said Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)


_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


def shared_limiter(key: str, rate_per_s: float, burst: int = 1) -> RateLimiter:
    """The limiter for ``key`` (normally the Rossum host), created on first use.

    A later call with a different rate retunes the existing limiter so that the whole process
    keeps one budget per host.
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = RateLimiter(rate_per_s, burst)
        elif limiter.rate != rate_per_s or limiter.burst != burst:
            limiter.rate, limiter.burst = float(rate_per_s), max(1, int(burst))
        return limiter
