"""Rossum REST-export placeholders and the JSON-templating operator DSL.

Placeholders (strings anywhere in a nested JSON structure):

* ``#{file_content}`` - the templated file selected by ``export_reference_key``;
* ``#{original_file}`` - the original document bytes;
* ``{secret.name}`` - a hook/target secret;
* ``@{schema_id}`` - a datapoint value (inside ``$FOR_EACH_SCHEMA_ID$`` the current row first);
* ``@{schema_loop.index}`` / ``@{schema_loop.index0}`` (``{schema_loop.index}`` too) - loop
  counters inside ``$FOR_EACH_SCHEMA_ID$``.

A string that is exactly one placeholder keeps the value's type (bytes, list, ``None``);
composite strings stringify (``None`` -> ``""``, lists/dicts -> JSON). Any unknown or
unresolvable placeholder raises :class:`PlaceholderError` naming it - Rossum's Request
Processor instead lets ``None == None`` pass, which is a documented footgun.

Operators (a dict whose only key is the operator), per rossum.university "JSON Templating":
``$DATAPOINT_VALUE$``, ``$DATAPOINT_MAPPING$``, ``$FOR_EACH_SCHEMA_ID$``, ``$IF_SCHEMA_ID$``
and ``$IF_DATAPOINT_VALUE$`` (the docs' misspelling without the trailing ``$`` is accepted).
``$FOR_EACH$`` is "work in progress" in Rossum's docs and is rejected. The docs' "advanced"
single-brace Jinja expressions (``"{my_value + 1}"``) are not supported: they clash with
``{secret.x}`` and literal braces in bodies; use a ``template`` step for computed content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from rossflow.export.context import (
    ExportContext,
    datapoint_value,
    find_nodes,
    node_value,
    value_lookup,
)
from rossflow.export.errors import PlaceholderError

__all__ = [
    "OPERATORS",
    "PlaceholderResolver",
    "condition_passes",
    "find_placeholders",
    "required_secrets",
    "resolver_for",
]

_TOKEN_RE = re.compile(
    r"#\{(?P<hash>[^{}]*)\}"
    r"|@\{(?P<at>[^{}]*)\}"
    r"|\{secret\.(?P<secret>[^{}]*)\}"
    r"|\{(?P<loop>schema_loop\.[^{}]*)\}"
)
_OPERATOR_KEY_RE = re.compile(r"^\$[A-Z][A-Z0-9_]*\$?$")
OPERATORS = frozenset(
    {
        "$DATAPOINT_VALUE$",
        "$DATAPOINT_MAPPING$",
        "$FOR_EACH_SCHEMA_ID$",
        "$IF_SCHEMA_ID$",
        "$IF_DATAPOINT_VALUE$",
    }
)
_OPERATOR_ALIASES = {"$IF_DATAPOINT_VALUE": "$IF_DATAPOINT_VALUE$"}
_VALUE_TYPES = ("string", "integer", "float", "boolean", "iso_datetime")
_MISSING = object()


class _Skip:
    """Sentinel: the parent key (or list item) is omitted from the output."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()

Node = Mapping[str, Any]
Loadable = bytes | str | Callable[[], bytes | str] | None


@dataclass(frozen=True)
class _Scope:
    """Lookup scope: the current ``$FOR_EACH_SCHEMA_ID$`` row (if any) and loop counters."""

    nodes: tuple[Node, ...] = ()
    loop: Mapping[str, int] | None = None
    parent: _Scope | None = None


def _stringify(value: Any, placeholder: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlaceholderError(
                f"placeholder {placeholder} is binary and cannot be embedded in text; "
                "use it as the whole value"
            ) from exc
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _convert(value: Any, value_type: str, schema_id: str) -> Any:
    """Cast a datapoint value for ``$DATAPOINT_VALUE$`` (empty -> ``None`` except string)."""
    if value_type == "string":
        return "" if value is None else _stringify(value, f"@{{{schema_id}}}")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    try:
        if value_type == "integer":
            return int(Decimal(text.replace(" ", "")))
        if value_type == "float":
            return float(Decimal(text.replace(" ", "")))
        if value_type == "boolean":
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "y", "t", "on"):
                return True
            if lowered in ("false", "0", "no", "n", "f", "off"):
                return False
            raise ValueError(text)
        if value_type == "iso_datetime":
            if isinstance(value, (date, datetime)):
                parsed = value
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if not isinstance(parsed, datetime):
                parsed = datetime(parsed.year, parsed.month, parsed.day)
            return parsed.isoformat()
    except (ValueError, InvalidOperation) as exc:
        raise PlaceholderError(
            f"$DATAPOINT_VALUE$: cannot convert {schema_id!r} value {value!r} to {value_type}"
        ) from exc
    raise PlaceholderError(
        f"$DATAPOINT_VALUE$: unknown value_type {value_type!r} (one of {', '.join(_VALUE_TYPES)})"
    )


