"""The receiver: Rossum hook calls in, Prefect events out (Starlette).

``POST /rossum`` (the hook's ``config.url``), checked in this order; nothing is emitted unless
every check passes:

=======================================  ======  ===============================================
check                                    answer  notes
=======================================  ======  ===============================================
``Content-Type`` is not JSON             415     before the body is read
body larger than ``max_body_bytes``      413     ``Content-Length`` first, then counted
signature missing or wrong               401     ``X-Rossum-Signature-SHA256`` or
                                                 ``X-Elis-Signature``
body not a JSON object / no request_id   400     also an ``annotation_status`` call without
                                                 annotation id, queue or status
event other than annotation_status       200     ``{"status": "ignored"}``, logged; a hook that
                                                 subscribes to more events must not look broken
``request_id`` already passed on         200     ``{"status": "duplicate"}``, nothing emitted
Prefect server does not take the event   503     after retrying for ``emit_timeout_s``; with
                                                 ``Retry-After``, so Rossum delivers again
emitted                                  200     ``{"status": "accepted", "event_id": …}``
=======================================  ======  ===============================================

``GET /rossum/jobs/<id>`` is the polling URL of an export job. ``GET /health`` answers 200 with
counters while the process is up; ``GET /ready`` is 200 only when
the Prefect API answers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rossflow.webhook.dedup import DedupStore
from rossflow.webhook.events import (
    STATUS_CHANGED,
    EmitError,
    Emitter,
    PayloadError,
    PrefectEmitter,
    status_changed_event,
)
from rossflow.webhook.export_calls import poll_job, receive_export
from rossflow.webhook.jobs import JobStore
from rossflow.webhook.rejections import reject
from rossflow.webhook.signature import verify

logger = logging.getLogger("rossflow.webhook")

#: (event, action) pairs that become Prefect events.
HANDLED = {("annotation_status", "changed")}
#: Answered with the asynchronous hook protocol (export-event mode).
EXPORT = ("annotation_content", "export")


@dataclass
class WebhookSettings:
    """Receiver configuration (see ``rossflow webhook --help``)."""

    #: Hook secrets; a body signed with any of them is accepted (rotation).
    secrets: list[str]
    #: Prefect API (``http://host:4200/api``); default: the ``PREFECT_API_URL`` setting.
    prefect_api_url: str | None = None
    max_body_bytes: int = 1_048_576
    #: SQLite file remembering request ids, or ``:memory:``.
    dedup_path: str = ":memory:"
    dedup_ttl_s: float = 86_400.0
    #: How long to keep retrying the Prefect server before answering 503.
    emit_timeout_s: float = 5.0
    path: str = "/rossum"
    #: Export-event mode: SQLite file of export jobs, shared with the flow runs
    #: (``rossflow serve --event-queues``); None answers export calls with an error message.
    jobs_path: str | None = None
    #: Queues that have an export-event pipeline; a call for another queue is answered with an
    #: error message naming it. None: any queue (an unserved one times out, see claim_timeout_s).
    export_queues: list[int] | None = None
    #: Wait this long for the result before answering 202 (0: always 202 + polling URL).
    fast_path_s: float = 0.0
    #: A job no flow run claims within this time is answered with an error message.
    claim_timeout_s: float = 120.0
    #: A pending job's event is emitted again when polled after this long (lost/absorbed event).
    reemit_after_s: float = 10.0
    #: Base of the polling URL (``https://rossflow.example.com``); default: the request's.
    public_url: str | None = None

    def __post_init__(self) -> None:
        self.secrets = [s for s in self.secrets if s]
        if not self.secrets:
            raise ValueError("the webhook receiver needs at least one hook secret")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")


@dataclass
class ReceiverState:
    settings: WebhookSettings
    emitter: Emitter
    dedup: DedupStore
    counters: Counter[str] = field(default_factory=Counter)
    jobs: JobStore | None = None
    last_emit: dict[str, float] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _waiters: Counter[str] = field(default_factory=Counter)

    @contextlib.asynccontextmanager
    async def exclusive(self, request_id: str) -> AsyncIterator[None]:
        """One delivery of a ``request_id`` at a time (concurrent retries wait, then dedupe)."""
        lock = self._locks.setdefault(request_id, asyncio.Lock())
        self._waiters[request_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._waiters[request_id] -= 1
            if not self._waiters[request_id]:
                del self._waiters[request_id]
                self._locks.pop(request_id, None)


def _reject(
    state: ReceiverState, status: int, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return reject(state.counters, status, reason, headers)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it grows beyond ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def receive_hook(request: Request) -> Response:
    state: ReceiverState = request.app.state.receiver
    settings = state.settings
    state.counters["received"] += 1
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return _reject(state, 415, f"content type {media_type or 'missing'}; send application/json")
    body = await _read_limited(request, settings.max_body_bytes)
    if body is None:
        return _reject(state, 413, f"body larger than {settings.max_body_bytes} bytes")
    problem = verify(request.headers, body, settings.secrets)
    if problem:
        return _reject(state, 401, problem)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return _reject(state, 400, f"body is not JSON: {exc}")
    if not isinstance(payload, dict):
        return _reject(state, 400, "body is not a JSON object")
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        return _reject(state, 400, "request_id missing")
    kind = (payload.get("event"), payload.get("action"))
    if kind == EXPORT:
        return await receive_export(state, request, payload)
    if kind not in HANDLED:
        state.counters["ignored"] += 1
        logger.info("ignored hook call %s: event %s.%s is not handled", request_id, *kind)
        return JSONResponse(
            {"status": "ignored", "reason": f"event {kind[0]}.{kind[1]} is not handled"}
        )
    try:
        event = status_changed_event(payload, occurred=datetime.now(UTC))
    except PayloadError as exc:
        return _reject(state, 400, str(exc))

    async with state.exclusive(request_id):
        previous = state.dedup.seen(request_id)
        if previous is not None:
            state.counters["duplicates"] += 1
            logger.info("duplicate hook call %s (event %s already emitted)", request_id, previous)
            return JSONResponse({"status": "duplicate", "event_id": previous})
        try:
            await state.emitter.emit(event)
        except EmitError as exc:
            return _reject(state, 503, str(exc), headers={"Retry-After": "5"})
        state.dedup.remember(request_id, str(event.id))
    state.counters["emitted"] += 1
    logger.info(
        "annotation %s → %s (queue %s): emitted %s %s",
        event.resource["rossum.annotation.id"],
        event.resource["rossum.annotation.status"],
        event.resource["rossum.queue.id"],
        STATUS_CHANGED,
        event.id,
    )
    return JSONResponse({"status": "accepted", "event": STATUS_CHANGED, "event_id": str(event.id)})


async def health(request: Request) -> Response:
    state: ReceiverState = request.app.state.receiver
    return JSONResponse({"status": "ok", "counters": dict(state.counters)})


async def ready(request: Request) -> Response:
    state: ReceiverState = request.app.state.receiver
    ok = await state.emitter.ready()
    return JSONResponse(
        {"status": "ready" if ok else "prefect unavailable"}, status_code=200 if ok else 503
    )


def create_app(settings: WebhookSettings, emitter: Emitter | None = None) -> Starlette:
    """The receiver as an ASGI app; ``emitter`` defaults to the Prefect server's events API."""
    if emitter is None:
        api_url = settings.prefect_api_url
        if not api_url:
            from prefect.settings import PREFECT_API_URL

            api_url = PREFECT_API_URL.value()
        if not api_url:
            raise ValueError("no Prefect API: pass prefect_api_url or set PREFECT_API_URL")
        emitter = PrefectEmitter(api_url, timeout_s=settings.emit_timeout_s)
    state = ReceiverState(
        settings=settings,
        emitter=emitter,
        dedup=DedupStore(settings.dedup_path, ttl_s=settings.dedup_ttl_s),
        jobs=JobStore(settings.jobs_path) if settings.jobs_path else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.emitter.close()
            state.dedup.close()
            if state.jobs is not None:
                state.jobs.close()

    app = Starlette(
        routes=[
            Route(settings.path, receive_hook, methods=["POST"]),
            Route(settings.path + "/jobs/{job_id}", poll_job, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = state
    return app
