"""Request budgets for Rossum: per process (default) or shared by every worker.

:class:`RateLimiter` is a process-wide budget shared by every client talking to the same Rossum
host. Prefect runs tasks in several threads, each with its own event loop, so the limiter is
thread-safe and loop-agnostic: a reservation is computed under a ``threading.Lock`` and the
caller sleeps outside it. A 429 with ``Retry-After`` pauses *all* callers, not just the one that
was refused.

:class:`SharedRateLimiter` (``ROSSFLOW_RATE_LIMIT=shared``) keeps one budget per Rossum
organisation for all workers on all hosts, in the state store
(:class:`~rossflow.state.ratelimits.RateLimitStore`: the SQLite file of one host, or PostgreSQL
via ``ROSSFLOW_STATE_URL``). A process reserves a few slots per round trip (0.3 s worth: 3 at
10 req/s) and spends them locally; a 429 pauses the shared budget, so every worker waits.
When the store cannot be reached it falls back to the in-process budget, with a warning, and
tries the store again after a while.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("rossflow.rossum")

MODE_ENV = "ROSSFLOW_RATE_LIMIT"
MODES = ("local", "shared")


class Limiter(Protocol):
    """What :class:`~rossflow.rossum.client.RossumClient` needs from a rate limiter."""

    rate: float

    async def acquire(self) -> None: ...

    def pause(self, seconds: float) -> None: ...


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


class BudgetStore(Protocol):
    """Where a shared budget lives (:class:`~rossflow.state.ratelimits.RateLimitStore`)."""

    def reserve(
        self, key: str, count: int, *, rate: float, burst: int = 1, horizon: float = 2.0
    ) -> Any: ...

    def pause(self, key: str, seconds: float) -> None: ...

    def close(self) -> None: ...


class RateLimitConfigError(ValueError):
    """``ROSSFLOW_RATE_LIMIT`` has a value rossflow does not know."""


def shared_mode(shared: bool | None = None) -> bool:
    """``shared`` if given, else ``ROSSFLOW_RATE_LIMIT`` (``local`` by default)."""
    if shared is not None:
        return shared
    value = os.environ.get(MODE_ENV, "").strip().lower() or "local"
    if value not in MODES:
        raise RateLimitConfigError(
            f"{MODE_ENV}={value!r}: use 'local' (one budget per process) or 'shared'"
            " (one budget for all workers, in the state store)"
        )
    return value == "shared"


def default_rate_limit_key(base_url: str) -> str:
    """The default budget key of a Rossum API base: host and path, e.g. ``acme.rossum.app/api``
    (one organisation per host on Rossum's hosted service)."""
    parts = urlsplit(base_url.rstrip("/"))
    return f"{parts.netloc.lower()}{parts.path.rstrip('/')}"


class SharedRateLimiter:
    """One budget for ``key`` across processes and hosts (see the module docstring).

    Slots reserved from the store are spent in order by this process's callers; a slot nobody
    used within one interval after its time is dropped, never saved up, so the budget is never
    exceeded by a process catching up. ``store_factory`` opens the store lazily (in a thread)."""

    RETRY_STORE_S = 10.0

    def __init__(
        self,
        key: str,
        rate_per_s: float,
        store_factory: Callable[[], BudgetStore],
        *,
        burst: int = 1,
        horizon_s: float = 2.0,
        batch_s: float = 0.3,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.key = key
        self.rate = float(rate_per_s)
        self.burst = max(1, int(burst))
        self.horizon = max(horizon_s, 1.0 / self.rate)
        self.batch_s = batch_s
        self.batch = max(1, int(self.rate * batch_s))
        self.fallback = RateLimiter(self.rate, self.burst)
        self._store_factory = store_factory
        self._store: BudgetStore | None = None
        self._open_lock = threading.Lock()
        self._slots: deque[float] = deque()  # monotonic times of reserved slots
        self._paused_until = 0.0
        self._waiting = 0
        self._fallback_until = 0.0
        self._next_ask = 0.0
        self._last_slot = 0.0
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self.reservations = 0  # round trips to the store (for tests and benchmarks)

    # -- local slots --------------------------------------------------------------------------

    def _take(self) -> float | None:
        """Wait before the next reserved slot (taken), or None when none is left."""
        with self._lock:
            now = time.monotonic()
            late = 1.0 / self.rate
            while self._slots and self._slots[0] + late < now:
                self._slots.popleft()  # unused: dropped, not saved up
            if not self._slots:
                return None
            return max(0.0, self._slots.popleft() - now)

    def _pause_left(self) -> float:
        with self._lock:
            return self._paused_until - time.monotonic()

    async def acquire(self) -> None:
        with self._lock:
            self._waiting += 1
        try:
            while True:
                paused = self._pause_left()
                if paused > 0:
                    await asyncio.sleep(paused)
                    continue
                if time.monotonic() < self._fallback_until:
                    await self.fallback.acquire()
                    return
                wait = self._take()
                if wait is not None:
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if self._pause_left() > 0:
                        continue  # a 429 arrived meanwhile: this slot is void
                    return
                retry_in = await asyncio.to_thread(self._refill)
                if retry_in > 0:
                    await asyncio.sleep(retry_in)
        finally:
            with self._lock:
                self._waiting -= 1

    # -- the store ----------------------------------------------------------------------------

    def _open(self) -> BudgetStore:
        with self._open_lock:
            if self._store is None:
                self._store = self._store_factory()
            return self._store

    def connect(self) -> None:
        """Open the store now (creating its table) instead of on the first request."""
        self._open()

    def _refill(self) -> float:
        """Reserve slots for the callers waiting now (one caller at a time per process);
        returns how long to wait before asking again."""
        with self._fetch_lock:
            with self._lock:
                if self._slots or time.monotonic() < self._fallback_until:
                    return 0.0  # another caller just reserved, or found the store down
                count = min(self.batch, max(1, self._waiting))
                now = time.monotonic()
                # Hold at most about two batches ahead: slots already taken by callers that
                # are sleeping until them count too (a pause must reach everyone soon).
                not_yet = max(self._next_ask - now, self._last_slot - now - self.batch_s)
            if not_yet > 0:
                return not_yet  # the store said when; asking earlier would only cost
            try:
                grant = self._open().reserve(
                    self.key, count, rate=self.rate, burst=self.burst, horizon=self.horizon
                )
            except Exception as exc:  # the store is down: fail safe to this process's budget
                self._store_unreachable(exc)
                return 0.0
            now = time.monotonic()
            self.reservations += 1
            with self._lock:
                self._slots.extend(now + offset for offset in grant.offsets)
                if grant.offsets:
                    self._last_slot = now + grant.offsets[-1]
                self._next_ask = now + float(grant.retry_in)
            return float(grant.retry_in)

    def _store_unreachable(self, exc: BaseException) -> None:
        self._fallback_until = time.monotonic() + self.RETRY_STORE_S
        log.warning(
            "shared rate limit %r: state store unreachable (%s: %s); using this process's own"
            " budget of %.4g req/s for %.0f s, then trying the store again",
            self.key,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            self.rate,
            self.RETRY_STORE_S,
        )
        with self._open_lock:
            store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: S110 - a broken store may fail to close; it is dropped
                pass

    def pause(self, seconds: float) -> None:
        """Hold this process back at once and every worker via the store (Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self._slots.clear()
            self._next_ask = self._last_slot = 0.0
        self.fallback.pause(seconds)
        threading.Thread(target=self._pause_store, args=(seconds,), daemon=True).start()

    def _pause_store(self, seconds: float) -> None:
        try:
            self._open().pause(self.key, seconds)
        except Exception as exc:
            self._store_unreachable(exc)


_shared_registry: dict[tuple[str, str | None], SharedRateLimiter] = {}


def _default_store() -> BudgetStore:
    from rossflow.state.ratelimits import RateLimitStore

    return RateLimitStore()


def shared_store_limiter(
    key: str,
    rate_per_s: float,
    burst: int = 1,
    *,
    store_factory: Callable[[], BudgetStore] | None = None,
) -> SharedRateLimiter:
    """The process's :class:`SharedRateLimiter` for ``key`` (and the configured state URL),
    created on first use; a later call with another rate retunes it."""
    url = os.environ.get("ROSSFLOW_STATE_URL", "").strip() or None
    with _registry_lock:
        limiter = _shared_registry.get((key, url))
        if limiter is None:
            limiter = _shared_registry[(key, url)] = SharedRateLimiter(
                key, rate_per_s, store_factory or _default_store, burst=burst
            )
        elif limiter.rate != rate_per_s:
            limiter.rate = limiter.fallback.rate = float(rate_per_s)
            limiter.batch = max(1, int(limiter.rate * limiter.batch_s))
        return limiter
