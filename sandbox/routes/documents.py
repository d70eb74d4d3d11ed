"""``/v1/documents``: create (multipart), list, read, patch, delete and the file content."""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.core import check_metadata
from sandbox.routes._http import (
    endpoint,
    int_list,
    json_body,
    page_params,
    pagination,
    path_id,
    reply,
    sb,
    select_fields,
)
from sandbox.routes.uploads import read_upload
from sandbox.util import (
    ApiError,
    now_iso,
    parse_dt_filter,
)


async def documents(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        files, metadata, _values = await read_upload(request, box.config.max_upload_bytes, None)
        if len(files) != 1:
            raise ApiError(400, "exactly one file is required")
        name, body, mime = files[0]
        with box.store.tx():
            doc_id = box.store.next_id("documents")
            doc = box.new_document(doc_id, name, mime, user["id"], now_iso(), [])
            doc["metadata"] = metadata or {}
            box.store.insert_document(doc, body, hashlib.sha256(body).hexdigest())
        return reply(request, doc, 201)
    where: list[str] = []
    params: list[Any] = []
    ids = int_list(request.query_params.get("id"), "id")
    if ids is not None:
        where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params += ids
    if request.query_params.get("original_file_name"):
        where.append("file_name=?")
        params.append(request.query_params["original_file_name"])
    for name, op in (
        ("created_at_before", "<"),
        ("created_at_after", ">="),
        ("arrived_at_before", "<"),
        ("arrived_at_after", ">="),
    ):
        raw = request.query_params.get(name)
        if raw is not None:
            val = parse_dt_filter(raw)
            if val is None:
                raise ApiError(400, f"{name} must be an ISO 8601 timestamp")
            where.append(f"created_at {op} ?")
            params.append(val)
    page, size = page_params(request)
    total, docs = box.store.query_documents(where, params, size, (page - 1) * size)
    pag = pagination(request, total, page, size)
    return reply(request, {"pagination": pag, "results": [select_fields(request, d) for d in docs]})


async def document_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    doc = box.store.get_document(path_id(request))
    if doc is None:
        raise ApiError(404, "document not found")
    if request.method == "DELETE":
        box.store.delete_document(doc["id"])
        return Response(status_code=204)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        if "metadata" in data:
            doc["metadata"] = check_metadata(data["metadata"])
        box.store.save_document(doc)
    return reply(request, doc)


async def document_content(request: Request, user: dict[str, Any]) -> Response:
    found = sb(request).store.get_document_body(path_id(request))
    if found is None:
        raise ApiError(404, "document not found")
    body, mime = found
    doc = sb(request).store.get_document(path_id(request)) or {}
    name = urllib.parse.quote(doc.get("original_file_name", "document"))
    return Response(
        body, media_type=mime, headers={"Content-Disposition": f"inline; filename*=utf-8''{name}"}
    )


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    return [
        Route(f"{v1}/documents", endpoint(documents, basic=True), methods=["GET", "POST"]),
        Route(
            f"{v1}/documents/{{id:int}}",
            endpoint(document_detail, basic=True),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route(
            f"{v1}/documents/{{id:int}}/content",
            endpoint(document_content, basic=True),
            methods=["GET"],
        ),
    ]