def _loose_equal(actual: Any, expected: Any) -> bool:
    if actual == expected:
        return True
    a = "" if actual is None else str(actual).strip()
    e = "" if expected is None else str(expected).strip()
    if isinstance(expected, bool):
        e = "true" if expected else "false"
        a = a.lower()
    if a == e:
        return True
    try:
        return Decimal(a) == Decimal(e)
    except (InvalidOperation, ValueError):
        return False


class PlaceholderResolver:
    """Resolves placeholders and operators for one annotation (pure; no I/O except loaders).

    ``values`` is the flat ``schema_id -> value`` lookup (already including values written
    back by earlier steps); ``content`` the annotation tree used by the operators.
    ``file_content`` / ``original_file`` may be callables so bytes load only when used.
    """

    def __init__(
        self,
        *,
        values: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        content: Sequence[Node] | None = None,
        secrets: Mapping[str, Any] | None = None,
        file_content: Loadable = None,
        original_file: Loadable = None,
        step: str | None = None,
    ) -> None:
        self.content: list[Node] = list(content or [])
        # A callable is read on first use (never changed here): most requests have no
        # ``@{schema_id}``, and the lookup walks the whole content.
        self._values_from = values if callable(values) else None
        self._values: Mapping[str, Any] | None = (
            None if callable(values) or values is None else dict(values)
        )
        self.secrets = dict(secrets or {})
        self._file_content = file_content
        self._original_file = original_file
        self.step = step
        self.used_secrets: set[str] = set()

    @property
    def values(self) -> Mapping[str, Any]:
        """The flat ``schema_id -> value`` lookup."""
        if self._values is None:
            source = self._values_from
            self._values = source() if source is not None else value_lookup(self.content)
        return self._values

    # -- public -----------------------------------------------------------------------------

    def resolve(self, template: Any) -> Any:
        """Resolve a nested JSON template; a top-level skipped operator yields ``None``."""
        result = self._resolve(template, _Scope())
        return None if result is SKIP else result

    def resolve_text(self, text: str) -> Any:
        """Resolve placeholders in one string (exact-match keeps the type)."""
        return self._resolve_str(text, _Scope())

    def resolve_str(self, text: str) -> str:
        """Resolve placeholders and always return text."""
        value = self.resolve_text(text)
        return _stringify(value, text)

    # -- internals --------------------------------------------------------------------------

    def _error(self, message: str) -> PlaceholderError:
        return PlaceholderError(message, step=self.step, secrets=self.secrets)

    def _resolve(self, template: Any, scope: _Scope) -> Any:
        if isinstance(template, str):
            return self._resolve_str(template, scope)
        if isinstance(template, Mapping):
            operator = self._operator_key(template)
            if operator is not None:
                return self._operator(operator, template[next(iter(template))], scope)
            out: dict[str, Any] = {}
            for key, value in template.items():
                resolved = self._resolve(value, scope)
                if resolved is SKIP:
                    continue
                out[self._resolve_key(key, scope)] = resolved
            return out
        if isinstance(template, (list, tuple)):
            items = [self._resolve(item, scope) for item in template]
            return [item for item in items if item is not SKIP]
        return template

    def _resolve_key(self, key: Any, scope: _Scope) -> Any:
        if isinstance(key, str) and ("{" in key):
            return _stringify(self._resolve_str(key, scope), key)
        return key

    def _operator_key(self, template: Mapping[str, Any]) -> str | None:
        keys = [k for k in template if isinstance(k, str) and _OPERATOR_KEY_RE.match(k)]
        if not keys:
            return None
        if len(template) != 1:
            raise self._error(
                f"operator {keys[0]} must be the only key of its object (found: "
                f"{', '.join(map(str, template))})"
            )
        name = _OPERATOR_ALIASES.get(keys[0], keys[0])
        if name == "$FOR_EACH$":
            raise self._error(
                "operator $FOR_EACH$ is not supported (unfinished in Rossum's docs); "
                "use $FOR_EACH_SCHEMA_ID$"
            )
        if name not in OPERATORS:
            raise self._error(
                f"unknown operator {keys[0]} (supported: {', '.join(sorted(OPERATORS))})"
            )
        return name

    def _resolve_str(self, text: str, scope: _Scope) -> Any:
        matches = list(_TOKEN_RE.finditer(text))
        if not matches:
            return text
        if len(matches) == 1 and matches[0].span() == (0, len(text)):
            return self._token_value(matches[0], scope)
        parts: list[str] = []
        pos = 0
        for match in matches:
            parts.append(text[pos : match.start()])
            parts.append(_stringify(self._token_value(match, scope), match.group(0)))
            pos = match.end()
        parts.append(text[pos:])
        return "".join(parts)

    def _token_value(self, match: re.Match[str], scope: _Scope) -> Any:
        token = match.group(0)
        if match.group("hash") is not None:
            name = match.group("hash").strip()
            if name == "file_content":
                return self._load(
                    self._file_content,
                    token,
                    "no templated file (set export_reference_key to a template output)",
                )
            if name == "original_file":
                return self._load(self._original_file, token, "the original file is not available")
            raise self._error(
                f"unknown placeholder {token} (supported: #{{file_content}}, #{{original_file}})"
            )
        if match.group("secret") is not None:
            name = match.group("secret").strip()
            if not name or name not in self.secrets:
                available = ", ".join(sorted(self.secrets)) or "none"
                raise self._error(f"unknown secret in placeholder {token} (available: {available})")
            self.used_secrets.add(name)
            value = self.secrets[name]
            getter = getattr(value, "get_secret_value", None)
            return getter() if callable(getter) else value
        name = (match.group("at") if match.group("at") is not None else match.group("loop")).strip()
        if name.startswith("schema_loop."):
            return self._loop_value(name, token, scope)
        if not name:
            raise self._error(f"empty placeholder {token}")
        value = self._lookup(name, scope)
        if value is _MISSING:
            raise self._error(f"unknown placeholder {token}: no datapoint or value {name!r}")
        return value

    def _load(self, source: Loadable, token: str, missing: str) -> Any:
        if source is None:
            raise self._error(f"placeholder {token}: {missing}")
        return source() if callable(source) else source

    def _loop_value(self, name: str, token: str, scope: _Scope) -> int:
        current: _Scope | None = scope
        while current is not None and current.loop is None:
            current = current.parent
        if current is None or current.loop is None:
            raise self._error(f"placeholder {token} used outside $FOR_EACH_SCHEMA_ID$")
        key = name.split(".", 1)[1]
        if key not in current.loop:
            raise self._error(f"unknown placeholder {token} (use schema_loop.index or index0)")
        return current.loop[key]

    def _scope_nodes(self, schema_id: str, scope: _Scope) -> list[Node]:
        current: _Scope | None = scope
        while current is not None:
            found = [
                node
                for root in current.nodes
                for node in ([root] if root.get("schema_id") == schema_id else [])
                + find_nodes(root.get("children") or [], schema_id)
            ]
            if found:
                return found
            current = current.parent
        return []

    def _lookup(self, schema_id: str, scope: _Scope) -> Any:
        in_scope = self._scope_nodes(schema_id, scope)
        if in_scope:
            return node_value(in_scope[0])
        if schema_id in self.values:
            return self.values[schema_id]
        return _MISSING

    def _nodes(self, schema_id: str, scope: _Scope) -> list[Node]:
        return self._scope_nodes(schema_id, scope) or find_nodes(self.content, schema_id)

    def _operator(self, name: str, spec: Any, scope: _Scope) -> Any:
        if not isinstance(spec, Mapping):
            raise self._error(f"operator {name} needs an object with its options")
        schema_id = spec.get("schema_id")
        if not isinstance(schema_id, str) or not schema_id:
            raise self._error(f"operator {name} needs 'schema_id'")
        if name == "$DATAPOINT_VALUE$":
            value = self._lookup(schema_id, scope)
            if value is _MISSING:
                raise self._error(f"$DATAPOINT_VALUE$: no datapoint {schema_id!r}")
            return _convert(value, str(spec.get("value_type", "string")), schema_id)
        if name == "$DATAPOINT_MAPPING$":
            if not isinstance(spec.get("mapping"), Mapping):
                raise self._error("$DATAPOINT_MAPPING$ needs a 'mapping' object")
            value = self._lookup(schema_id, scope)
            if value is _MISSING:
                raise self._error(f"$DATAPOINT_MAPPING$: no datapoint {schema_id!r}")
            key = _stringify(value, schema_id)
            if key in spec["mapping"]:
                return self._resolve(spec["mapping"][key], scope)
            return self._resolve(spec.get("fallback_mapping"), scope)
        if name == "$FOR_EACH_SCHEMA_ID$":
            if "mapping" not in spec:
                raise self._error("$FOR_EACH_SCHEMA_ID$ needs 'mapping'")
            return self._for_each(schema_id, spec, scope)
        if name == "$IF_SCHEMA_ID$":
            if "mapping" not in spec:
                raise self._error("$IF_SCHEMA_ID$ needs 'mapping'")
            value = self._lookup(schema_id, scope)
            present = value is not _MISSING and value not in (None, "", [], {})
            if present:
                return self._resolve(spec["mapping"], scope)
            if "fallback_mapping" in spec:
                return self._resolve(spec["fallback_mapping"], scope)
            return SKIP
        # $IF_DATAPOINT_VALUE$
        if "value" not in spec or "mapping" not in spec:
            raise self._error("$IF_DATAPOINT_VALUE$ needs 'value' and 'mapping'")
        nodes = [n for n in self._nodes(schema_id, scope) if n.get("category") == "datapoint"]
        if len(nodes) != 1:
            raise self._error(
                f"$IF_DATAPOINT_VALUE$: expected exactly one datapoint {schema_id!r}, "
                f"found {len(nodes)}"
            )
        if _loose_equal(datapoint_value(nodes[0]), spec["value"]):
            return self._resolve(spec["mapping"], scope)
        if "fallback_mapping" in spec:
            return self._resolve(spec["fallback_mapping"], scope)
        return SKIP

    def _for_each(self, schema_id: str, spec: Mapping[str, Any], scope: _Scope) -> Any:
        nodes = self._nodes(schema_id, scope)
        if len(nodes) == 1 and nodes[0].get("category") == "multivalue":
            nodes = list(nodes[0].get("children") or [])
        if not nodes:
            return self._resolve(spec.get("fallback_mapping", []), scope)
        out = []
        for index0, node in enumerate(nodes):
            row = _Scope(nodes=(node,), loop={"index": index0 + 1, "index0": index0}, parent=scope)
            item = self._resolve(spec["mapping"], row)
            if item is not SKIP:
                out.append(item)
        return out


