"""``rossflow render`` for Request Processor steps: what each call would send, offline.

Nothing is fetched or sent. Values only known at run time are shown as markers:
``<property.erp_id>`` (from ``get_content`` or an earlier reply), ``<token from auth>``,
``<fetched: …>`` for ``.@``. The token request of ``bearer`` / ``oauth2_private_certificate``
auth is shown too. Secrets are replaced by ``***``.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from rossflow.export.config import RpCallStep, RpEvaluateStep, RpGetContentStep
from rossflow.export.errors import StepError, redact
from rossflow.export.rp.direct_export import DIRECT_EXPORT_PATH
from rossflow.export.rp.filters import evaluate_filter
from rossflow.export.rp.http import encode_request
from rossflow.export.rp.templates import FieldTree, Scope, Unresolved, fill, resolve_path

__all__ = ["preview_rp_step"]

T = TypeVar("T")
TOKEN_MARKER = "<token from auth>"  # noqa: S105 - a marker, not a credential


class Later(Mapping[str, Any]):
    """A value known only at run time; any path below it is another marker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, key: str) -> Any:
        return Later(f"{self.path}.{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return True

    def __str__(self) -> str:
        return f"<{self.path}>"


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (no fetch) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("preview coroutine suspended")


def _plain(value: Any) -> Any:
    if isinstance(value, Later):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "typed"):
        return value.typed()
    return value


def _scope(ctx: Any, secrets: Mapping[str, Any], **extra: Any) -> Scope:
    payload = dict(ctx.payload)
    payload.setdefault("base_url", "<rossum base url>")
    payload["secrets"] = dict(secrets)
    for key in ("request_id", "timestamp", "rossum_authorization_token", "hook"):
        payload.setdefault(key, Later(f"payload.{key}"))
    ann_url = str((ctx.payload.get("annotation") or {}).get("url") or "")
    return Scope(
        payload=payload,
        fields=FieldTree(ctx.content),
        properties=Later("property"),
        secrets=dict(secrets),
        extra=extra,
        base_url=ann_url,
    )


async def _fetch(url: str) -> Any:
    """``.@`` in a preview: a marker (never suspends, nothing is fetched)."""
    return Later(f"content of {url}")


def _plain_secrets(secrets: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
        for k, v in secrets.items()
    }


