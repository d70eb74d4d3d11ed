"""``/v1/schemas``: list, create, read, update and delete schemas."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.core import check_metadata
from sandbox.routes._http import (
    endpoint,
    filter_objects,
    json_body,
    list_reply,
    path_id,
    ref_filter,
    reply,
    sb,
)
from sandbox.util import (
    ApiError,
    now_iso,
    ref,
)


async def schemas(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        if not isinstance(data.get("name"), str) or not isinstance(data.get("content"), list):
            raise ApiError(400, "name and content (list of sections) are required")
        with box.store.tx():
            sid = box.store.next_id("schemas")
            schema = {
                "id": sid,
                "name": data["name"],
                "queues": [],
                "url": ref("schemas", sid),
                "content": data["content"],
                "metadata": check_metadata(data.get("metadata", {})),
                "modified_by": ref("users", user["id"]),
                "modified_at": now_iso(),
            }
            box.store.put("schemas", schema)
        return reply(request, schema, 201)
    items = filter_objects(
        request,
        box.store.all("schemas"),
        {
            "name": lambda o, v: o.get("name") == v,
            "queue": ref_filter("queues", "queues"),
        },
    )
    return list_reply(request, items)


async def schema_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    schema = box.get_or_404("schemas", path_id(request))
    if request.method == "DELETE":
        if schema.get("queues"):
            raise ApiError(409, "schema is used by queues")
        box.store.delete("schemas", schema["id"])
        box.invalidate_schema(schema["id"])
        return Response(status_code=204)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        if "name" in data:
            schema["name"] = str(data["name"])
        if "content" in data:
            if not isinstance(data["content"], list):
                raise ApiError(400, "content must be a list of sections")
            schema["content"] = data["content"]
        if "metadata" in data:
            schema["metadata"] = check_metadata(data["metadata"])
        schema["modified_by"], schema["modified_at"] = ref("users", user["id"]), now_iso()
        box.store.put("schemas", schema)
        box.invalidate_schema(schema["id"])
    return reply(request, schema)


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
        Route(f"{v1}/schemas", endpoint(schemas), methods=["GET", "POST"]),
        Route(f"{v1}/schemas/{{id:int}}", endpoint(schema_detail), methods=crud),
    ]
