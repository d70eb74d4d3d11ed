"""HTTP helpers shared by the route modules: authentication, JSON bodies, query parameters,
pagination, field selection, filters and object references (conventions in :mod:`sandbox.app`)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sandbox.core import Sandbox
from sandbox.util import (
    ApiError,
    json_response,
    parse_ref,
    ref,
    ref_id,
)

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
MAX_PAGE_SIZE = 100
MAX_CSV_PAGE_SIZE = 1000


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