def preview_rp_step(
    step: Any, ctx: Any, *, secrets: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"note"|"request"+"body"|"error": …}`` for one ``rp_*`` step."""
    plain = _plain_secrets({**(secrets or {}), **getattr(step, "secrets", {})})
    values = [str(v) for v in plain.values() if v]
    try:
        if isinstance(step, RpEvaluateStep):
            return _evaluate(step, ctx, plain)
        if isinstance(step, RpGetContentStep):
            names = ", ".join(f"property.{r['name']} <- {r['source']}" for r in step.rules)
            return {"note": f"read from Rossum at run time: {names}"}
        if isinstance(step, RpCallStep):
            out = _call(step, ctx, plain)
            if "body" in out:
                out["body"] = redact(out["body"].decode("utf-8", "replace"), values).encode()
            for key in ("request", "note"):
                if key in out:
                    out[key] = redact(out[key], values)
            return out
    except Unresolved as exc:
        return {"error": redact(f"{step.key_path}: {exc.reason}", values)}
    except StepError as exc:
        return {"error": redact(exc.reason, values)}
    return {"note": "not previewed"}


def _evaluate(step: RpEvaluateStep, ctx: Any, secrets: Mapping[str, Any]) -> dict[str, Any]:
    scope = _scope(ctx, secrets)
    notes = []
    for i, rule in enumerate(step.conditions):
        condition = _sync(fill(rule["condition"], scope, fetch=None, strict=False))
        paths: dict[str, Any] = {}
        stack = [condition]
        while stack:
            current = stack.pop()
            for key, value in current.items():
                if key in ("$and", "$or"):
                    stack.extend(value)
                else:
                    paths[key] = _plain(_sync(resolve_path(key, scope, fetch=None, strict=False)))
        passed = evaluate_filter(condition, paths.get)
        name = rule.get("name") or f"condition {i + 1}"
        notes.append(f"{name}: {'true' if passed else 'false'} with the values before the run")
    return {"note": "; ".join(notes) + " (fields written by earlier calls may change this)"}


def _call(step: RpCallStep, ctx: Any, secrets: Mapping[str, Any]) -> dict[str, Any]:
    call = step.call
    request = call["request"]
    auth = call.get("auth")
    notes: list[str] = []
    filled_auth = _plain(_sync(fill(auth, _scope(ctx, secrets), fetch=None, strict=True)))
    kind = (filled_auth or {}).get("type") or "bearer" if auth else None
    if kind in ("bearer", "oauth2_private_certificate"):
        if kind == "bearer":
            token_req = encode_request(
                method=str(filled_auth.get("method") or "POST"),
                url=str(filled_auth["url"]),
                content=filled_auth.get("content"),
                content_type="json" if filled_auth.get("content_type") == "json" else "form",
                headers=filled_auth.get("headers"),
                params=filled_auth.get("params"),
                timeout_s=10,
                step=step.name,
            )
            body = (token_req.body or b"").decode("utf-8", "replace")
            notes.append(f"auth: {token_req.method} {token_req.url} {body}".rstrip())
        else:
            notes.append(
                f"auth: POST {filled_auth['url']} grant_type=client_credentials&"
                "client_assertion=<JWT signed "
                f"{filled_auth.get('signature_algorithm') or 'PS256'}>"
            )
    item_name = str(request.get("iteration_item_name") or "item")
    extra: dict[str, Any] = {"sequence": 0}
    if kind in ("bearer", "oauth2_private_certificate"):
        extra["token"] = TOKEN_MARKER
    if request.get("iterate_over"):
        items = _sync(
            resolve_path(
                str(request["iterate_over"]),
                _scope(ctx, secrets),
                fetch=None,
                strict=False,
                typed=False,
            )
        )
        if isinstance(items, list):
            notes.append(
                f"one request per item of {request['iterate_over']} ({len(items)}); first shown"
            )
            extra[item_name] = items[0] if items else Later(item_name)
        else:
            notes.append(f"one request per item of {request['iterate_over']} (known at run time)")
            extra[item_name] = Later(item_name)
    scope = _scope(ctx, secrets, **extra)
    template = {k: request.get(k) for k in ("url", "method", "headers", "params", "content")}
    filled = _plain(_sync(fill(template, scope, fetch=_fetch, strict=True)))
    encoded = encode_request(
        method=str(filled["method"]),
        url=str(filled["url"]),
        content=filled.get("content"),
        content_type=request.get("content_type"),
        headers=filled.get("headers"),
        params=filled.get("params"),
        timeout_s=float(request.get("timeout") or 10),
        step=step.name,
    )
    if kind == "oauth1":
        encoded.headers["Authorization"] = "OAuth <signed per request>"
    if DIRECT_EXPORT_PATH in encoded.url:
        content = filled.get("content") or {}
        rule = (content.get("settings") or {}).get("export_rule") or {}
        notes.append(
            "direct_export: done by rossflow (original document -> "
            f"{rule.get('path_to_directory', '/')}/{content.get('filename', '')}<extension>)"
        )
    shown_url = encoded.url.replace("%3C", "<").replace("%3E", ">")  # markers stay readable
    head = [f"{encoded.method} {shown_url}"] + [f"{k}: {v}" for k, v in encoded.headers.items()]
    out: dict[str, Any] = {"request": "\n   ".join(head), "body": encoded.preview()}
    if notes:
        out["note"] = "; ".join(notes)
    if isinstance(filled.get("content"), (dict, list)) and request.get("content_type") == "json":
        out["body"] = json.dumps(filled["content"], ensure_ascii=False, indent=2).encode()
    return out
