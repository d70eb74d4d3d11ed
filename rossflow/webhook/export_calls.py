"""``annotation_content.export`` hook calls: Rossum's asynchronous hook protocol on top of jobs.

``POST /rossum`` with an export call (signature checked by the receiver first):

==========================================  ======  ==========================================
situation                                   answer  notes
==========================================  ======  ==========================================
no annotation id / queue / content tree     400     the reason
receiver started without a job store        200     ``error`` message (annotation →
                                                    ``failed_export``): says how to configure
queue not in ``export_queues``              200     ``error`` message naming the queue
new job, or a retry of an unfinished one    202     ``Location: <hook url>/jobs/<job id>``; a
                                                    Prefect event asks for a flow run
job finished within ``fast_path_s``         200     the result itself (optional fast path)
job already finished (same call or same    200     the stored result; nothing runs again
content, successful)
Prefect server does not take the event      503     ``Retry-After``; Rossum calls again
==========================================  ======  ==========================================

``GET <hook url>/jobs/<id>`` (Rossum polls it): ``202`` while the job waits or runs, ``201`` with
``{"messages": [...], "operations": [...]}`` once the result is stored, ``404`` for an unknown
or expired job. A job whose worker died (lease expired) is queued again and its event emitted
again; a job no flow run claims within ``claim_timeout_s`` is answered with an ``error`` message
(no deployment serves its queue), so nothing stays ``exporting`` silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prefect.events import Event
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rossflow.webhook.events import NAMESPACE, EmitError, PayloadError, _id
from rossflow.webhook.jobs import Job, job_key
from rossflow.webhook.rejections import reject

if TYPE_CHECKING:
    from rossflow.webhook.app import ReceiverState

logger = logging.getLogger("rossflow.webhook")

EXPORT_REQUESTED = "rossum.annotation.export_requested"


def error_result(text: str) -> dict[str, Any]:
    return {"messages": [{"id": "all", "type": "error", "content": text}], "operations": []}


def parse_export_call(payload: dict[str, Any]) -> tuple[int, int, list[Any]]:
    """(annotation id, queue id, content tree) of an export call, or :class:`PayloadError`."""
    annotation = payload.get("annotation")
    if not isinstance(annotation, dict):
        raise PayloadError("annotation_content.export payload without an 'annotation' object")
    annotation_id = _id(annotation)
    queue_id = _id(annotation.get("queue"))
    if annotation_id is None or queue_id is None:
        raise PayloadError("annotation needs 'id' (or 'url') and 'queue'")
    content = annotation.get("content")
    if not isinstance(content, list):
        raise PayloadError(
            f"annotation {annotation_id}: 'annotation.content' must be the content tree (a list)"
        )
    return annotation_id, queue_id, content


def forced(payload: dict[str, Any]) -> bool:
    """The call asks to send every step again: hook ``settings.force_resend`` or annotation
    metadata ``rossflow_force_resend`` set to true."""
    settings = payload.get("settings") if isinstance(payload.get("settings"), dict) else {}
    annotation = payload.get("annotation") or {}
    metadata = annotation.get("metadata") if isinstance(annotation.get("metadata"), dict) else {}
    return bool(settings.get("force_resend")) or bool(metadata.get("rossflow_force_resend"))


def export_requested_event(job: Job, request_id: str, *, again: bool = False) -> Event:
    """``rossum.annotation.export_requested`` for a job (what the deployment trigger matches)."""
    payload = job.payload
    document = payload.get("document") if isinstance(payload.get("document"), dict) else {}
    name = document.get("original_file_name") or f"annotation {job.annotation_id}"
    event_id = (
        uuid.uuid4() if again else uuid.uuid5(NAMESPACE, f"export:{request_id}:{job.generation}")
    )
    return Event.model_validate(
        {
            "id": event_id,
            "occurred": datetime.now(UTC),
            "event": EXPORT_REQUESTED,
            "resource": {
                "prefect.resource.id": f"rossum.annotation.{job.annotation_id}",
                "prefect.resource.name": str(name),
                "rossum.annotation.id": str(job.annotation_id),
                "rossum.queue.id": str(job.queue_id),
                "rossflow.job.id": job.job_id,
            },
            "related": [
                {
                    "prefect.resource.id": f"rossum.queue.{job.queue_id}",
                    "prefect.resource.role": "queue",
                    "prefect.resource.name": f"queue {job.queue_id}",
                }
            ],
            "payload": {
                "job_id": job.job_id,
                "request_id": request_id,
                "annotation_id": job.annotation_id,
                "queue_id": job.queue_id,
                "generation": job.generation,
            },
        }
    )


def _location(state: ReceiverState, request: Request, job_id: str) -> str:
    base = state.settings.public_url or str(request.base_url)
    return base.rstrip("/") + state.settings.path + "/jobs/" + job_id


async def _emit(state: ReceiverState, job: Job, request_id: str, *, again: bool) -> None:
    await state.emitter.emit(export_requested_event(job, request_id, again=again))
    state.last_emit[job.job_id] = time.monotonic()
    state.counters["export_emitted"] += 1


async def _answer(state: ReceiverState, request: Request, job: Job) -> Response:
    jobs = state.jobs
    assert jobs is not None
    if not job.done and state.settings.fast_path_s > 0:
        deadline = time.monotonic() + state.settings.fast_path_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            current = await asyncio.to_thread(jobs.get, job.job_id)
            if current is not None and current.done:
                job = current
                break
    if job.done and job.result is not None:
        state.counters["export_answered"] += 1
        return JSONResponse(job.result, status_code=200)
    return JSONResponse(
        {"status": job.state, "job": job.job_id},
        status_code=202,
        headers={"Location": _location(state, request, job.job_id)},
    )


async def receive_export(
    state: ReceiverState, request: Request, payload: dict[str, Any]
) -> Response:
    """An ``annotation_content.export`` call whose signature was verified."""
    try:
        annotation_id, queue_id, content = parse_export_call(payload)
    except PayloadError as exc:
        return reject(state.counters, 400, str(exc))
    request_id = str(payload["request_id"])
    settings = state.settings
    state.counters["export_calls"] += 1
    if state.jobs is None:
        return JSONResponse(
            error_result(
                "rossflow webhook runs without an export job store, so it cannot run the export "
                f"of annotation {annotation_id}: start it with --jobs-db (the file rossflow serve "
                "--event-queues uses)"
            )
        )
    if settings.export_queues is not None and queue_id not in settings.export_queues:
        state.counters["export_no_pipeline"] += 1
        served = ", ".join(str(q) for q in sorted(settings.export_queues)) or "none"
        return JSONResponse(
            error_result(
                f"queue {queue_id} has no export pipeline in rossflow (export-event queues: "
                f"{served}); annotation {annotation_id} was not exported. Add the queue to a "
                f"pipeline (rossflow serve --event-queues {queue_id}, rossflow webhook "
                f"--export-queues) and retry the export."
            )
        )
    jobs = state.jobs
    async with state.exclusive(f"annotation:{annotation_id}"):
        job = await asyncio.to_thread(jobs.for_call, request_id)
        if job is None:
            job, what = await asyncio.to_thread(
                jobs.submit,
                request_id,
                payload,
                annotation_id=annotation_id,
                queue_id=queue_id,
                key=job_key(annotation_id, content),
                force=forced(payload),
            )
        else:
            what = "retried"
        emit = what in ("created", "reopened")
        if not emit and not job.done:
            if job.lease_expired() and await asyncio.to_thread(jobs.requeue, job.job_id):
                logger.warning("job %s: its worker stopped; queued again", job.job_id)
                emit = True
            elif job.state == "pending":
                emit = True  # the event may have been lost (503 before, or absorbed): again
        if emit:
            try:
                await _emit(state, job, request_id, again=what not in ("created", "reopened"))
            except EmitError as exc:
                return reject(state.counters, 503, str(exc), headers={"Retry-After": "5"})
    logger.info(
        "export call %s: annotation %s (queue %s) → job %s %s",
        request_id,
        annotation_id,
        queue_id,
        job.job_id,
        what,
    )
    return await _answer(state, request, job)


async def poll_job(request: Request) -> Response:
    """``GET <path>/jobs/<id>``: 202 while running, 201 with the result, 404 when unknown."""
    state: ReceiverState = request.app.state.receiver
    jobs = state.jobs
    job_id = request.path_params["job_id"]
    job = await asyncio.to_thread(jobs.get, job_id) if jobs is not None else None
    if job is None:
        return JSONResponse({"detail": f"unknown or expired job {job_id}"}, status_code=404)
    if job.done and job.result is not None:
        return JSONResponse(job.result, status_code=201)
    settings = state.settings
    now = time.time()
    if job.lease_expired(now):
        if await asyncio.to_thread(jobs.requeue, job.job_id):
            logger.warning("job %s: its worker stopped; queued again", job.job_id)
            job = await asyncio.to_thread(jobs.get, job_id) or job
            await _try_emit(state, job)
    elif job.state == "pending":
        waited = now - job.queued_at
        if waited > settings.claim_timeout_s:
            text = (
                f"no rossflow export run took annotation {job.annotation_id} within "
                f"{settings.claim_timeout_s:g}s: is a deployment serving queue {job.queue_id} "
                f"(rossflow serve --event-queues {job.queue_id}) and is its runner up? "
                "Nothing was delivered; retry the export once it runs."
            )
            result = error_result(text)
            if await asyncio.to_thread(
                jobs.finish, job.job_id, job.generation, ok=False, result=result
            ):
                state.counters["export_unclaimed"] += 1
                return JSONResponse(result, status_code=201)
        last = state.last_emit.get(job.job_id, 0.0)
        if waited > settings.reemit_after_s and time.monotonic() - last > settings.reemit_after_s:
            await _try_emit(state, job)
    return JSONResponse({"status": job.state, "job": job.job_id}, status_code=202)


async def _try_emit(state: ReceiverState, job: Job) -> None:
    try:
        await _emit(state, job, job.job_id, again=True)
    except EmitError as exc:
        logger.warning("job %s: emitting again failed (%s); next poll retries", job.job_id, exc)
