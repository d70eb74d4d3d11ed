"""Organizations, organization groups, workspaces and users."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import seeding
from sandbox.core import check_metadata
from sandbox.routes._http import (
    bool_param,
    endpoint,
    filter_objects,
    json_body,
    list_reply,
    path_id,
    ref_filter,
    reply,
    sb,
    url_list,
)
from sandbox.seeding import ORG_ID
from sandbox.util import (
    PH,
    ApiError,
    public,
    ref,
    ref_id,
)


async def organizations_list(request: Request, user: dict[str, Any]) -> Response:
    return list_reply(request, filter_objects(request, sb(request).store.all("organizations"), {}))


async def organization_detail(request: Request, user: dict[str, Any]) -> Response:
    return reply(request, sb(request).get_or_404("organizations", path_id(request)))


async def organization_group(request: Request, user: dict[str, Any]) -> Response:
    if path_id(request) != 1:
        raise ApiError(404, "organization group not found")
    return reply(
        request,
        {
            "id": 1,
            "url": f"{PH}/v1/organization_groups/1",
            "name": "Rossflow Sandbox",
            "is_trial": False,
            "is_production": False,
            "deployment_location": "local",
            "features": {},
            "usage": {},
        },
    )


async def workspaces(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        if not isinstance(data.get("name"), str):
            raise ApiError(400, "name is required")
        with box.store.tx():
            wid = box.store.next_id("workspaces")
            ws = {
                "id": wid,
                "name": data["name"],
                "url": ref("workspaces", wid),
                "autopilot": False,
                "organization": ref("organizations", ORG_ID),
                "queues": [],
                "metadata": check_metadata(data.get("metadata", {})),
            }
            box.store.put("workspaces", ws)
        return reply(request, ws, 201)
    items = filter_objects(
        request,
        box.store.all("workspaces"),
        {
            "organization": ref_filter("organizations", "organization"),
            "name": lambda o, v: o.get("name") == v,
        },
    )
    return list_reply(request, items)


async def workspace_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ws = box.get_or_404("workspaces", path_id(request))
    if request.method == "DELETE":
        box.store.delete("workspaces", ws["id"])
        return Response(status_code=204)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        if "name" in data:
            ws["name"] = str(data["name"])
        if "metadata" in data:
            ws["metadata"] = check_metadata(data["metadata"])
        box.store.put("workspaces", ws)
    return reply(request, ws)


async def users(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        username = data.get("username")
        if not isinstance(username, str) or not username:
            raise ApiError(400, "username is required")
        if any(u["username"] == username for u in box.store.all("users")):
            raise ApiError(400, "username already exists")
        with box.store.tx():
            uid = box.store.next_id("users")
            queues = [ref_id(u) or 0 for u in url_list(data.get("queues"), "queues", "queues")]
            new = seeding.new_user(
                uid,
                username,
                str(data.get("password") or ""),
                str(data.get("first_name") or ""),
                str(data.get("last_name") or ""),
                queues,
            )
            new["email"] = str(data.get("email") or username)
            box.store.put("users", new)
            org = box.store.get("organizations", ORG_ID)
            if org is not None:
                org["users"].append(new["url"])
                box.store.put("organizations", org)
        return reply(request, public(new), 201)
    items = filter_objects(
        request,
        [public(u) for u in box.store.all("users")],
        {
            "username": lambda o, v: o.get("username") == v,
            "email": lambda o, v: o.get("email") == v,
            "is_active": lambda o, v: o.get("is_active") == bool_param(v, "is_active"),
        },
    )
    return list_reply(request, items)


async def user_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    target = box.get_or_404("users", path_id(request))
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        for key in ("first_name", "last_name", "email", "is_active", "ui_settings"):
            if key in data:
                target[key] = data[key]
        if "metadata" in data:
            target["metadata"] = check_metadata(data["metadata"])
        box.store.put("users", target)
    return reply(request, public(target))


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
        Route(f"{v1}/organizations", endpoint(organizations_list), methods=["GET"]),
        Route(f"{v1}/organizations/{{id:int}}", endpoint(organization_detail), methods=["GET"]),
        Route(
            f"{v1}/organization_groups/{{id:int}}", endpoint(organization_group), methods=["GET"]
        ),
        Route(f"{v1}/workspaces", endpoint(workspaces), methods=["GET", "POST"]),
        Route(f"{v1}/workspaces/{{id:int}}", endpoint(workspace_detail), methods=crud),
        Route(f"{v1}/users", endpoint(users), methods=["GET", "POST"]),
        Route(f"{v1}/users/{{id:int}}", endpoint(user_detail), methods=["GET", "PATCH", "PUT"]),
    ]
