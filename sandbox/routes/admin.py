"""``/_sandbox/…`` admin endpoints: faults, bulk seeding, forced statuses, stats, hook delivery
records, settings, idle, reset and health."""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import seeding
from sandbox.lifecycle import (
    STATUSES,
)
from sandbox.routes._http import (
    json_body,
    path_id,
    sb,
)
from sandbox.seeding import ADMIN_ID
from sandbox.util import (
    ApiError,
    parse_ref,
    public,
)


async def admin_faults(request: Request) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        try:
            box.faults.set_rules(data.get("rules", []))
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from exc
    elif request.method == "DELETE":
        box.faults.clear()
    return JSONResponse({"rules": [r.as_dict() for r in box.faults.rules]})


async def admin_seed(request: Request) -> Response:
    box = sb(request)
    data = await json_body(request, required=True)
    queue_id = parse_ref(data.get("queue", 1), "queues")
    count = data.get("count", 1)
    status = data.get("status", "to_review")
    if queue_id is None or not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ApiError(400, "queue and a non-negative integer count are required")
    if count > 200_000:
        raise ApiError(400, "count must be at most 200000")
    if status not in STATUSES:
        raise ApiError(400, f"invalid status {status!r}")
    started = time.monotonic()
    ids = seeding.seed_annotations(box, queue_id, count, status)
    return JSONResponse(
        {"ids": ids, "count": len(ids), "elapsed_s": round(time.monotonic() - started, 3)},
        status_code=201,
    )


async def admin_confirm_all(request: Request) -> Response:
    """Operator simulation: start + confirm every to_review annotation of a queue."""
    box = sb(request)
    data = await json_body(request)
    queue_id = parse_ref(data.get("queue", 1), "queues")
    if queue_id is None:
        raise ApiError(400, "queue is required")
    queue = box.get_or_404("queues", queue_id)
    user_id = parse_ref(data.get("user", ADMIN_ID), "users") or ADMIN_ID
    confirmed = []
    for aid in box.store.annotation_ids(["queue=?", "status=?"], [queue_id, "to_review"]):
        ann = box.store.get_annotation(aid)
        if ann is None or ann["status"] != "to_review":
            continue
        ann["_pre_start_status"] = "to_review"
        box.set_status(ann, "reviewing", user_id)
        ann.pop("_pre_start_status", None)
        if queue.get("use_confirmed_state"):
            box.set_status(ann, "confirmed", user_id)
        else:
            await box.start_export(ann, user_id, sync=False)
        confirmed.append(aid)
    return JSONResponse({"confirmed": confirmed, "count": len(confirmed)})


async def admin_force_status(request: Request) -> Response:
    """Test helper: put an annotation into any status (no transition checks)."""
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    data = await json_body(request, required=True)
    if data.get("status") not in STATUSES:
        raise ApiError(400, "invalid status")
    box.set_status(ann, data["status"], None, fire=bool(data.get("fire_hooks", False)))
    return JSONResponse({"id": ann["id"], "status": ann["status"]})


async def admin_patch_object(request: Request) -> Response:
    """Test helper: merge JSON into a stored object (queues, hooks, users, schemas, ...)."""
    box = sb(request)
    kind = request.path_params["kind"]
    obj = box.get_or_404(kind, path_id(request))
    data = await json_body(request, required=True)
    obj.update({k: v for k, v in data.items() if k not in ("id", "url")})
    box.store.put(kind, obj)
    if kind == "schemas":
        box.invalidate_schema(obj["id"])
    return JSONResponse(public(obj))


async def admin_stats(request: Request) -> Response:
    box = sb(request)
    if request.method == "DELETE":
        box.stats.reset()
    body = box.stats.as_dict()
    if request.query_params.get("timeline"):
        # [[arrival epoch seconds, status], ...] of the last requests (rate measurements)
        body["timeline"] = [list(item) for item in box.stats.timeline]
    return JSONResponse(body)


async def admin_deliveries(request: Request) -> Response:
    box = sb(request)
    if request.method == "DELETE":
        box.dispatcher.records.clear()
    records = list(box.dispatcher.records)
    hook = request.query_params.get("hook")
    if hook:
        records = [r for r in records if str(r.get("hook")) == hook]
    return Response(
        json.dumps({"results": records, "count": len(records)}), media_type="application/json"
    )


async def admin_settings(request: Request) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        try:
            box.config.update(data)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
    return JSONResponse(box.config.as_dict())


async def admin_idle(request: Request) -> Response:
    """Wait until background hook deliveries and exports finish (tests)."""
    timeout = float(request.query_params.get("timeout", "10"))
    await sb(request).idle(timeout)
    return JSONResponse({"pending": len(sb(request)._tasks)})


async def admin_reset(request: Request) -> Response:
    """Back to the freshly seeded state (in-memory sandboxes only)."""
    await sb(request).reset()
    return JSONResponse({"status": "reset"})


async def admin_health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "db": sb(request).config.db})


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    return [
        Route("/_sandbox/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/seed", admin_seed, methods=["POST"]),
        Route("/_sandbox/confirm_all", admin_confirm_all, methods=["POST"]),
        Route("/_sandbox/annotations/{id:int}/status", admin_force_status, methods=["POST"]),
        Route("/_sandbox/objects/{kind}/{id:int}", admin_patch_object, methods=["PATCH"]),
        Route("/_sandbox/stats", admin_stats, methods=["GET", "DELETE"]),
        Route("/_sandbox/hook_deliveries", admin_deliveries, methods=["GET", "DELETE"]),
        Route("/_sandbox/settings", admin_settings, methods=["GET", "POST"]),
        Route("/_sandbox/idle", admin_idle, methods=["POST", "GET"]),
        Route("/_sandbox/reset", admin_reset, methods=["POST"]),
        Route("/_sandbox/health", admin_health, methods=["GET"]),
    ]
