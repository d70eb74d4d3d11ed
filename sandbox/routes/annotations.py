"""``/v1/annotations``: list (filters, ordering, sideloading), detail, status actions, content
(nodes and operations), purge; pages and notes."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox import content as ct
from sandbox.core import Sandbox, check_metadata
from sandbox.lifecycle import (
    CANCEL_RESTORES,
    POSTPONE_FROM,
    REJECT_FROM,
    START_DEFAULT,
    STATUSES,
    patch_allowed,
)
from sandbox.routes._http import (
    base_of,
    bool_param,
    endpoint,
    int_list,
    json_body,
    one_ref,
    page_params,
    pagination,
    path_id,
    reply,
    sb,
    select_fields,
    url_list,
)
from sandbox.store import ANN_TIME_COLUMNS, ANN_USER_COLUMNS
from sandbox.util import (
    PH,
    ApiError,
    now_iso,
    parse_dt_filter,
    parse_ref,
    public,
    ref,
    ref_id,
)

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


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
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
    ]
