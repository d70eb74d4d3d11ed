"""``/v1/hooks``: CRUD, secrets keys, test and invoke (delivery itself is :mod:`sandbox.hooks`)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.core import Sandbox, check_metadata
from sandbox.routes._http import (
    bool_param,
    endpoint,
    filter_objects,
    json_body,
    list_reply,
    one_ref,
    path_id,
    ref_filter,
    reply,
    sb,
    url_list,
)
from sandbox.util import (
    PH,
    ApiError,
    now_iso,
    public,
    ref,
    ref_id,
)

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


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    crud = ["GET", "PATCH", "PUT", "DELETE"]
    return [
        Route(f"{v1}/hooks", endpoint(hooks), methods=["GET", "POST"]),
        Route(f"{v1}/hooks/{{id:int}}", endpoint(hook_detail), methods=crud),
        Route(f"{v1}/hooks/{{id:int}}/secrets_keys", endpoint(hook_secrets_keys), methods=["GET"]),
        Route(f"{v1}/hooks/{{id:int}}/test", endpoint(hook_test), methods=["POST"]),
        Route(f"{v1}/hooks/{{id:int}}/invoke", endpoint(hook_invoke), methods=["POST"]),
    ]
