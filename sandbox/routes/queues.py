"""``/v1/queues``: list, create, read, update and delete queues (schema/workspace relinking)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import seeding
from sandbox.core import Sandbox, check_metadata
from sandbox.routes._http import (
    endpoint,
    filter_objects,
    json_body,
    one_ref,
    page_params,
    pagination,
    path_id,
    ref_filter,
    reply,
    sb,
    select_fields,
    url_list,
)
from sandbox.util import (
    ApiError,
    now_iso,
    ref,
    ref_id,
)

QUEUE_WRITABLE = (
    "name",
    "session_timeout",
    "default_score_threshold",
    "automation_enabled",
    "automation_level",
    "locale",
    "metadata",
    "use_confirmed_state",
    "document_lifetime",
    "settings",
    "rir_params",
    "users",
    "workspace",
    "schema",
    "connector",
    "inbox",
)


def apply_queue_fields(box: Sandbox, queue: dict[str, Any], data: dict[str, Any]) -> None:
    for key in QUEUE_WRITABLE:
        if key not in data:
            continue
        value = data[key]
        if key == "name":
            if not isinstance(value, str) or not value or len(value) > 255:
                raise ApiError(400, "name must be a string of 1-255 characters")
        elif key == "automation_level":
            if value not in ("always", "confident", "never"):
                raise ApiError(400, "automation_level must be always, confident or never")
        elif key in ("automation_enabled", "use_confirmed_state"):
            if not isinstance(value, bool):
                raise ApiError(400, f"{key} must be a boolean")
        elif key == "metadata":
            value = check_metadata(value)
        elif key == "settings":
            if not isinstance(value, dict):
                raise ApiError(400, "settings must be an object")
        elif key == "default_score_threshold":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ApiError(400, "default_score_threshold must be within [0, 1]")
        elif key == "workspace":
            value = one_ref(value, "workspaces", key, box)
        elif key == "schema":
            value = one_ref(value, "schemas", key, box)
            if value is None:
                raise ApiError(400, "schema is required")
        elif key == "users":
            value = url_list(value, "users", key)
        elif key in ("connector", "inbox"):
            value = None if value is None else str(value)
        queue[key] = value


def relink_queue(
    box: Sandbox, queue_url: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """Keep workspace.queues and schema.queues in sync with the queue's references."""
    for field, kind in (("workspace", "workspaces"), ("schema", "schemas")):
        before = (old or {}).get(field)
        after = (new or {}).get(field)
        if before == after:
            continue
        for url, add in ((before, False), (after, True)):
            obj = box.store.get(kind, ref_id(url) or 0) if url else None
            if obj is None:
                continue
            lst = [u for u in obj.get("queues", []) if u != queue_url]
            if add:
                lst.append(queue_url)
            obj["queues"] = lst
            box.store.put(kind, obj)


async def queues(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        if "name" not in data or "schema" not in data:
            raise ApiError(400, "name and schema are required")
        with box.store.tx():
            qid = box.store.next_id("queues")
            queue = seeding.new_queue(qid, "", 1, None)
            queue["workspace"] = None
            apply_queue_fields(box, queue, data)
            queue["modified_by"], queue["modified_at"] = ref("users", user["id"]), now_iso()
            box.store.put("queues", queue)
            relink_queue(box, queue["url"], None, queue)
        return reply(request, box.queue_view(queue), 201)
    items = filter_objects(
        request,
        box.store.all("queues"),
        {
            "workspace": ref_filter("workspaces", "workspace"),
            "name": lambda o, v: o.get("name") == v,
            "locale": lambda o, v: o.get("locale") == v,
        },
    )
    page, size = page_params(request)
    pag = pagination(request, len(items), page, size)
    chunk = [box.queue_view(q) for q in items[(page - 1) * size : page * size]]
    return reply(
        request, {"pagination": pag, "results": [select_fields(request, q) for q in chunk]}
    )


async def queue_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    queue = box.get_or_404("queues", path_id(request))
    if request.method == "DELETE":
        with box.store.tx():
            box.store.delete("queues", queue["id"])
            relink_queue(box, queue["url"], queue, None)
            box.store.conn.execute("DELETE FROM annotations WHERE queue=?", (queue["id"],))
        return Response(status_code=202)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        old = dict(queue)
        with box.store.tx():
            apply_queue_fields(box, queue, data)
            queue["modified_by"], queue["modified_at"] = ref("users", user["id"]), now_iso()
            box.store.put("queues", queue)
            relink_queue(box, queue["url"], old, queue)
        if "schema" in data:
            box.invalidate_schema(ref_id(queue["schema"]) or 0)
    return reply(request, select_fields(request, box.queue_view(queue)))


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
        Route(f"{v1}/queues", endpoint(queues), methods=["GET", "POST"]),
        Route(f"{v1}/queues/{{id:int}}", endpoint(queue_detail), methods=crud),
    ]
