"""Starlette application of the Rossum-compatible sandbox (``/api/v1/…`` plus ``/_sandbox/…``).

``create_app(config)`` builds the ASGI app; all state lives in :class:`sandbox.core.Sandbox`
(``app.state.sandbox``). Conventions of the real API that the handlers follow:

* absolute URLs built from the request's own base (``http://<Host>/api``), integer ids,
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` UTC dates, paths with or without trailing slash;
* lists: ``{"pagination": {total, total_pages, next, previous}, "results": [...]}``, ``page``
  (default 1; a page past the end -> 404) and ``page_size`` (default 20, capped at 100);
* errors: exact §3.4 bodies ``{"detail", "code"}`` (429 adds ``url``); a human-readable reason is
  in the ``X-Sandbox-Error`` response header;
* auth: ``Authorization: Bearer|Token <key>`` (scheme case-insensitive); HTTP Basic only on
  uploads, ``POST /v1/documents`` and export. No credentials -> 403 ``access_forbidden``;
  unknown/expired/logged-out token or wrong Basic credentials -> 401 ``authentication_failed``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import mimetypes
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from sandbox import content as ct
from sandbox import export as ex
from sandbox import relations
from sandbox.config import SandboxConfig
from sandbox.core import ADMIN_ID, ORG_ID, Sandbox, check_metadata
from sandbox.faults import SandboxMiddleware, silence_drop_logs
from sandbox.lifecycle import (
    CANCEL_RESTORES,
    POSTPONE_FROM,
    REJECT_FROM,
    START_DEFAULT,
    STATUSES,
    patch_allowed,
)
from sandbox.store import ANN_TIME_COLUMNS, ANN_USER_COLUMNS
from sandbox.util import (
    PH,
    ApiError,
    error_response,
    json_response,
    now_iso,
    parse_dt_filter,
    parse_ref,
    public,
    ref,
    ref_id,
)

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
MAX_PAGE_SIZE = 100
MAX_CSV_PAGE_SIZE = 1000


# ----------------------------------------------------------------------------- helpers
def sb(request: Request) -> Sandbox:
    box: Sandbox = request.app.state.sandbox
    return box


def base_of(request: Request) -> str:
    """``http://<host>/api`` as the client sees it."""
    return str(request.base_url).rstrip("/") + "/api"


