"""Uploads (``/v1/uploads``, ``/v1/queues/{id}/upload``), their multipart/body reading and tasks."""

from __future__ import annotations

import json
import mimetypes
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive

from sandbox.core import check_metadata
from sandbox.routes._http import (
    base_of,
    bool_param,
    endpoint,
    int_param,
    path_id,
    reply,
    sb,
)
from sandbox.util import (
    PH,
    ApiError,
    parse_ref,
    ref,
)


class _BodyTooLarge(Exception):
    pass


DRAIN_LIMIT = 256 * 1024 * 1024


async def _drain(receive: Receive, limit: int = DRAIN_LIMIT) -> None:
    """Read and discard the rest of the body so the client gets the 413 cleanly."""
    seen = 0
    while seen < limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _filename_from_disposition(header: str) -> str | None:
    if not header:
        return None
    params: dict[str, str] = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    if "filename*" in params:
        enc = params["filename*"]
        if "''" in enc:
            charset, _, quoted = enc.partition("''")
            return urllib.parse.unquote(quoted, encoding=charset or "utf-8")
        return urllib.parse.unquote(enc)
    return params.get("filename")


def _mime_for(name: str, declared: str | None, body: bytes) -> str:
    if declared and declared not in ("application/octet-stream", "") and "/" in declared:
        return declared.split(";")[0].strip()
    if body.startswith(b"%PDF"):
        return "application/pdf"
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


async def read_upload(
    request: Request, max_bytes: int, filename: str | None
) -> tuple[list[tuple[str, bytes, str]], dict[str, Any] | None, dict[str, str] | None]:
    """Files, metadata and values from a multipart or raw upload; 413 beyond ``max_bytes``."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        if int(length) <= DRAIN_LIMIT:
            await _drain(request.receive)
        raise ApiError(413, f"upload larger than {max_bytes} bytes")
    seen = 0
    original = request.receive

    async def limited() -> Message:
        nonlocal seen
        message = await original()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                if message.get("more_body"):
                    await _drain(original)
                raise _BodyTooLarge()
        return message

    limited_request = Request(request.scope, limited)
    ctype = request.headers.get("content-type", "")
    files: list[tuple[str, bytes, str]] = []
    metadata: dict[str, Any] | None = None
    values: dict[str, str] | None = None
    try:
        if ctype.startswith("multipart/form-data"):
            form = await limited_request.form(max_part_size=1024 * 1024)
            for item in form.getlist("content"):
                if isinstance(item, str):
                    raise ApiError(400, "content must be a file")
                files.append(
                    (
                        item.filename or "document",
                        await item.read(),
                        _mime_for(item.filename or "", item.content_type, b""),
                    )
                )
            raw_meta = form.get("metadata")
            if raw_meta is not None:
                metadata = _json_field(raw_meta, "metadata")
            raw_values = form.get("values")
            if raw_values is not None:
                vals = _json_field(raw_values, "values")
                values = {str(k): "" if v is None else str(v) for k, v in vals.items()}
            await form.close()
            files = [(n, b, _mime_for(n, m, b)) for n, b, m in files]
        else:
            body = await limited_request.body()
            name = _filename_from_disposition(request.headers.get("content-disposition", ""))
            name = name or filename
            if not name:
                raise ApiError(400, "missing filename (Content-Disposition or URL)")
            if body:
                files.append((name, body, _mime_for(name, ctype or None, body)))
    except _BodyTooLarge as exc:
        raise ApiError(413, f"upload larger than {max_bytes} bytes") from exc
    if metadata is not None:
        check_metadata(metadata)
    return files, metadata, values


def _json_field(raw: Any, name: str) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise ApiError(400, f"{name} must be a JSON string field")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ApiError(400, f"{name} must be a JSON object")
    return value


async def _do_upload(
    request: Request, user: dict[str, Any], queue_id: int, filename: str | None
) -> tuple[dict, list[tuple[int, int]], dict]:
    box = sb(request)
    queue = box.upload_queue(queue_id)
    reject = bool_param(request.query_params.get("reject_identical"), "reject_identical")
    files, metadata, values = await read_upload(request, box.config.max_upload_bytes, filename)
    return box.create_upload(queue, files, user, metadata, values, bool(reject))


async def uploads_create(request: Request, user: dict[str, Any]) -> Response:
    queue_id = int_param(request, "queue")
    if queue_id is None:
        raw = request.query_params.get("queue")
        queue_id = parse_ref(raw, "queues") if raw else None
        if queue_id is None:
            raise ApiError(400, "queue query parameter is required")
    filename = request.path_params.get("filename")
    _upload, _created, task = await _do_upload(request, user, queue_id, filename)
    base = base_of(request)
    url = task["url"].replace(PH, base)
    return reply(request, {"url": task["url"]}, 202, {"Location": url})


async def upload_detail(request: Request, user: dict[str, Any]) -> Response:
    return reply(request, sb(request).get_or_404("uploads", path_id(request)))


async def queue_upload(request: Request, user: dict[str, Any]) -> Response:
    """Deprecated ``POST /v1/queues/{id}/upload[/{filename}]`` -> 201 with results."""
    _upload, created, _task = await _do_upload(
        request, user, path_id(request), request.path_params.get("filename")
    )
    if not created:
        raise ApiError(400, "upload failed")
    results = [
        {"annotation": ref("annotations", a), "document": ref("documents", d)} for d, a in created
    ]
    return reply(
        request,
        {
            "results": results,
            "annotation": results[0]["annotation"],
            "document": results[0]["document"],
        },
        201,
    )


async def task_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    task = box.task_view(box.get_or_404("tasks", path_id(request)))
    no_redirect = bool_param(request.query_params.get("no_redirect"), "no_redirect")
    if task["status"] == "succeeded" and not no_redirect and task.get("result_url"):
        location = task["result_url"].replace(PH, base_of(request))
        return reply(request, task, 303, {"Location": location})
    return reply(request, task)


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    return [
        Route(
            f"{v1}/queues/{{id:int}}/upload", endpoint(queue_upload, basic=True), methods=["POST"]
        ),
        Route(
            f"{v1}/queues/{{id:int}}/upload/{{filename}}",
            endpoint(queue_upload, basic=True),
            methods=["POST"],
        ),
        Route(f"{v1}/uploads", endpoint(uploads_create, basic=True), methods=["POST"]),
        Route(f"{v1}/uploads/{{id:int}}", endpoint(upload_detail), methods=["GET"]),
        Route(f"{v1}/uploads/{{filename}}", endpoint(uploads_create, basic=True), methods=["POST"]),
        Route(f"{v1}/tasks/{{id:int}}", endpoint(task_detail), methods=["GET"]),
    ]
