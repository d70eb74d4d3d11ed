"""Webhook delivery: signing, timeouts, retries, asynchronous (202 + Location) replies, records.

What fires when is decided by :mod:`sandbox.hook_events`; this module only delivers one payload
to one hook the way Rossum does (spec §9):

* ``Content-Type: application/json``; when ``config.secret`` is set, the raw body is signed with
  ``X-Rossum-Signature-SHA256: sha256=<hex HMAC-SHA256(secret, body)>`` and the legacy
  ``X-Elis-Signature: sha1=<hex HMAC-SHA1(secret, body)>``.
* timeout ``config.timeout_s`` (default 30, max 60);
* non-interactive events are retried up to ``config.retry_count`` (default 4, max 4) times on
  transport errors and 408/429/500/502/503/504 (any non-2xx with ``retry_on_any_non_2xx``), with
  exponential backoff ``hook_retry_backoff_s * 2**(attempt-1)`` (capped at 30 s);
* a ``202`` reply with a ``Location`` header is polled (GET) every ``hook_poll_interval_s`` until it
  answers ``201`` (its body is the result); 408/429/5xx polls are tolerated; polling stops after
  ``config.max_polling_time_s`` (default 300) and other poll failures retry the original call
  when ``config.retry_after_polling_failure`` (default true). As in Rossum, both settings are
  read only for ``upload.created`` and ``invocation.scheduled``; every other event polls for
  the sandbox setting ``hook_max_polling_time_s`` (300 s, lower it in tests) and always retries.

Every call is recorded (``GET /_sandbox/hook_deliveries``) with the payload, sent headers and
attempt outcomes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from sandbox.config import SandboxConfig
from sandbox.util import now_iso

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Events whose ``max_polling_time_s`` / ``retry_after_polling_failure`` the hook may configure.
POLLING_CONFIGURABLE = frozenset({"upload.created", "invocation.scheduled"})
MAX_RECORDS = 2_000


def signature_headers(secret: str, body: bytes) -> dict[str, str]:
    """Both Rossum signature headers for ``body``."""
    key = secret.encode()
    return {
        "X-Rossum-Signature-SHA256": "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
        "X-Elis-Signature": "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest(),
    }


@dataclass
class HookCallResult:
    """Outcome of delivering one payload (after retries and polling)."""

    ok: bool
    status_code: int | None = None
    body: Any = None
    error: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []

    def operations(self) -> list[dict[str, Any]]:
        ops = self.body.get("operations") if isinstance(self.body, dict) else None
        return [o for o in ops if isinstance(o, dict)] if isinstance(ops, list) else []


class HookDispatcher:
    """Delivers hook payloads with Rossum's signing and retry rules and records every call."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._sem = asyncio.Semaphore(32)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._sem = asyncio.Semaphore(32)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def deliver(
        self,
        hook: dict[str, Any],
        payload: dict[str, Any],
        *,
        retry: bool = True,
        context: dict[str, Any] | None = None,
    ) -> HookCallResult:
        """POST ``payload`` to ``hook.config.url``; never raises."""
        config = hook.get("config") or {}
        url = str(config.get("url") or "")
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "rossflow-sandbox/1"}
        if config.get("secret"):
            headers.update(signature_headers(str(config["secret"]), body))
        timeout = _num(config.get("timeout_s"), 30.0, 0.1, 60.0)
        config = self._polling_config(config, f"{payload.get('event')}.{payload.get('action')}")
        retries = int(_num(config.get("retry_count"), 4, 0, 4)) if retry else 0
        any_non_2xx = bool(config.get("retry_on_any_non_2xx", False))
        record: dict[str, Any] = {
            "id": next(self._ids),
            "hook": hook.get("id"),
            "hook_url": url,
            "event": payload.get("event"),
            "action": payload.get("action"),
            "request_id": payload.get("request_id"),
            "annotation": (payload.get("annotation") or {}).get("id")
            if isinstance(payload.get("annotation"), dict)
            else None,
            **(context or {}),
            "status": "running",
            "started_at": now_iso(),
            "finished_at": None,
            "request_headers": headers,
            "payload": payload,
            "attempts": [],
            "response_status": None,
            "response_body": None,
        }
        self.records.append(record)
        result = HookCallResult(ok=False, attempts=record["attempts"])
        async with self._sem:
            for attempt in range(retries + 1):
                if attempt:
                    backoff = min(30.0, self.config.hook_retry_backoff_s * 2 ** (attempt - 1))
                    await asyncio.sleep(backoff)
                outcome = await self._attempt(url, body, headers, timeout, config)
                record["attempts"].append(outcome)
                result.status_code = outcome.get("status_code")
                result.error = outcome.get("error")
                result.body = outcome.get("body")
                code = result.status_code
                if code is not None and 200 <= code < 300 and not outcome.get("poll_failed"):
                    result.ok = True
                    break
                retriable = (
                    code is None
                    or outcome.get("poll_failed")
                    or code in RETRY_STATUSES
                    or (any_non_2xx and not 200 <= code < 300)
                )
                if not retriable:
                    break
        record["status"] = "completed" if result.ok else "failed"
        record["finished_at"] = now_iso()
        record["response_status"] = result.status_code
        record["response_body"] = result.body
        record["error"] = result.error
        return result

    def _polling_config(self, config: dict[str, Any], event: str) -> dict[str, Any]:
        """``config`` with the polling settings Rossum applies to ``event``."""
        if event in POLLING_CONFIGURABLE:
            return config
        return {
            **config,
            "max_polling_time_s": self.config.hook_max_polling_time_s,
            "retry_after_polling_failure": True,
        }

    async def _attempt(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float, config: dict[str, Any]
    ) -> dict[str, Any]:
        started = time.monotonic()
        outcome: dict[str, Any] = {"at": now_iso(), "status_code": None, "error": None}
        try:
            resp = await self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            outcome["duration_s"] = round(time.monotonic() - started, 4)
            return outcome
        outcome["status_code"] = resp.status_code
        outcome["body"] = _body(resp)
        if resp.status_code == 202 and resp.headers.get("location"):
            await self._poll(resp.headers["location"], url, timeout, config, outcome)
        outcome["duration_s"] = round(time.monotonic() - started, 4)
        return outcome

    async def _poll(
        self,
        location: str,
        url: str,
        timeout: float,
        config: dict[str, Any],
        outcome: dict[str, Any],
    ) -> None:
        """Asynchronous hook: poll ``location`` until 201 (spec §9.5)."""
        poll_url = str(httpx.URL(url).join(location))
        limit = _num(config.get("max_polling_time_s"), 300.0, 0.1, 3600.0)
        deadline = time.monotonic() + limit
        outcome["max_polling_time_s"] = limit
        outcome["polls"] = 0
        while True:
            await asyncio.sleep(max(0.01, self.config.hook_poll_interval_s))
            outcome["polls"] += 1
            try:
                resp = await self.client.get(poll_url, timeout=timeout)
            except httpx.HTTPError as exc:
                outcome["error"] = f"poll {type(exc).__name__}: {exc}"
                code = None
            else:
                code = resp.status_code
                if code == 201:
                    outcome["status_code"] = 201
                    outcome["body"] = _body(resp)
                    return
            if code is not None and code not in RETRY_STATUSES and code != 202:
                outcome["status_code"] = code
                outcome["body"] = _body(resp)
                outcome["poll_failed"] = bool(config.get("retry_after_polling_failure", True))
                return
            if time.monotonic() > deadline:
                outcome["status_code"] = 408
                outcome["error"] = "max_polling_time_s exceeded"
                outcome["poll_failed"] = bool(config.get("retry_after_polling_failure", True))
                return


def _num(value: Any, default: float, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(hi, max(lo, float(value)))


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:2000]
