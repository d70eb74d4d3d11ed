"""Fault injection, global rate limiting and request statistics (an ASGI wrapper around the app).

Fault rules (``POST /_sandbox/faults`` ``{"rules": [...]}`` replaces all; ``DELETE`` clears)::

    {"method": "POST",             # optional; null/"*" = any method
     "path": "/api/v1/uploads",    # regex matched with re.match at the start of the path,
                                   # so a plain string is a prefix match
     "kind": "latency" | "rate_limit" | "error" | "drop_before" | "drop_after",
     "latency_s": 0.2,             # latency: sleep, then continue with the next rule / the app
     "status": 503,                # error: status code, body per spec §3.4
     "retry_after": 2,             # rate_limit (default 1) / error (optional): Retry-After header
     "times": 1,                   # how many requests it applies to; null = unlimited
     "probability": 1.0}           # chance to apply to a matching request

Rules are checked in order: every matching ``latency`` rule adds its delay, the first matching
rule of another kind decides the outcome. ``drop_before`` closes the connection without running
the request; ``drop_after`` runs it completely (e.g. the upload is created) and then closes the
connection instead of answering. In both cases the response head is written and the ASGI app
raises, so uvicorn aborts the connection and the client sees an incomplete response
(``httpx.RemoteProtocolError``). Faults, the rate limit and statistics apply to ``/api/…`` only,
never to the ``/_sandbox`` admin routes.

The global rate limit (``rate_limit_per_s``) is a token bucket (capacity = max(1, rate)) that
answers 429 with the §3.4 body and ``Retry-After: <whole seconds>``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.config import SandboxConfig
from sandbox.util import error_response

KINDS = ("latency", "rate_limit", "error", "drop_before", "drop_after")


class DropConnection(Exception):
    """Raised after the response head so uvicorn aborts the connection (simulated network loss)."""


class _DropLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def silence_drop_logs() -> None:
    """Keep uvicorn from logging a traceback for every deliberate drop."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropLogFilter) for f in logger.filters):
        logger.addFilter(_DropLogFilter())


@dataclass
class FaultRule:
    """One parsed fault rule (see module docstring)."""

    kind: str
    path: str = ""
    method: str | None = None
    latency_s: float = 0.0
    status: int = 503
    retry_after: int | None = None
    times: int | None = None
    probability: float = 1.0
    hits: int = 0

    @classmethod
    def parse(cls, raw: Any) -> FaultRule:
        if not isinstance(raw, dict):
            raise ValueError("a rule must be an object")
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        path = raw.get("path") or ""
        if not isinstance(path, str):
            raise ValueError("path must be a string")
        try:
            re.compile(path)
        except re.error as exc:
            raise ValueError(f"invalid path regex: {exc}") from exc
        method = raw.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string")
        times = raw.get("times")
        bad_times = not isinstance(times, int) or isinstance(times, bool) or times < 0
        if times is not None and bad_times:
            raise ValueError("times must be a non-negative integer or null")
        rule = cls(
            kind=kind,
            path=path,
            method=None if method in (None, "", "*") else method.upper(),
            latency_s=float(raw.get("latency_s") or 0.0),
            status=int(raw.get("status") or (429 if kind == "rate_limit" else 503)),
            retry_after=None if raw.get("retry_after") is None else int(raw["retry_after"]),
            times=times,
            probability=float(1.0 if raw.get("probability") is None else raw["probability"]),
        )
        if rule.kind == "rate_limit" and rule.retry_after is None:
            rule.retry_after = 1
        return rule

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return re.match(self.path, path) is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "latency_s": self.latency_s,
            "status": self.status,
            "retry_after": self.retry_after,
            "times": self.times,
            "probability": self.probability,
            "hits": self.hits,
        }


