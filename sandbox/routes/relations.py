"""``/v1/relations`` and ``/v1/document_relations``: the minimal subset exports need.

Rossum's Request Processor reads them (``get_content`` sources) and writes document relations
(``document_relation`` response handlers). Objects live in the store's generic ``objects``
table, so a sandbox reset forgets them. List filters: ``annotation``, ``parent``, ``type``,
``key``; create with POST, change ``documents``/``annotations``/``key`` with PATCH, DELETE.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.routes._http import endpoint
from sandbox.util import ApiError, json_response, parse_ref, ref

__all__ = ["routes"]

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
Wrap = Callable[[Handler], Callable[[Request], Awaitable[Response]]]

_KINDS = {"relations": "annotations", "document_relations": "documents"}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/api"


def _box(request: Request) -> Any:
    return request.app.state.sandbox


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "JSON body must be an object")
    return data


def _refs(values: Any, collection: str, field: str) -> list[str]:
    if not isinstance(values, list):
        raise ApiError(400, f"{field} must be a list of {collection} URLs")
    out = []
    for value in values:
        obj_id = parse_ref(value, collection)
        if obj_id is None:
            raise ApiError(400, f"{field}: {value!r} is not a {collection} URL")
        out.append(str(ref(collection, obj_id)))
    return out


def _matches(obj: dict[str, Any], request: Request, kind: str) -> bool:
    q = request.query_params
    if q.get("annotation"):
        ann = str(ref("annotations", int(q["annotation"])))
        members = obj.get("annotations") or []
        if kind == "document_relations":
            if obj.get("annotation") != ann:
                return False
        elif ann not in members and obj.get("parent") != ann:
            return False
    if q.get("parent") and obj.get("parent") != str(ref("annotations", int(q["parent"]))):
        return False
    for name in ("type", "key"):
        if q.get(name) is not None and str(obj.get(name)) != q[name]:
            return False
    return True


def _handlers(kind: str) -> tuple[Handler, Handler]:
    members = _KINDS[kind]

    async def collection(request: Request, user: dict[str, Any]) -> Response:
        store = _box(request).store
        if request.method == "POST":
            data = await _body(request)
            with store.tx():
                obj_id = store.next_id(kind)
                obj: dict[str, Any] = {
                    "id": obj_id,
                    "url": ref(kind, obj_id),
                    "type": str(
                        data.get("type")
                        or ("export" if kind == "document_relations" else "duplicate")
                    ),
                    "key": data.get("key"),
                    members: _refs(data.get(members) or [], members, members),
                }
                if kind == "document_relations":
                    ann = parse_ref(data.get("annotation"), "annotations")
                    if ann is None:
                        raise ApiError(400, "annotation is required")
                    obj["annotation"] = ref("annotations", ann)
                else:
                    parent = parse_ref(data.get("parent"), "annotations")
                    obj["parent"] = ref("annotations", parent) if parent is not None else None
                store.put(kind, obj)
            return json_response(obj, _base(request), 201)
        try:
            found = [o for o in store.all(kind) if _matches(o, request, kind)]
        except ValueError as exc:
            raise ApiError(400, "annotation and parent must be integers") from exc
        found.sort(key=lambda o: o["id"])
        page = {
            "pagination": {"total": len(found), "total_pages": 1, "next": None, "previous": None},
            "results": found,
        }
        return json_response(page, _base(request))

    async def detail(request: Request, user: dict[str, Any]) -> Response:
        store = _box(request).store
        obj_id = int(request.path_params["id"])
        obj = store.get(kind, obj_id)
        if obj is None:
            raise ApiError(404, f"{kind[:-1].replace('_', ' ')} not found")
        if request.method == "DELETE":
            store.delete(kind, obj_id)
            return Response(status_code=204)
        if request.method in ("PATCH", "PUT"):
            data = await _body(request)
            if members in data:
                obj[members] = _refs(data[members], members, members)
            for name in ("key", "type"):
                if name in data:
                    obj[name] = data[name]
            store.put(kind, obj)
        return json_response(obj, _base(request))

    return collection, detail


def routes(v1: str = "/api/v1", wrap: Wrap | None = None) -> list[Route]:
    """Relations and document relations (``wrap`` authenticates like every API handler)."""
    wrap = wrap or endpoint
    out = []
    for kind in _KINDS:
        collection, detail = _handlers(kind)
        collection.__name__, detail.__name__ = kind, f"{kind}_detail"
        out.append(Route(f"{v1}/{kind}", wrap(collection), methods=["GET", "POST"]))
        out.append(
            Route(
                f"{v1}/{kind}/{{id:int}}", wrap(detail), methods=["GET", "PATCH", "PUT", "DELETE"]
            )
        )
    return out