def resolver_for(
    ctx: ExportContext,
    *,
    secrets: Mapping[str, Any] | None = None,
    file_content: Loadable = None,
    step: str | None = None,
) -> PlaceholderResolver:
    """Resolver bound to one annotation context (original file loads lazily)."""
    return PlaceholderResolver(
        values=ctx.shared_values,
        content=ctx.content,
        secrets=secrets,
        file_content=file_content,
        original_file=lambda: ctx.file.original_file,
        step=step,
    )


def condition_passes(condition: str | None, resolver: PlaceholderResolver) -> bool:
    """Rossum's REST/extract ``condition``: skip when it resolves to empty or ``"false"``."""
    if condition is None or condition == "":
        return True
    value = resolver.resolve_text(condition)
    if value is None or value is False:
        return False
    if isinstance(value, (list, dict)):
        return bool(value)
    text = _stringify(value, condition).strip()
    return text != "" and text.lower() != "false"


def find_placeholders(template: Any) -> set[str]:
    """Every placeholder token in a nested template (for config validation and docs)."""
    found: set[str] = set()
    if isinstance(template, str):
        found.update(m.group(0) for m in _TOKEN_RE.finditer(template))
    elif isinstance(template, Mapping):
        for key, value in template.items():
            found |= find_placeholders(key)
            found |= find_placeholders(value)
    elif isinstance(template, (list, tuple)):
        for item in template:
            found |= find_placeholders(item)
    return found


def required_secrets(template: Any) -> set[str]:
    """Names of the ``{secret.x}`` placeholders a template needs."""
    return {
        token[len("{secret.") : -1].strip()
        for token in find_placeholders(template)
        if token.startswith("{secret.")
    }
