"""Request Processor (Rossum export v2, ``settings.stages``) hook -> steps of the pipeline DAG.

Each stage becomes up to three kinds of step, chained in Rossum's order (stage by stage;
``evaluate`` -> ``get_content`` -> each ``call_api`` entry), so Prefect shows, retries and
records them like v1 steps:

* ``<hook>/stage-N/evaluate`` (``rp_evaluate``): the stage's conditions; the other steps of
  the stage name it as their ``gate`` and are skipped, with a warning, when it failed;
* ``<hook>/stage-N/get_content`` (``rp_get_content``): fills ``property.<name>``;
* ``<hook>/stage-N/call_api:<name>`` (``rp_call``): one per ``call_api`` entry.

Bad settings are refused here with the hook name and the key path as the user wrote it. The
run-time semantics are in :mod:`rossflow.export.rp`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rossflow.export.errors import ConfigError
from rossflow.export.rp.templates import find_placeholders
from rossflow.export.rp_spec import validate_settings

__all__ = ["convert_request_processor", "is_request_processor"]


def is_request_processor(hook: Mapping[str, Any]) -> bool:
    """A hook object whose settings hold ``stages``."""
    settings = hook.get("settings")
    return isinstance(settings, Mapping) and "stages" in settings


def convert_request_processor(
    hook: Mapping[str, Any], name: str, warn: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Step dicts (chained through ``after``; the first has none) for one RP hook."""
    settings = hook.get("settings") or {}
    problems, warnings = validate_settings(settings)
    if not problems:
        problems = check_placeholders(settings)
    if problems:
        raise ConfigError(
            f"hook {name!r}: invalid Request Processor settings "
            "(fix the keys below; rossflow refuses them instead of skipping at run time)",
            problems,
        )
    for message in warnings:
        warn(f"hook {name!r}: {message}")
    hook_secrets = hook.get("secrets")
    secrets = (
        {k: str(v) for k, v in hook_secrets.items() if v is not None}
        if isinstance(hook_secrets, Mapping)
        else {}
    )
    if secrets:
        warn(f"hook {name!r}: inline secrets imported; move them to a secret block")
    steps: list[dict[str, Any]] = []
    used: set[str] = set()

    def add(step: dict[str, Any]) -> None:
        base = step["name"]
        n = 2
        while step["name"] in used:
            step["name"] = f"{base} ({n})"
            n += 1
        used.add(step["name"])
        if steps:
            step["after"] = [steps[-1]["name"]]
        if secrets:
            step["secrets"] = dict(secrets)
        steps.append(step)

    for s, stage in enumerate(settings["stages"]):
        prefix = f"{name}/stage-{s + 1}"
        where = f"settings.stages[{s}]"
        common = {"hook": name, "stage": s}
        gate = None
        if stage.get("evaluate"):
            gate = f"{prefix}/evaluate"
            add(
                {
                    **common,
                    "name": gate,
                    "type": "rp_evaluate",
                    "conditions": [dict(c) for c in stage["evaluate"]],
                    "key_path": f"{where}.evaluate",
                }
            )
            gate = steps[-1]["name"]
        if stage.get("get_content"):
            add(
                {
                    **common,
                    "name": f"{prefix}/get_content",
                    "type": "rp_get_content",
                    "gate": gate,
                    "rules": [dict(r) for r in stage["get_content"]],
                    "key_path": f"{where}.get_content",
                }
            )
        for c, call in enumerate(stage.get("call_api") or []):
            label = str(call.get("name") or f"call-{c + 1}")
            add(
                {
                    **common,
                    "name": f"{prefix}/call_api:{label}",
                    "type": "rp_call",
                    "gate": gate,
                    "call": dict(call),
                    "key_path": f"{where}.call_api[{c}]",
                }
            )
    if not steps:
        raise ConfigError(f"hook {name!r}: the Request Processor has no stage with work to do")
    return steps


_GLOBAL_ROOTS = ("payload", "field", "property", "secret")


def _root(placeholder: str) -> tuple[str, str | None]:
    head, _, rest = placeholder.partition(".")
    head = head.split("[", 1)[0]
    return head, (rest.split(".", 1)[0].split("[", 1)[0] or None) if rest else None


def check_placeholders(settings: Mapping[str, Any]) -> list[str]:
    """Placeholders no stage provides: unknown names, ``{token}`` without token auth,
    ``{item.*}`` without ``iterate_over``, ``{property.x}`` before anything stores ``x``."""
    problems: list[str] = []
    produced: set[str] = set()

    def check(template: Any, path: str, extra: tuple[str, ...], *, props: bool = True) -> None:
        for placeholder in find_placeholders(template):
            head, name = _root(placeholder)
            if head not in _GLOBAL_ROOTS + extra:
                problems.append(
                    f"{path}: placeholder {{{placeholder}}} uses unknown name {head!r} "
                    f"(available here: {', '.join(_GLOBAL_ROOTS + extra)})"
                )
            elif props and head == "property" and name and name not in produced:
                problems.append(
                    f"{path}: placeholder {{{placeholder}}}: no earlier get_content or "
                    f"property handler stores {name!r} (define it in an earlier stage)"
                )

    for s, stage in enumerate(settings.get("stages") or []):
        where = f"settings.stages[{s}]"
        for i, rule in enumerate(stage.get("evaluate") or []):
            check(rule.get("condition"), f"{where}.evaluate[{i}].condition", (), props=False)
        for i, rule in enumerate(stage.get("get_content") or []):
            check(rule.get("query"), f"{where}.get_content[{i}].query", (), props=False)
        for rule in stage.get("get_content") or []:
            produced.add(str(rule.get("name")))
        for c, call in enumerate(stage.get("call_api") or []):
            cpath = f"{where}.call_api[{c}]"
            auth = call.get("auth")
            check(auth, f"{cpath}.auth", ())
            request = call.get("request") or {}
            extra: tuple[str, ...] = ("sequence",)
            if isinstance(auth, Mapping) and (auth.get("type") or "bearer") != "oauth1":
                extra += ("token",)
            if request.get("iterate_over"):
                extra += (str(request.get("iteration_item_name") or "item"),)
                check(
                    "{" + str(request["iterate_over"]) + "}",
                    f"{cpath}.request.iterate_over",
                    (),
                )
            fields = {k: request.get(k) for k in ("url", "method", "headers", "params", "content")}
            check(fields, f"{cpath}.request", extra)
            for kind in ("priority_response_handlers", "response_handlers"):
                for h, handler in enumerate(call.get(kind) or []):
                    check(
                        handler.get("condition"),
                        f"{cpath}.{kind}[{h}].condition",
                        ("sequence", "response", "found_value"),
                        props=False,
                    )
            for kind in ("priority_response_handlers", "response_handlers"):
                for handler in call.get(kind) or []:
                    if handler.get("target_type") == "property":
                        produced.add(str(handler.get("target_key")))
    return problems