class FaultInjector:
    """Holds the active rules and picks the ones that apply to a request."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def set_rules(self, raw_rules: Any) -> None:
        if not isinstance(raw_rules, list):
            raise ValueError("rules must be a list")
        self.rules = [FaultRule.parse(r) for r in raw_rules]

    def clear(self) -> None:
        self.rules = []

    def pick(self, method: str, path: str) -> tuple[float, FaultRule | None]:
        """Total latency to add and the terminal rule (if any) for this request."""
        latency = 0.0
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.probability < 1.0 and random.random() >= rule.probability:
                continue
            rule.hits += 1
            if rule.kind == "latency":
                latency += rule.latency_s
                continue
            return latency, rule
        return latency, None


class RateLimiter:
    """Token bucket refilled at ``rate`` tokens/s (capacity max(1, rate))."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.tokens = 0.0
        self.stamp = time.monotonic()

    def reset(self) -> None:
        self.rate, self.tokens, self.stamp = None, 0.0, time.monotonic()

    def check(self, rate: float | None) -> int | None:
        """None when allowed, else the Retry-After seconds."""
        if not rate or rate <= 0:
            self.rate = None
            return None
        now = time.monotonic()
        capacity = max(1.0, rate)
        if self.rate != rate:
            self.rate, self.tokens, self.stamp = rate, capacity, now
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self.tokens) / rate))


class Stats:
    """Request counts by ``METHOD /route/template`` (and by status code), and a timeline of
    the last requests (arrival time, status) for tests that measure rates at the server."""

    TIMELINE_MAX = 200_000

    def __init__(self) -> None:
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.total = 0
        self.timeline: deque[tuple[float, int]] = deque(maxlen=self.TIMELINE_MAX)

    def record(self, key: str) -> None:
        self.by_route[key] += 1
        self.total += 1

    def reset(self) -> None:
        self.by_route.clear()
        self.by_status.clear()
        self.total = 0
        self.timeline.clear()

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "requests": dict(sorted(self.by_route.items())),
            "statuses": {str(k): v for k, v in sorted(self.by_status.items())},
        }


class SandboxMiddleware:
    """Outermost ASGI layer: trailing slashes, stats, rate limit, faults, then the Starlette app."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[Any],
        config: SandboxConfig,
        faults: FaultInjector,
        limiter: RateLimiter,
        stats: Stats,
    ) -> None:
        self.app = app
        self.routes = routes
        self.config = config
        self.faults = faults
        self.limiter = limiter
        self.stats = stats
        #: The :class:`sandbox.core.Sandbox` behind the app (set by ``create_app``).
        self.sandbox: Any = None

    def template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(route.path)
        return scope["path"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope)
            scope["path"] = path = path.rstrip("/") or "/"
            scope["raw_path"] = path.encode()
        if not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        self.stats.record(f"{method} {self.template(scope)}")
        counting_send = self._counting(send, time.time())
        retry_after = self.limiter.check(self.config.rate_limit_per_s)
        if retry_after is not None:
            resp = error_response(429, "global rate limit", {"Retry-After": str(retry_after)})
            await resp(scope, receive, counting_send)
            return
        latency, rule = self.faults.pick(method, path)
        if latency:
            await asyncio.sleep(latency)
        if rule is None or rule.kind == "latency":
            await self.app(scope, receive, counting_send)
            return
        if rule.kind == "rate_limit":
            resp = error_response(
                429, "injected rate_limit fault", {"Retry-After": str(rule.retry_after or 1)}
            )
            await resp(scope, receive, counting_send)
        elif rule.kind == "error":
            headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after else None
            await error_response(rule.status, "injected error fault", headers)(
                scope, receive, counting_send
            )
        elif rule.kind == "drop_before":
            # Read (and discard) the body first: closing a socket with unread data makes the
            # kernel send RST, and the client would see a reset instead of a dropped response.
            while (await receive()).get("more_body"):
                pass
            await self._drop(send)
        else:  # drop_after

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            await self._drop(send)

    def _counting(self, send: Send, arrived: float) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.stats.by_status[int(message["status"])] += 1
                self.stats.timeline.append((arrived, int(message["status"])))
            await send(message)

        return wrapped

    @staticmethod
    async def _drop(send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise DropConnection("sandbox fault: connection dropped")
