"""``/v1/queues/{id}/export``: annotations of a queue as JSON, CSV, XML or XLSX."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import export as ex
from sandbox.routes._http import (
    MAX_CSV_PAGE_SIZE,
    MAX_PAGE_SIZE,
    base_of,
    endpoint,
    page_params,
    pagination,
    path_id,
    reply,
    sb,
)
from sandbox.routes.annotations import annotation_filters, annotation_ordering
from sandbox.util import (
    PH,
    ApiError,
    ref_id,
)

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


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    return [
        Route(
            f"{v1}/queues/{{id:int}}/export",
            endpoint(queue_export, basic=True),
            methods=["GET", "POST"],
        ),
    ]
