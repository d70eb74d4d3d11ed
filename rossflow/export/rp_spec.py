"""The Request Processor (Rossum export v2) settings format: its vocabulary and load-time checks.

Pure data and checks, imported by the pipeline models (:mod:`rossflow.export.config`) and the
hook converter, so that a config with an unknown phase, key, operator, ``content_type``,
``auth.type`` or ``source`` is refused at load time with the key path as the user wrote it
(Rossum itself fails such configs silently at run time, e.g. an unknown operator skips a stage).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AUTH_TYPES",
    "CONTENT_TYPES",
    "EXTRACTORS",
    "FILTER_OPERATORS",
    "GENERIC_MESSAGE",
    "LOGICAL_OPERATORS",
    "SOURCES",
    "TARGET_TYPES",
    "is_placeholder_text",
    "validate_call",
    "validate_filter",
    "validate_get_content",
    "validate_settings",
]

FILTER_OPERATORS = (
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$regex",
    "$size",
)
LOGICAL_OPERATORS = ("$and", "$or")
SOURCES = (
    "document_relation",
    "document_relation_content",
    "relation",
    "relation_content",
    "parent_relation",
    "parent_relation_content",
    "explicit",
)
CONTENT_TYPES = ("json", "form", "files", "multipart", "raw")
AUTH_TYPES = ("bearer", "oauth1", "oauth2_private_certificate")
TARGET_TYPES = ("schema_id", "property", "document_relation")
EXTRACTORS = ("$jmespath", "$xmlpath", "$regex")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
SIGNATURE_METHODS = ("HMAC-SHA256", "HMAC-SHA1")
JWT_ALGORITHMS = ("PS256", "PS384", "PS512", "RS256", "RS384", "RS512")

# Rossum's only error text (verbatim, including the doubled "during"); used by the
# ``compat.single_generic_message`` switch.
GENERIC_MESSAGE = (
    "Some exception occurred during during export pipeline - request processor run. "
    "Check log for details."
)

STAGE_KEYS = ("evaluate", "get_content", "call_api")
EVALUATE_KEYS = ("name", "condition")
GET_CONTENT_KEYS = ("name", "source", "query")
CALL_KEYS = ("name", "auth", "request", "priority_response_handlers", "response_handlers")
REQUEST_KEYS = (
    "url",
    "method",
    "content",
    "content_type",
    "headers",
    "params",
    "timeout",
    "ignore_timeout",
    "iterate_over",
    "iteration_item_name",
)
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "bearer": (
        "type",
        "url",
        "method",
        "content_type",
        "content",
        "headers",
        "params",
        "credential_key",
    ),
    "oauth1": (
        "type",
        "consumer_key",
        "consumer_secret",
        "token_key",
        "token_secret",
        "realm",
        "signature_method",
    ),
    "oauth2_private_certificate": (
        "type",
        "url",
        "client_id",
        "certificate_id",
        "private_certificate",
        "scope",
        "signature_algorithm",
        "assertion_expiry",
        "audience",
        "credential_key",
        "grant_type",
        "client_assertion_type",
        "additional_claims",
        "additional_token_params",
    ),
}
HANDLER_KEYS = ("condition", "target_type", "target_key", "value")

_PLACEHOLDER = re.compile(r"\{[A-Za-z_]")


def is_placeholder_text(value: Any) -> bool:
    """Whether a string holds a ``{…}`` placeholder (then it is checked at run time)."""
    return isinstance(value, str) and bool(_PLACEHOLDER.search(value))


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def _unknown_keys(
    obj: Mapping[str, Any], allowed: tuple[str, ...], path: str, problems: list[str]
) -> None:
    for key in obj:
        if key not in allowed:
            problems.append(f"{path}: unknown key {key!r} (known: {_choices(allowed)})")


def _need_mapping(value: Any, path: str, problems: list[str]) -> bool:
    if not isinstance(value, Mapping):
        problems.append(f"{path}: must be an object, got {type(value).__name__}")
        return False
    return True


def _need_list(value: Any, path: str, problems: list[str]) -> bool:
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list, got {type(value).__name__}")
        return False
    return True


def validate_filter(condition: Any, path: str) -> list[str]:
    """Problems of a MongoDB-style filter (operators limited to Rossum's set)."""
    problems: list[str] = []
    if not isinstance(condition, Mapping):
        return [f'{path}: a condition must be an object like {{"field.x.value": {{"$eq": 1}}}}']
    for key, value in condition.items():
        where = f"{path}.{key}" if "." not in str(key) else f'{path}["{key}"]'
        if key in LOGICAL_OPERATORS:
            if not isinstance(value, list) or not value:
                problems.append(f"{where}: must be a non-empty list of conditions")
                continue
            for i, sub in enumerate(value):
                problems.extend(validate_filter(sub, f"{where}[{i}]"))
        elif str(key).startswith("$"):
            problems.append(
                f"{where}: unknown operator {key!r} here; only $and and $or combine "
                "conditions (there is no $not: use $ne, $nin or $exists: false)"
            )
        elif isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            problems.extend(_validate_operators(value, where))
    return problems


def _validate_operators(ops: Mapping[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    for op, operand in ops.items():
        where = f"{path}.{op}"
        if op not in FILTER_OPERATORS:
            problems.append(
                f"{where}: unknown operator {op!r} (known: {_choices(FILTER_OPERATORS)})"
            )
        elif op == "$exists" and not isinstance(operand, bool):
            problems.append(f"{where}: must be true or false")
        elif op == "$regex":
            if not isinstance(operand, str):
                problems.append(f"{where}: must be a regular expression string")
            elif not is_placeholder_text(operand):
                try:
                    re.compile(operand)
                except re.error as exc:
                    problems.append(f"{where}: invalid regular expression: {exc}")
        elif op in ("$in", "$nin") and not (
            isinstance(operand, list) or is_placeholder_text(operand)
        ):
            problems.append(f"{where}: must be a list")
        elif op == "$size":
            if isinstance(operand, Mapping):
                problems.extend(_validate_operators(operand, where))
            elif not isinstance(operand, int) or isinstance(operand, bool):
                problems.append(f"{where}: must be an integer or an operator object")
    return problems


def validate_get_content(rule: Any, path: str) -> list[str]:
    """Problems of one ``get_content`` entry."""
    problems: list[str] = []
    if not _need_mapping(rule, path, problems):
        return problems
    _unknown_keys(rule, GET_CONTENT_KEYS, path, problems)
    if not rule.get("name"):
        problems.append(f"{path}.name: required (the result is stored as property.<name>)")
    source = rule.get("source")
    if source not in SOURCES:
        problems.append(f"{path}.source: unknown source {source!r} (known: {_choices(SOURCES)})")
        return problems
    query = rule.get("query")
    if source == "explicit":
        if not isinstance(query, (list, str)):
            problems.append(f"{path}.query: explicit needs a list of template strings")
    elif query is not None:
        problems.extend(validate_filter(query, f"{path}.query"))
    return problems


def _validate_auth(auth: Any, path: str, problems: list[str]) -> None:
    if not _need_mapping(auth, path, problems):
        return
    kind = auth.get("type") or "bearer"
    if kind not in AUTH_TYPES:
        problems.append(f"{path}.type: unknown auth type {kind!r} (known: {_choices(AUTH_TYPES)})")
        return
    _unknown_keys(auth, AUTH_KEYS[kind], path, problems)
    if kind == "bearer":
        for key in ("url", "credential_key"):
            if not auth.get(key):
                problems.append(f"{path}.{key}: required for bearer auth")
        method = str(auth.get("method") or "POST").upper()
        if method not in METHODS:
            problems.append(f"{path}.method: unknown HTTP method {auth.get('method')!r}")
    elif kind == "oauth1":
        for key in ("consumer_key", "consumer_secret", "token_key", "token_secret"):
            if not auth.get(key):
                problems.append(f"{path}.{key}: required for oauth1")
        sig = auth.get("signature_method") or "HMAC-SHA256"
        if sig not in SIGNATURE_METHODS:
            problems.append(
                f"{path}.signature_method: {sig!r} is not supported "
                f"(use {_choices(SIGNATURE_METHODS)})"
            )
    else:
        for key in ("url", "client_id", "certificate_id", "private_certificate"):
            if not auth.get(key):
                problems.append(f"{path}.{key}: required for oauth2_private_certificate")
        alg = auth.get("signature_algorithm") or "PS256"
        if alg not in JWT_ALGORITHMS:
            problems.append(
                f"{path}.signature_algorithm: {alg!r} is not supported "
                f"(use {_choices(JWT_ALGORITHMS)})"
            )


def _validate_request(request: Any, path: str, problems: list[str]) -> None:
    if not _need_mapping(request, path, problems):
        return
    _unknown_keys(request, REQUEST_KEYS, path, problems)
    if not request.get("url"):
        problems.append(f"{path}.url: required")
    method = request.get("method")
    if not method:
        problems.append(f"{path}.method: required (GET, POST, PUT, PATCH or DELETE)")
    elif str(method).upper() not in METHODS:
        problems.append(f"{path}.method: unknown HTTP method {method!r}")
    ctype = request.get("content_type")
    if ctype is not None and ctype not in CONTENT_TYPES:
        problems.append(
            f"{path}.content_type: unknown value {ctype!r} (use json, form, files or "
            "multipart, or leave it out for a raw body)"
        )
    timeout = request.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        problems.append(f"{path}.timeout: must be a positive number of seconds")
    if "ignore_timeout" in request and not isinstance(request["ignore_timeout"], bool):
        problems.append(f"{path}.ignore_timeout: must be true or false")
    for key in ("headers", "params"):
        if request.get(key) is not None and not isinstance(request[key], Mapping):
            problems.append(f"{path}.{key}: must be an object")
    if request.get("iterate_over") is not None and not isinstance(request["iterate_over"], str):
        problems.append(f"{path}.iterate_over: must be a path such as 'field.line_items'")


def _validate_handler(handler: Any, path: str, problems: list[str]) -> None:
    if not _need_mapping(handler, path, problems):
        return
    _unknown_keys(handler, HANDLER_KEYS, path, problems)
    target = handler.get("target_type")
    if target not in TARGET_TYPES:
        problems.append(
            f"{path}.target_type: unknown target {target!r} (known: {_choices(TARGET_TYPES)})"
        )
    if not handler.get("target_key"):
        problems.append(f"{path}.target_key: required")
    if "condition" in handler:
        problems.extend(validate_filter(handler["condition"], f"{path}.condition"))
    value = handler.get("value")
    if value is None:
        if target in ("schema_id", "property"):
            problems.append(f"{path}.value: required for target_type {target!r}")
        return
    if not isinstance(value, Mapping) or len(value) != 1:
        problems.append(
            f"{path}.value: must be one path with one extractor, e.g. "
            '{"response.body": {"$jmespath": "id"}}'
        )
        return
    ((ctx_path, spec),) = value.items()
    where = f"{path}.value.{ctx_path}"
    if not str(ctx_path).startswith("response"):
        problems.append(f"{where}: the path must start with 'response'")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        problems.append(f"{where}: give exactly one of {_choices(EXTRACTORS)}")
        return
    ((op, query),) = spec.items()
    if op not in EXTRACTORS:
        problems.append(f"{where}.{op}: unknown extractor (known: {_choices(EXTRACTORS)})")
    elif not isinstance(query, str):
        problems.append(f"{where}.{op}: must be a string")
    elif op == "$jmespath":
        import jmespath
        import jmespath.exceptions

        try:
            jmespath.compile(query)
        except jmespath.exceptions.JMESPathError as exc:
            problems.append(f"{where}.{op}: invalid JMESPath: {exc}")
    elif op == "$regex":
        try:
            re.compile(query)
        except re.error as exc:
            problems.append(f"{where}.{op}: invalid regular expression: {exc}")


def validate_call(call: Any, path: str) -> list[str]:
    """Problems of one ``call_api`` entry."""
    problems: list[str] = []
    if not _need_mapping(call, path, problems):
        return problems
    _unknown_keys(call, CALL_KEYS, path, problems)
    if "request" not in call:
        problems.append(f"{path}.request: required")
    else:
        _validate_request(call["request"], f"{path}.request", problems)
    if call.get("auth") is not None:
        _validate_auth(call["auth"], f"{path}.auth", problems)
    for key in ("priority_response_handlers", "response_handlers"):
        handlers = call.get(key)
        if handlers is None:
            continue
        if _need_list(handlers, f"{path}.{key}", problems):
            for i, handler in enumerate(handlers):
                _validate_handler(handler, f"{path}.{key}[{i}]", problems)
    return problems


def validate_settings(settings: Any, path: str = "settings") -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a whole ``{"stages": [...], "debugging": bool}`` object."""
    problems: list[str] = []
    warnings: list[str] = []
    if not _need_mapping(settings, path, problems):
        return problems, warnings
    for key in settings:
        if key not in ("stages", "debugging"):
            warnings.append(f"{path}: key {key!r} is not a Request Processor setting; ignored")
    stages = settings.get("stages")
    if not _need_list(stages, f"{path}.stages", problems):
        return problems, warnings
    if not stages:
        problems.append(f"{path}.stages: is empty")
    for s, stage in enumerate(stages):
        spath = f"{path}.stages[{s}]"
        if not _need_mapping(stage, spath, problems):
            continue
        for key in stage:
            if key not in STAGE_KEYS:
                problems.append(
                    f"{spath}: unknown phase {key!r} (a stage has {_choices(STAGE_KEYS)})"
                )
        if not any(stage.get(k) for k in STAGE_KEYS):
            warnings.append(f"{spath}: has no evaluate, get_content or call_api; nothing to do")
        evaluate = stage.get("evaluate")
        if evaluate is not None and _need_list(evaluate, f"{spath}.evaluate", problems):
            for i, rule in enumerate(evaluate):
                where = f"{spath}.evaluate[{i}]"
                if _need_mapping(rule, where, problems):
                    _unknown_keys(rule, EVALUATE_KEYS, where, problems)
                    if "condition" not in rule:
                        problems.append(f"{where}.condition: required")
                    else:
                        problems.extend(validate_filter(rule["condition"], f"{where}.condition"))
        rules = stage.get("get_content")
        if rules is not None and _need_list(rules, f"{spath}.get_content", problems):
            for i, rule in enumerate(rules):
                problems.extend(validate_get_content(rule, f"{spath}.get_content[{i}]"))
        calls = stage.get("call_api")
        if calls is not None and _need_list(calls, f"{spath}.call_api", problems):
            for i, call in enumerate(calls):
                problems.extend(validate_call(call, f"{spath}.call_api[{i}]"))
    return problems, warnings