def reply(
    request: Request, obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return json_response(obj, base_of(request), status, headers)


def authenticate(request: Request, basic: bool) -> dict[str, Any]:
    header = request.headers.get("authorization", "").strip()
    if not header:
        raise ApiError(403, "authentication credentials were not provided")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    box = sb(request)
    if scheme in ("bearer", "token") and value:
        user = box.user_for_token(value)
        if user is None:
            raise ApiError(401, "invalid, expired or logged-out token")
        return user
    if scheme == "basic":
        if not basic:
            raise ApiError(401, "Basic auth is accepted only by uploads, documents and export")
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(401, "malformed Basic credentials") from exc
        user = box.check_password(username, password)
        if user is None:
            raise ApiError(401, "invalid username/password")
        return user
    raise ApiError(401, "unsupported authorization scheme")


def endpoint(handler: Handler, *, basic: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an authenticated handler ``(request, user)``."""

    async def run(request: Request) -> Response:
        user = authenticate(request, basic)
        return await handler(request, user)

    run.__name__ = handler.__name__
    return run


async def json_body(request: Request, *, required: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "JSON body required")
        return {}
    ctype = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in ctype:
        return dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "JSON body must be an object")
    return data


def int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name} must be an integer") from exc


def int_list(raw: str | None, name: str) -> list[int] | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError as exc:
        raise ApiError(400, f"{name} must be a comma-separated list of integers") from exc


def bool_param(raw: str | None, name: str) -> bool | None:
    if raw is None:
        return None
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be a boolean")


def path_id(request: Request, key: str = "id") -> int:
    return int(request.path_params[key])


def page_params(request: Request, max_size: int = MAX_PAGE_SIZE) -> tuple[int, int]:
    raw_page = request.query_params.get("page") or "1"
    try:
        page = int(raw_page)
    except ValueError as exc:
        raise ApiError(404, "invalid page") from exc
    if page < 1:
        raise ApiError(404, "invalid page")
    size = 20
    raw_size = request.query_params.get("page_size")
    if raw_size:
        with contextlib.suppress(ValueError):
            size = int(raw_size) if int(raw_size) > 0 else 20
    return page, min(size, max_size)


def pagination(request: Request, total: int, page: int, size: int) -> dict[str, Any]:
    pages = max(1, math.ceil(total / size)) if size else 1
    if page > pages and page > 1:
        raise ApiError(404, "invalid page")
    url = request.url
    return {
        "total": total,
        "total_pages": pages if total else 0,
        "next": str(url.include_query_params(page=page + 1)) if page < pages else None,
        "previous": str(url.include_query_params(page=page - 1)) if page > 1 else None,
    }


def select_fields(request: Request, obj: dict[str, Any]) -> dict[str, Any]:
    include = request.query_params.get("fields")
    exclude = request.query_params.get("fields!")
    if include:
        keys = [k.strip() for k in include.split(",")]
        obj = {k: obj[k] for k in keys if k in obj}
    if exclude:
        drop = {k.strip() for k in exclude.split(",")}
        obj = {k: v for k, v in obj.items() if k not in drop}
    return obj


def list_reply(request: Request, items: list[dict[str, Any]], **extra: Any) -> Response:
    page, size = page_params(request)
    pag = pagination(request, len(items), page, size)
    chunk = items[(page - 1) * size : page * size]
    return reply(
        request, {"pagination": pag, "results": [select_fields(request, i) for i in chunk], **extra}
    )


def filter_objects(
    request: Request, items: list[dict[str, Any]], filters: dict[str, Callable[[dict, str], bool]]
) -> list[dict[str, Any]]:
    ids = int_list(request.query_params.get("id"), "id")
    if ids is not None:
        items = [i for i in items if i["id"] in ids]
    for name, pred in filters.items():
        raw = request.query_params.get(name)
        if raw is not None:
            items = [i for i in items if pred(i, raw)]
    ordering = request.query_params.get("ordering")
    if ordering:
        for key in reversed([k.strip() for k in ordering.split(",") if k.strip()]):
            field = key.lstrip("-")

            def sort_key(item: dict[str, Any], f: str = field) -> str:
                return str(item.get(f, ""))

            items = sorted(items, key=sort_key, reverse=key.startswith("-"))
    return items


def ref_filter(collection: str, field: str) -> Callable[[dict, str], bool]:
    def pred(obj: dict[str, Any], raw: str) -> bool:
        wanted = int_list(raw, field) or []
        value = obj.get(field)
        values = value if isinstance(value, list) else [value]
        return any(ref_id(v) in wanted for v in values if isinstance(v, str))

    return pred


def url_list(value: Any, collection: str, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, f"{name} must be a list of URLs")
    out = []
    for v in value:
        oid = parse_ref(v, collection)
        if oid is None:
            raise ApiError(400, f"{name}: {v!r} is not a {collection} URL")
        out.append(ref(collection, oid))
    return [u for u in out if u]


def one_ref(
    value: Any, collection: str, name: str, box: Sandbox, *, must_exist: bool = True
) -> str | None:
    if value is None:
        return None
    oid = parse_ref(value, collection)
    if oid is None:
        raise ApiError(400, f"{name} must be a {collection} URL")
    if must_exist and box.store.get(collection, oid) is None:
        raise ApiError(400, f"{name}: {collection} {oid} does not exist")
    return ref(collection, oid)


# ----------------------------------------------------------------------------- auth/index
async def api_index(request: Request) -> Response:
    names = (
        "organizations",
        "workspaces",
        "schemas",
        "connectors",
        "inboxes",
        "queues",
        "documents",
        "users",
        "groups",
        "annotations",
        "pages",
        "hooks",
        "uploads",
        "tasks",
    )
    return reply(request, {n: f"{PH}/v1/{n}" for n in names})


async def login(request: Request) -> Response:
    data = await json_body(request)
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "username and password are required")
    lifetime = data.get("max_token_lifetime_s")
    if lifetime is not None:
        try:
            lifetime = float(lifetime)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "max_token_lifetime_s must be a number") from exc
        if lifetime <= 0:
            raise ApiError(400, "max_token_lifetime_s must be positive")
    key = sb(request).login(username, password, lifetime)
    if key is None:
        body = {
            "detail": "Unable to log in with provided credentials.",
            "code": "authentication_failed",
        }
        return JSONResponse(body, status_code=401)
    return reply(request, {"key": key, "domain": request.url.hostname})


async def logout(request: Request) -> Response:
    authenticate(request, basic=False)
    _, _, key = request.headers["authorization"].strip().partition(" ")
    sb(request).store.delete_token(key.strip())
    return reply(request, {"detail": "Successfully logged out."})


async def auth_user(request: Request, user: dict[str, Any]) -> Response:
    """The calling user (used by clients to find their organization)."""
    return reply(request, public(user))


# ----------------------------------------------------------------------------- organizations, ...
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
            new = box.new_user(
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


# ----------------------------------------------------------------------------- schemas
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


# ----------------------------------------------------------------------------- queues
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
            queue = box.new_queue(qid, "", 1, None)
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


# ----------------------------------------------------------------------------- uploads
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


# ----------------------------------------------------------------------------- documents
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


# ----------------------------------------------------------------------------- annotations
ORDERING = {
    "id": "id",
    "document": "document",
    "document__arrived_at": "arrived_at",
    "document__original_file_name": "file_name",
    "queue": "queue",
    "status": "status",
    **{c: c for c in ANN_TIME_COLUMNS},
    **{c: c for c in ANN_USER_COLUMNS},
    **{f"{c}__username": c for c in ANN_USER_COLUMNS},
    "modified_by": "modifier",
    "modified_by__username": "modifier",
}


def annotation_filters(request: Request) -> tuple[list[str], list[Any]]:
    q = request.query_params
    where: list[str] = []
    params: list[Any] = []
    statuses = q.get("status")
    if statuses:
        values = [s.strip() for s in statuses.split(",") if s.strip()]
        bad = [s for s in values if s not in STATUSES]
        if bad:
            raise ApiError(400, f"unknown status {bad[0]!r}")
        where.append(f"status IN ({','.join('?' * len(values))})")
        params += values
    for name, column in (("id", "id"), ("queue", "queue"), ("document", "document")):
        ids = int_list(q.get(name), name)
        if ids is not None:
            where.append(f"{column} IN ({','.join('?' * len(ids))})" if ids else "0")
            params += ids
    for column in (*ANN_USER_COLUMNS, "modified_by"):
        ids = int_list(q.get(column), column)
        if ids is not None:
            col = "modifier" if column == "modified_by" else column
            where.append(f"{col} IN ({','.join('?' * len(ids))})" if ids else "0")
            params += ids
    workspaces_ = int_list(q.get("queue__workspace"), "queue__workspace")
    if workspaces_ is not None:
        qids = [
            queue["id"]
            for queue in sb(request).store.all("queues")
            if ref_id(queue.get("workspace")) in workspaces_
        ]
        where.append(f"queue IN ({','.join('?' * len(qids))})" if qids else "0")
        params += qids
    automated = bool_param(q.get("automated"), "automated")
    if automated is not None:
        where.append("automated=?")
        params.append(1 if automated else 0)
    for column in ANN_TIME_COLUMNS:
        for suffix, op in (("_before", "<"), ("_after", ">=")):
            raw = q.get(column + suffix)
            if raw is None:
                continue
            val = parse_dt_filter(raw)
            if val is None:
                raise ApiError(400, f"{column}{suffix} must be an ISO 8601 timestamp")
            where.append(f"{column} {op} ?")
            params.append(val)
    search = q.get("search")
    if search:
        if len(search) > 256:
            raise ApiError(400, "search longer than 256 characters")
        like = f"%{search}%"
        where.append("(content LIKE ? OR file_name LIKE ? OR data LIKE ?)")
        params += [like, like, like]
    return where, params


def annotation_ordering(request: Request) -> list[str]:
    raw = request.query_params.get("ordering")
    out: list[str] = []
    for key in (raw or "").split(","):
        key = key.strip()
        column = ORDERING.get(key.lstrip("-"))
        if column:
            out.append(f"{column} {'DESC' if key.startswith('-') else 'ASC'}")
    return [*out, "id ASC"]


async def annotations_list(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    where, params = annotation_filters(request)
    sideload = {
        s.strip() for s in (request.query_params.get("sideload") or "").split(",") if s.strip()
    }
    page, size = page_params(request)
    total, rows = box.store.query_annotations(
        where,
        params,
        annotation_ordering(request),
        size,
        (page - 1) * size,
        with_content="content" in sideload,
    )
    pag = pagination(request, total, page, size)
    anns = [public(a) for a, _ in rows]
    body: dict[str, Any] = {"pagination": pag, "results": [select_fields(request, a) for a in anns]}
    for name in sorted(sideload):
        body[name] = sideload_objects(box, request, name, rows)
    return reply(request, body)


def sideload_objects(
    box: Sandbox,
    request: Request,
    name: str,
    rows: list[tuple[dict[str, Any], list[ct.Node] | None]],
) -> list[Any]:
    anns = [a for a, _ in rows]
    if name == "content":
        raw = request.query_params.get("content.schema_id")
        wanted = {s.strip() for s in raw.split(",")} if raw else None
        out: list[Any] = []
        for _, tree in rows:
            out += ct.flatten(tree or [], wanted)
        return out
    if name == "documents":
        docs = box.store.get_documents([ref_id(a["document"]) or 0 for a in anns])
        return [d for _, d in sorted(docs.items())]
    fields = {
        "modifiers": "modifier",
        "creators": "creator",
        "confirmed_bys": "confirmed_by",
        "exported_bys": "exported_by",
        "deleted_bys": "deleted_by",
        "rejected_bys": "rejected_by",
        "purged_bys": "purged_by",
        "queues": "queue",
        "schemas": "schema",
        "organizations": "organization",
    }
    field = fields.get(name)
    if field is None:
        return []
    kind = {"queue": "queues", "schema": "schemas", "organization": "organizations"}.get(
        field, "users"
    )
    ids = sorted({i for a in anns if (i := ref_id(a.get(field))) is not None})
    objs = [box.store.get(kind, i) for i in ids]
    if kind == "queues":
        return [box.queue_view(o) for o in objs if o]
    return [public(o) for o in objs if o]


async def annotation_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    if request.method == "DELETE":
        box.store.delete_annotation(ann["id"])
        return Response(status_code=204)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        await patch_annotation(box, ann, data, user)
        ann = box.annotation_or_404(ann["id"])
    return reply(request, select_fields(request, public(ann)))


def validate_messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ApiError(400, "messages must be a list")
    out = []
    for msg in value:
        if not isinstance(msg, dict):
            raise ApiError(400, "each message must be an object")
        if msg.get("type") not in ("error", "warning", "info", "aggregation"):
            raise ApiError(400, "message type must be error, warning or info")
        content = msg.get("content")
        if not isinstance(content, str) or len(content) > 4096:
            raise ApiError(400, "message content must be a string of at most 4096 characters")
        out.append(msg)
    return out


async def patch_annotation(
    box: Sandbox, ann: dict[str, Any], data: dict[str, Any], user: dict[str, Any]
) -> None:
    if ann["status"] == "purged" and data:
        raise ApiError(400, "purged annotations cannot be changed")
    target = data.get("status")
    if target is not None:
        if not isinstance(target, str) or target not in STATUSES:
            raise ApiError(400, f"invalid status {target!r}")
        if target != ann["status"] and not patch_allowed(ann["status"], target):
            raise ApiError(409, f"cannot change status {ann['status']} -> {target}")
    with box.store.tx():
        if "metadata" in data:
            ann["metadata"] = check_metadata(data["metadata"])
        if "messages" in data:
            ann["messages"] = (
                None if data["messages"] is None else validate_messages(data["messages"])
            )
        for key in ("time_spent",):
            if key in data and isinstance(data[key], int | float):
                ann[key] = data[key]
        if "training_enabled" in data and isinstance(data["training_enabled"], bool):
            ann["training_enabled"] = data["training_enabled"]
        if "queue" in data:
            qurl = one_ref(data["queue"], "queues", "queue", box)
            if qurl:
                ann["queue"] = qurl
        ann["modified_at"] = now_iso()
        ann["modifier"] = ann["modified_by"] = ref("users", user["id"])
        if target is None or target == ann["status"]:
            box.store.save_annotation(ann)
            return
        if target == "reviewing":
            ann["_pre_start_status"] = ann["status"]
        if target == "exporting":
            box.set_status(ann, "exporting", user["id"])
            box.spawn(box.run_export_flow(ann["id"], user["id"]))
            return
        box.set_status(ann, target, user["id"])


async def annotation_action(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    action = request.path_params["action"]
    ann = box.annotation_or_404(path_id(request))
    data = await json_body(request)
    status = ann["status"]
    uid = user["id"]
    if action == "start":
        allowed = data.get("statuses", list(START_DEFAULT))
        if not isinstance(allowed, list):
            raise ApiError(400, "statuses must be a list")
        if status not in allowed:
            raise ApiError(409, f"annotation is {status}")
        if status == "reviewing" and ref_id(ann.get("modifier")) not in (None, uid):
            raise ApiError(409, "annotation is being reviewed by another user")
        if status != "reviewing":
            ann["_pre_start_status"] = status
        ann["assignees"] = [ref("users", uid)]
        box.set_status(ann, "reviewing", uid)
        if status == "reviewing":  # restarting: refresh assignment without a status event
            ann["assigned_at"] = now_iso()
            box.store.save_annotation(ann)
        return reply(
            request, {"annotation": ann["url"], "session_timeout": _session_timeout(box, ann)}
        )
    if status == "purged":
        raise ApiError(400, "purged annotations cannot be changed")
    if action == "confirm":
        if status != "reviewing" or ref_id(ann.get("modifier")) != uid:
            raise ApiError(409, "confirm needs an annotation started by the caller")
        queue = box.store.get("queues", ref_id(ann["queue"]) or 0) or {}
        ann.pop("_pre_start_status", None)
        if queue.get("use_confirmed_state"):
            box.set_status(ann, "confirmed", uid)
        else:
            sync = (queue.get("settings") or {}).get("asynchronous_export", True) is False
            await box.start_export(ann, uid, sync=sync)
        return Response(status_code=204)
    if action == "cancel":
        if status != "reviewing":
            raise ApiError(409, f"annotation is {status}, not reviewing")
        previous = ann.pop("_pre_start_status", "to_review")
        box.set_status(ann, previous if previous in CANCEL_RESTORES else "to_review", uid)
        return Response(status_code=204)
    if action == "postpone":
        if status not in POSTPONE_FROM:
            raise ApiError(409, f"cannot postpone a {status} annotation")
        box.set_status(ann, "postponed", uid)
        return Response(status_code=204)
    if action == "delete":
        if status == "in_workflow":
            raise ApiError(409, "annotation is in workflow")
        box.set_status(ann, "deleted", uid)
        return Response(status_code=204)
    if action == "reject":
        if status not in REJECT_FROM:
            raise ApiError(409, f"cannot reject a {status} annotation")
        note_content = data.get("note_content", "")
        with box.store.tx():
            nid = box.store.next_id("notes")
            now = now_iso()
            note = {
                "id": nid,
                "url": ref("notes", nid),
                "type": "rejection",
                "value": str(note_content or ""),
                "annotation": ann["url"],
                "metadata": {},
                "created_at": now,
                "creator": ref("users", uid),
                "modified_by": ref("users", uid),
                "modified_at": now,
            }
            box.store.put("notes", note)
            box.set_status(ann, "rejected", uid)
        return reply(request, {"status": "rejected", "note": note["url"]})
    raise ApiError(404, f"unknown action {action}")


def _session_timeout(box: Sandbox, ann: dict[str, Any]) -> str:
    queue = box.store.get("queues", ref_id(ann["queue"]) or 0) or {}
    return str(queue.get("session_timeout") or "01:00:00")


async def purge_deleted(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    data = await json_body(request)
    where: list[str] = ["status=?"]
    params: list[Any] = ["deleted"]
    if data.get("queue") is not None:
        qid = parse_ref(data["queue"], "queues")
        if qid is None:
            raise ApiError(400, "queue must be a queue URL")
        where.append("queue=?")
        params.append(qid)
    if data.get("annotations") is not None:
        ids = [
            parse_ref(u, "annotations")
            for u in url_list(data["annotations"], "annotations", "annotations")
        ]
        where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params += ids
    with box.store.tx():
        for aid in box.store.annotation_ids(where, params):
            ann = box.store.get_annotation(aid)
            if ann is not None:
                box.set_status(ann, "purged", user["id"])
                box.store.save_content(aid, [])
    return Response(status_code=202)


def _content_guard(ann: dict[str, Any]) -> None:
    if ann["status"] == "purged":
        raise ApiError(400, "content of a purged annotation cannot be changed")
    if ann["status"] == "in_workflow":
        raise ApiError(409, "content of an annotation in workflow cannot be changed")


def _content_reply(request: Request, text: str) -> Response:
    body = '{"content": ' + text + ', "results": ' + text + "}"
    return Response(body.replace(PH, base_of(request)).encode(), media_type="application/json")


async def annotation_content(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    if request.method == "PATCH":
        _content_guard(ann)
        data = await json_body(request, required=True)
        tree = box.store.get_content(ann["id"])
        sindex = box.sindex(ref_id(ann["schema"]) or 1)
        with box.store.tx():
            ct.patch_tree(tree, data.get("content"), sindex, ann["id"], box.alloc())
            box.store.save_content(ann["id"], tree)
            _touch(box, ann, user)
    text = box.store.get_content_text(ann["id"]) or "[]"
    return _content_reply(request, text)


def _touch(box: Sandbox, ann: dict[str, Any], user: dict[str, Any]) -> None:
    ann["modified_at"] = now_iso()
    ann["modifier"] = ann["modified_by"] = ref("users", user["id"])
    box.store.save_annotation(ann)


async def content_node(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    tree = box.store.get_content(ann["id"])
    found = ct.find_node(tree, int(request.path_params["node_id"]))
    if found is None:
        raise ApiError(404, "content node not found")
    node = found[0]
    if request.method == "PATCH":
        _content_guard(ann)
        data = await json_body(request, required=True)
        sindex = box.sindex(ref_id(ann["schema"]) or 1)
        with box.store.tx():
            ct.update_datapoint(node, sindex.get(node["schema_id"]), data, strict=False)
            box.store.save_content(ann["id"], tree)
            _touch(box, ann, user)
    return reply(request, node)


async def content_operations(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    _content_guard(ann)
    data = await json_body(request, required=True)
    tree = box.store.get_content(ann["id"])
    sindex = box.sindex(ref_id(ann["schema"]) or 1)
    with box.store.tx():
        ct.apply_operations(tree, data.get("operations"), sindex, ann["id"], box.alloc())
        box.store.save_content(ann["id"], tree)
        _touch(box, ann, user)
    return _content_reply(request, json.dumps(tree))


async def page_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    ann = box.annotation_or_404(path_id(request))
    doc = box.store.get_document(ref_id(ann["document"]) or 0) or {}
    pid = ann["id"]
    return reply(
        request,
        {
            "id": pid,
            "annotation": ann["url"],
            "number": 1,
            "rotation_deg": 0,
            "mime_type": "image/png",
            "s3_name": doc.get("s3_name"),
            "url": ref("pages", pid),
            "content": f"{PH}/v1/pages/{pid}/content",
            "metadata": {},
            "width": 1240,
            "height": 1754,
        },
    )


async def note_detail(request: Request, user: dict[str, Any]) -> Response:
    return reply(request, sb(request).get_or_404("notes", path_id(request)))


# ----------------------------------------------------------------------------- export
FORMAT_BY_ACCEPT = (
    ("text/csv", "csv"),
    ("application/xml", "xml"),
    ("text/xml", "xml"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/json", "json"),
)
MIME_BY_FORMAT = {
    "json": "application/json",
    "xml": "application/xml",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


async def queue_export(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    queue = box.get_or_404("queues", path_id(request))
    params = dict(request.query_params)
    if request.method == "POST":
        body = await request.body()
        if body.strip():
            with contextlib.suppress(ValueError):
                data = json.loads(body)
                if isinstance(data, dict):
                    for key, value in data.items():
                        if key not in params and value is not None:
                            params[key] = (
                                ",".join(str(ref_id(str(v)) or v) for v in value)
                                if isinstance(value, list)
                                else str(value)
                            )
    fmt = params.get("format")
    if not fmt:
        accept = request.headers.get("accept", "")
        fmt = next((f for mime, f in FORMAT_BY_ACCEPT if mime in accept), "json")
    if fmt not in MIME_BY_FORMAT:
        raise ApiError(400, f"unsupported format {fmt!r}")
    to_status = params.get("to_status")
    if to_status is not None:
        if request.method != "POST":
            raise ApiError(400, "to_status is only allowed with POST")
        if to_status not in ("exporting", "exported"):
            raise ApiError(400, "to_status must be exporting or exported")
    scoped = Request({**request.scope, "query_string": urllib.parse.urlencode(params).encode()})
    where, qparams = annotation_filters(scoped)
    where.append("queue=?")
    qparams.append(queue["id"])
    unpaged = fmt != "json" and "page" not in params and "page_size" not in params
    if unpaged:
        # CSV/XML/XLSX without page/page_size return every match (rossum-api streams them so)
        total, rows = box.store.query_annotations(
            where, qparams, annotation_ordering(scoped), with_content=True
        )
        pag = {"total": total, "total_pages": 1 if total else 0, "next": None, "previous": None}
    else:
        page, size = page_params(
            scoped, MAX_CSV_PAGE_SIZE if fmt in ("csv", "xlsx") else MAX_PAGE_SIZE
        )
        total, rows = box.store.query_annotations(
            where, qparams, annotation_ordering(scoped), size, (page - 1) * size, with_content=True
        )
        pag = pagination(request, total, page, size)
    if to_status:
        with box.store.tx():
            for ann, _tree in rows:
                if ann["status"] in ("exported", "exporting"):
                    continue
                box.set_status(ann, to_status, user["id"])
                if to_status == "exporting":
                    box.spawn(box.run_export_flow(ann["id"], user["id"]))
    schema_id = ref_id(queue["schema"]) or 1
    sindex = box.sindex(schema_id)
    docs = box.store.get_documents([ref_id(a["document"]) or 0 for a, _ in rows])
    base = base_of(request)
    if fmt in ("json", "xml"):
        items = [
            ex.json_item(a, t or [], docs.get(ref_id(a["document"]) or 0, {}), sindex)
            for a, t in rows
        ]
        if fmt == "json":
            return reply(request, {"pagination": pag, "results": items})
        text = ex.render_xml(items, pag).replace(PH, base)
        return Response(text.encode(), media_type=MIME_BY_FORMAT["xml"])
    schema = box.store.get("schemas", schema_id) or {"content": []}
    columns = ex.csv_columns(params, schema["content"], sindex)
    tables = ex.table_ids(sindex)
    out_rows: list[list[str]] = []
    for a, t in rows:
        out_rows += ex.csv_rows(
            a, t or [], docs.get(ref_id(a["document"]) or 0, {}), columns, sindex, tables
        )
    header = [h for _, h in columns]
    if fmt == "csv":
        return Response(
            ex.render_csv(header, out_rows, params, base).encode(), media_type=MIME_BY_FORMAT["csv"]
        )
    return Response(ex.render_xlsx(header, out_rows, base), media_type=MIME_BY_FORMAT["xlsx"])


# ----------------------------------------------------------------------------- hooks
HOOK_CONFIG_DEFAULTS: dict[str, Any] = {
    "insecure_ssl": False,
    "private": False,
    "schedule": {},
    "timeout_s": 30,
    "retry_count": 4,
    "retry_on_any_non_2xx": False,
    "payload_logging_enabled": False,
    "max_polling_time_s": 300,
    "retry_after_polling_failure": True,
}


EVENT_ACTIONS: dict[str, tuple[str, ...]] = {
    "annotation_status": ("changed",),
    "annotation_content": ("initialize", "started", "updated", "confirm", "export"),
    "upload": ("created",),
    "email": ("received",),
    "invocation": ("scheduled", "manual"),
}


def expand_events(events: list[str]) -> list[str]:
    """Store events as ``event.action`` (a bare ``event`` means all its actions, spec §9.1)."""
    out: list[str] = []
    for name in events:
        expanded = [f"{name}.{a}" for a in EVENT_ACTIONS[name]] if name in EVENT_ACTIONS else [name]
        out += [e for e in expanded if e not in out]
    return out


def apply_hook_fields(
    box: Sandbox, hook: dict[str, Any], data: dict[str, Any], user_id: int, *, creating: bool
) -> None:
    if "name" in data:
        if not isinstance(data["name"], str):
            raise ApiError(400, "name must be a string")
        hook["name"] = data["name"]
    if "type" in data:
        if data["type"] not in ("webhook", "function"):
            raise ApiError(400, "type must be webhook or function")
        hook["type"] = data["type"]
    if "config" in data:
        config = data["config"]
        if not isinstance(config, dict):
            raise ApiError(400, "config must be an object")
        for key in ("timeout_s", "retry_count", "max_polling_time_s"):
            if key in config and (
                isinstance(config[key], bool) or not isinstance(config[key], int | float)
            ):
                raise ApiError(400, f"config.{key} must be a number")
        if "timeout_s" in config and not 0 <= config["timeout_s"] <= 60:
            raise ApiError(400, "config.timeout_s must be within 0..60")
        if "retry_count" in config and not 0 <= config["retry_count"] <= 4:
            raise ApiError(400, "config.retry_count must be within 0..4")
        merged = dict(HOOK_CONFIG_DEFAULTS) if creating else dict(hook.get("config") or {})
        merged.update(config)
        hook["config"] = merged
    if hook.get("type", "webhook") == "webhook" and not (hook.get("config") or {}).get("url"):
        raise ApiError(400, "config.url is required for webhooks")
    for key in ("events", "sideload"):
        if key in data:
            if not isinstance(data[key], list) or not all(isinstance(e, str) for e in data[key]):
                raise ApiError(400, f"{key} must be a list of strings")
            hook[key] = expand_events(data[key]) if key == "events" else data[key]
    if "queues" in data:
        hook["queues"] = url_list(data["queues"], "queues", "queues")
        for url in hook["queues"]:
            if box.store.get("queues", ref_id(url) or 0) is None:
                raise ApiError(400, f"queue {ref_id(url)} does not exist")
    if "run_after" in data:
        hook["run_after"] = url_list(data["run_after"], "hooks", "run_after")
    if "active" in data:
        if not isinstance(data["active"], bool):
            raise ApiError(400, "active must be a boolean")
        hook["active"] = data["active"]
    for key in ("settings", "metadata"):
        if key in data:
            if not isinstance(data[key], dict):
                raise ApiError(400, f"{key} must be an object")
            hook[key] = check_metadata(data[key]) if key == "metadata" else data[key]
    if "secrets" in data:
        if not isinstance(data["secrets"], dict):
            raise ApiError(400, "secrets must be an object")
        hook["_secrets"] = {**(hook.get("_secrets") or {}), **data["secrets"]}
    if "token_owner" in data:
        hook["token_owner"] = one_ref(data["token_owner"], "users", "token_owner", box)
    if "token_lifetime_s" in data:
        value = data["token_lifetime_s"]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 7200
        ):
            raise ApiError(400, "token_lifetime_s must be within 0..7200")
        hook["token_lifetime_s"] = value
    for key in (
        "description",
        "guide",
        "read_more_url",
        "extension_image_url",
        "settings_schema",
        "secrets_schema",
        "test",
        "extension_source",
    ):
        if key in data:
            hook[key] = data[key]
    hook["modified_by"], hook["modified_at"] = ref("users", user_id), now_iso()


def hook_view(hook: dict[str, Any]) -> dict[str, Any]:
    out = public(hook)
    out["secrets"] = {}
    if (out.get("config") or {}).get("private"):
        out["config"] = {k: v for k, v in out["config"].items() if k not in ("url", "secret")}
    return out


async def hooks(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    if request.method == "POST":
        data = await json_body(request, required=True)
        if "name" not in data:
            raise ApiError(400, "name is required")
        now = now_iso()
        hook: dict[str, Any] = {
            "id": 0,
            "type": "webhook",
            "url": "",
            "name": "",
            "metadata": {},
            "queues": [],
            "run_after": [],
            "sideload": [],
            "active": True,
            "events": [],
            "config": {},
            "test": {},
            "extension_source": "custom",
            "settings": {},
            "settings_schema": None,
            "secrets_schema": None,
            "description": None,
            "guide": None,
            "read_more_url": None,
            "extension_image_url": None,
            "hook_template": None,
            "token_owner": None,
            "token_lifetime_s": None,
            "created_by": ref("users", user["id"]),
            "created_at": now,
            "modified_by": None,
            "modified_at": None,
            "_secrets": {},
        }
        if "config" not in data:
            data = {**data, "config": {}}
        apply_hook_fields(box, hook, data, user["id"], creating=True)
        with box.store.tx():
            hid = box.store.next_id("hooks")
            hook["id"], hook["url"] = hid, ref("hooks", hid)
            box.store.put("hooks", hook)
        return reply(request, hook_view(hook), 201)

    def has_event(o: dict[str, Any], v: str) -> bool:
        return any(e == v or e.startswith(v + ".") for e in o.get("events") or [])

    items = filter_objects(
        request,
        box.store.all("hooks"),
        {
            "name": lambda o, v: o.get("name") == v,
            "type": lambda o, v: o.get("type") == v,
            "queue": ref_filter("queues", "queues"),
            "active": lambda o, v: o.get("active") == bool_param(v, "active"),
            "config_url": lambda o, v: (o.get("config") or {}).get("url") == v,
            "events": has_event,
            "extension_source": lambda o, v: o.get("extension_source") == v,
        },
    )
    return list_reply(request, [hook_view(h) for h in items])


async def hook_detail(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    hook = box.get_or_404("hooks", path_id(request))
    if request.method == "DELETE":
        box.store.delete("hooks", hook["id"])
        return Response(status_code=204)
    if request.method in ("PATCH", "PUT"):
        data = await json_body(request)
        apply_hook_fields(box, hook, data, user["id"], creating=False)
        box.store.put("hooks", hook)
    return reply(request, hook_view(hook))


async def hook_secrets_keys(request: Request, user: dict[str, Any]) -> Response:
    hook = sb(request).get_or_404("hooks", path_id(request))
    return reply(request, sorted((hook.get("_secrets") or {}).keys()))


async def hook_test(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    hook = box.get_or_404("hooks", path_id(request))
    data = await json_body(request)
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(400, "payload object is required")
    if isinstance(data.get("config"), dict):
        hook = {**hook, "config": {**hook.get("config", {}), **data["config"]}}
    result = await box.dispatcher.deliver(hook, payload, retry=False, context={"test": True})
    return reply(request, {"response": result.body})


async def hook_invoke(request: Request, user: dict[str, Any]) -> Response:
    box = sb(request)
    hook = box.get_or_404("hooks", path_id(request))
    if not {"invocation", "invocation.manual"} & set(hook.get("events") or []):
        raise ApiError(400, "hook is not subscribed to invocation.manual")
    data = await json_body(request)
    base = box.config.public_base_url
    payload: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "timestamp": now_iso(),
        "base_url": base[:-4] if base.endswith("/api") else base,
        "hook": hook["url"].replace(PH, base),
        "settings": hook.get("settings") or {},
        "secrets": hook.get("_secrets") or {},
        "action": "manual",
        "event": "invocation",
        **data,
    }
    result = await box.dispatcher.deliver(hook, payload, retry=False)
    if not isinstance(result.body, dict | list):
        raise ApiError(400, "hook did not answer JSON")
    return reply(request, result.body)


# ----------------------------------------------------------------------------- admin
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
    ids = box.seed_annotations(queue_id, count, status)
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
    return JSONResponse(box.stats.as_dict())


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


# ----------------------------------------------------------------------------- app
def _routes() -> list[Route]:
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
        Route(v1, api_index, methods=["GET"]),
        Route(f"{v1}/auth/login", login, methods=["POST"]),
        Route(f"{v1}/auth/logout", logout, methods=["POST"]),
        Route(f"{v1}/auth/user", endpoint(auth_user), methods=["GET"]),
        Route(f"{v1}/organizations", endpoint(organizations_list), methods=["GET"]),
        Route(f"{v1}/organizations/{{id:int}}", endpoint(organization_detail), methods=["GET"]),
        Route(
            f"{v1}/organization_groups/{{id:int}}", endpoint(organization_group), methods=["GET"]
        ),
        Route(f"{v1}/workspaces", endpoint(workspaces), methods=["GET", "POST"]),
        Route(f"{v1}/workspaces/{{id:int}}", endpoint(workspace_detail), methods=crud),
        Route(f"{v1}/users", endpoint(users), methods=["GET", "POST"]),
        Route(f"{v1}/users/{{id:int}}", endpoint(user_detail), methods=["GET", "PATCH", "PUT"]),
        Route(f"{v1}/schemas", endpoint(schemas), methods=["GET", "POST"]),
        Route(f"{v1}/schemas/{{id:int}}", endpoint(schema_detail), methods=crud),
        Route(f"{v1}/queues", endpoint(queues), methods=["GET", "POST"]),
        Route(f"{v1}/queues/{{id:int}}", endpoint(queue_detail), methods=crud),
        Route(
            f"{v1}/queues/{{id:int}}/export",
            endpoint(queue_export, basic=True),
            methods=["GET", "POST"],
        ),
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
        Route(f"{v1}/annotations", endpoint(annotations_list), methods=["GET"]),
        Route(f"{v1}/annotations/purge_deleted", endpoint(purge_deleted), methods=["POST"]),
        Route(f"{v1}/annotations/{{id:int}}", endpoint(annotation_detail), methods=crud),
        Route(
            f"{v1}/annotations/{{id:int}}/content",
            endpoint(annotation_content),
            methods=["GET", "PATCH"],
        ),
        Route(
            f"{v1}/annotations/{{id:int}}/content/operations",
            endpoint(content_operations),
            methods=["POST"],
        ),
        Route(
            f"{v1}/annotations/{{id:int}}/content/{{node_id:int}}",
            endpoint(content_node),
            methods=["GET", "PATCH"],
        ),
        Route(
            f"{v1}/annotations/{{id:int}}/{{action:str}}",
            endpoint(annotation_action),
            methods=["POST"],
        ),
        Route(f"{v1}/pages/{{id:int}}", endpoint(page_detail), methods=["GET"]),
        Route(f"{v1}/notes/{{id:int}}", endpoint(note_detail), methods=["GET"]),
        Route(f"{v1}/hooks", endpoint(hooks), methods=["GET", "POST"]),
        Route(f"{v1}/hooks/{{id:int}}", endpoint(hook_detail), methods=crud),
        Route(f"{v1}/hooks/{{id:int}}/secrets_keys", endpoint(hook_secrets_keys), methods=["GET"]),
        Route(f"{v1}/hooks/{{id:int}}/test", endpoint(hook_test), methods=["POST"]),
        Route(f"{v1}/hooks/{{id:int}}/invoke", endpoint(hook_invoke), methods=["POST"]),
        *relations.routes(v1, endpoint),
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


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, f"{type(exc).__name__}: {exc}")


def create_app(config: SandboxConfig | None = None) -> SandboxMiddleware:
    """Build the sandbox ASGI app (state in ``app.app.state.sandbox``)."""
    config = config or SandboxConfig()
    box = Sandbox(config)
    silence_drop_logs()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await box.startup()
        try:
            yield
        finally:
            await box.shutdown()

    routes = _routes()
    star = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, 500: _server_error},
    )
    star.router.redirect_slashes = False
    star.state.sandbox = box
    wrapper = SandboxMiddleware(star, routes, config, box.faults, box.limiter, box.stats)
    wrapper.sandbox = box
    return wrapper
