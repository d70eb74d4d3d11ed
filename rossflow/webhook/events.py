"""Rossum hook payloads → Prefect events, and delivering them to the Prefect server.

One event per annotation status change::

    event     rossum.annotation.status_changed
    resource  rossum.annotation.<id>      labels: rossum.annotation.id, rossum.annotation.status,
                                                  rossum.annotation.previous_status, rossum.queue.id
    related   rossum.queue.<id>     (role queue)
              rossum.document.<id>  (role document), rossum.hook.<id> (role hook) when known
    payload   status, previous_status, request_id, rossum_timestamp, annotation/queue/document URLs,
              original_file_name, hook. Never the hook's secrets or the Rossum token.

The event id is derived from Rossum's ``request_id`` (UUID5), so a retried delivery that slips past
the receiver's own de-duplication is still stored once by the Prefect server. ``occurred`` is the
time the receiver got the call (not Rossum's ``timestamp``): the deployment trigger's coalescing
window reasons about when the annotation was already in its new status (see docs/triggers.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from prefect.events import Event

logger = logging.getLogger("rossflow.webhook")

STATUS_CHANGED = "rossum.annotation.status_changed"
#: UUID5 namespace of rossflow webhook events (event id = uuid5(NAMESPACE, request_id)).
NAMESPACE = uuid.UUID("6f0e7a52-64d8-4c55-9d0e-2f1c8f1c3a10")

_TRAILING_ID = re.compile(r"/(\d+)/?$")


class PayloadError(ValueError):
    """The payload is JSON but not a usable Rossum hook call (→ 400)."""


class EmitError(RuntimeError):
    """The Prefect server did not take the event within the time budget (→ 503)."""


def _id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        match = _TRAILING_ID.search(value)
        if match:
            return int(match.group(1))
    if isinstance(value, dict):
        return _id(value.get("id")) or _id(value.get("url"))
    return None


def event_id(request_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, request_id)


def status_changed_event(payload: dict[str, Any], occurred: datetime | None = None) -> Event:
    """The Prefect event for an ``annotation_status`` / ``changed`` hook payload."""
    annotation = payload.get("annotation")
    if not isinstance(annotation, dict):
        raise PayloadError("annotation_status payload without an 'annotation' object")
    annotation_id = _id(annotation)
    queue_id = _id(annotation.get("queue"))
    status = annotation.get("status")
    if annotation_id is None or queue_id is None or not isinstance(status, str) or not status:
        raise PayloadError("annotation needs 'id', 'queue' and 'status'")
    previous = annotation.get("previous_status")
    previous = previous if isinstance(previous, str) else ""
    document = payload.get("document") if isinstance(payload.get("document"), dict) else {}
    document_id = _id(document) or _id(annotation.get("document"))
    file_name = document.get("original_file_name") if isinstance(document, dict) else None
    hook_id = _id(payload.get("hook"))
    request_id = str(payload["request_id"])

    resource = {
        "prefect.resource.id": f"rossum.annotation.{annotation_id}",
        "prefect.resource.name": str(file_name or f"annotation {annotation_id}"),
        "rossum.annotation.id": str(annotation_id),
        "rossum.annotation.status": status,
        "rossum.annotation.previous_status": previous,
        "rossum.queue.id": str(queue_id),
    }
    related = [
        {
            "prefect.resource.id": f"rossum.queue.{queue_id}",
            "prefect.resource.role": "queue",
            "prefect.resource.name": f"queue {queue_id}",
        }
    ]
    if document_id is not None:
        related.append(
            {
                "prefect.resource.id": f"rossum.document.{document_id}",
                "prefect.resource.role": "document",
            }
        )
    if hook_id is not None:
        related.append(
            {"prefect.resource.id": f"rossum.hook.{hook_id}", "prefect.resource.role": "hook"}
        )
    body = {
        "status": status,
        "previous_status": previous or None,
        "request_id": request_id,
        "rossum_timestamp": payload.get("timestamp"),
        "annotation_id": annotation_id,
        "annotation_url": annotation.get("url"),
        "queue_id": queue_id,
        "queue_url": annotation.get("queue"),
        "document_id": document_id,
        "original_file_name": file_name,
        "hook": payload.get("hook"),
        "base_url": payload.get("base_url"),
    }
    return Event.model_validate(
        {
            "id": event_id(request_id),
            "occurred": occurred or datetime.now(UTC),
            "event": STATUS_CHANGED,
            "resource": resource,
            "related": related,
            "payload": {k: v for k, v in body.items() if v is not None},
        }
    )


class Emitter(Protocol):
    async def emit(self, event: Event) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class PrefectEmitter:
    """Sends events over Prefect's events websocket and waits for the server to take each one.

    The events client is opened once and kept; every event is checkpointed (a ping after the
    send: once the pong is back the server has read the event). On any failure the client is
    dropped, and the send is retried with backoff until ``timeout_s`` has passed, then
    :class:`EmitError` is raised so the receiver can answer 503 and Rossum retries.
    """

    def __init__(self, api_url: str, timeout_s: float = 5.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _open(self) -> Any:
        if self._client is None:
            from prefect.events.clients import PrefectEventsClient

            client = PrefectEventsClient(
                api_url=self.api_url, reconnection_attempts=1, checkpoint_every=1
            )
            await client.__aenter__()
            self._client = client
        return self._client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.__aexit__(None, None, None), 2)
            except Exception:  # a dead connection may fail to close
                logger.debug("closing the events client failed", exc_info=True)

    async def emit(self, event: Event) -> None:
        # The budget starts now, waiting for the lock included: during an outage every pending
        # call gets its 503 within ``timeout_s`` instead of queueing behind the others' retries.
        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        attempt = 0
        try:
            await asyncio.wait_for(self._lock.acquire(), self.timeout_s)
        except TimeoutError:
            raise EmitError(
                f"Prefect server at {self.api_url} is not taking events (busy retrying for "
                f"{self.timeout_s:g}s)"
            ) from None
        try:
            while True:
                attempt += 1
                remaining = deadline - time.monotonic()
                try:
                    client = await asyncio.wait_for(self._open(), max(0.1, remaining))
                    remaining = max(0.1, deadline - time.monotonic())
                    await asyncio.wait_for(client.emit(event), remaining)
                    return
                except Exception as exc:  # any failure: drop the client, retry
                    await self._drop()
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    if time.monotonic() + delay >= deadline:
                        raise EmitError(
                            f"Prefect server at {self.api_url} did not take the event after "
                            f"{attempt} attempt(s) in {self.timeout_s:g}s ({reason})"
                        ) from exc
                    logger.warning("emitting to %s failed (%s); retrying", self.api_url, reason)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        finally:
            self._lock.release()

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.api_url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
