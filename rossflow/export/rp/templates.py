"""``{…}`` placeholders of the Request Processor (``fill_template`` in Rossum's engine).

Roots: ``payload``, ``field`` (``{field.x.value}`` is the raw string, ``{field.x}`` the typed
value), ``property``, ``sequence``, ``token``, the iteration item (``item`` or
``iteration_item_name``), ``secret`` (rossflow: the Pipeline Secrets block, same values as
``payload.secrets``) and, in response-handler conditions, ``response`` and ``found_value``.
``.@`` fetches a Rossum URL (same origin only), ``base64(...)`` is the one function.

A string that is exactly one placeholder keeps the value's type; in a longer string each
value is stringified with ``None`` -> ``""``. ``strict`` filling (auth, request) raises
:class:`Unresolved` naming the placeholder; lenient filling (conditions, explicit queries)
gives ``None``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rossflow.export.errors import PlaceholderError

__all__ = [
    "Column",
    "Datapoint",
    "FieldTree",
    "Scope",
    "Unresolved",
    "fill",
    "parse_path",
    "resolve_path",
    "same_origin",
]

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")
_PLACEHOLDER = re.compile(
    r"\{\s*(?:(base64)\(\s*([A-Za-z_][^{}()\s]*)\s*\)|([A-Za-z_][^{}()\s\"']*))\s*\}"
)

Fetcher = Callable[[str], Awaitable[Any]]


class Unresolved(PlaceholderError):
    """A placeholder could not be resolved (names it)."""

    def __init__(self, placeholder: str, reason: str) -> None:
        self.placeholder = placeholder
        super().__init__(f"placeholder {{{placeholder}}} cannot be resolved: {reason}")


# ------------------------------------------------------------------------------- fields


@dataclass
class Datapoint:
    """One datapoint: ``.value`` is the raw string, :meth:`typed` the schema-typed value."""

    schema_id: str
    value: str
    kind: str = "string"
    id: int | None = None

    def typed(self) -> Any:
        if self.kind == "number":
            text = self.value.replace(" ", "").replace(",", ".") if self.value else ""
            if not text:
                return None
            try:
                return float(text)
            except ValueError:
                return self.value
        return self.value

    def __str__(self) -> str:
        return str(self.typed()) if self.typed() is not None else ""


@dataclass
class Column:
    """A datapoint schema id inside a multivalue: not a value by itself (use ``.all_values``)."""

    schema_id: str
    all_values: list[Datapoint]


class FieldTree:
    """``field.*`` over annotation content: datapoints, multivalues (rows/datapoints), columns."""

    def __init__(
        self, content: Sequence[Mapping[str, Any]], types: Mapping[str, str] | None = None
    ) -> None:
        self.types = dict(types or {})
        self.fields: dict[str, Any] = {}
        self._walk(content, inside_multivalue=False)

    def _dp(self, node: Mapping[str, Any]) -> Datapoint:
        """Datapoint of API content (``content.value``) or export content (``value``, ``type``)."""
        content = node.get("content")
        value = content.get("value") if isinstance(content, Mapping) else node.get("value")
        sid = str(node.get("schema_id"))
        kind = str(node.get("type") or self.types.get(sid) or "string")
        return Datapoint(sid, "" if value is None else str(value), kind, node.get("id"))

    def _row(self, node: Mapping[str, Any]) -> Any:
        if node.get("category") == "tuple":
            return {
                str(c.get("schema_id")): self._dp(c)
                for c in node.get("children") or []
                if c.get("category") == "datapoint"
            }
        return self._dp(node)

    def _walk(self, nodes: Sequence[Mapping[str, Any]], *, inside_multivalue: bool) -> None:
        for node in nodes or []:
            sid = str(node.get("schema_id"))
            category = node.get("category")
            if category == "multivalue":
                self.fields[sid] = [self._row(c) for c in node.get("children") or []]
                self._columns(node.get("children") or [])
            elif category == "datapoint" and not inside_multivalue:
                self.fields.setdefault(sid, self._dp(node))
            elif category in ("section", "tuple"):
                self._walk(node.get("children") or [], inside_multivalue=inside_multivalue)

    def _columns(self, children: Sequence[Mapping[str, Any]]) -> None:
        for child in children:
            nodes = child.get("children") if child.get("category") == "tuple" else [child]
            for node in nodes or []:
                if node.get("category") != "datapoint":
                    continue
                sid = str(node.get("schema_id"))
                column = self.fields.get(sid)
                if not isinstance(column, Column):
                    column = self.fields[sid] = Column(sid, [])
                column.all_values.append(self._dp(node))

    def datapoints(self) -> dict[str, Datapoint]:
        """Every datapoint by schema id (columns included: their first value)."""
        out: dict[str, Datapoint] = {}
        for sid, value in self.fields.items():
            if isinstance(value, Datapoint):
                out[sid] = value
            elif isinstance(value, Column) and value.all_values:
                out[sid] = value.all_values[0]
        return out

    def set_value(self, schema_id: str, value: str) -> bool:
        """Write a value (response handlers); False when the schema id is not a datapoint."""
        found = self.fields.get(schema_id)
        if isinstance(found, Datapoint):
            found.value = value
            return True
        return False


# -------------------------------------------------------------------------------- scope


@dataclass
class Scope:
    """The variables a template sees."""

    payload: Mapping[str, Any]
    fields: FieldTree
    properties: Mapping[str, Any]
    secrets: Mapping[str, Any]
    extra: Mapping[str, Any]  # sequence, token, item name, response, found_value
    base_url: str = ""

    def root(self, name: str) -> Any:
        if name == "payload":
            return self.payload
        if name == "field":
            return self.fields.fields
        if name == "property":
            return self.properties
        if name == "secret":
            return self.secrets
        if name in self.extra:
            return self.extra[name]
        raise KeyError(name)


def parse_path(path: str) -> list[str | int]:
    """``a.b[0].@`` -> ``["a", "b", 0, "@"]``."""
    out: list[str | int] = []
    for match in _SEGMENT.finditer(path):
        if match.group(2) is not None:
            out.append(int(match.group(2)))
        else:
            out.append(match.group(1))
    return out


def same_origin(url: str, base_url: str) -> bool:
    """Rossum's ``is_same_origin``: the last two labels of the hosts match."""
    host = (urlsplit(url).hostname or "").split(".")[-2:]
    base = (urlsplit(base_url).hostname or "").split(".")[-2:]
    return bool(host) and host == base


class _Missing(Exception):
    pass


def _step(value: Any, segment: str | int) -> Any:
    if isinstance(value, Datapoint):
        if segment == "value":
            return value.value
        if segment == "id":
            return value.id
        raise _Missing(f"a datapoint has no {segment!r} (use .value)")
    if isinstance(value, Column):
        if segment == "all_values":
            return value.all_values
        raise _Missing(
            f"{value.schema_id!r} is a column of a multivalue; use .all_values to get its list"
        )
    if isinstance(segment, int):
        if isinstance(value, (list, tuple)) and -len(value) <= segment < len(value):
            return value[segment]
        if isinstance(value, Mapping) and segment in value:
            return value[segment]
        raise _Missing(f"no item [{segment}]")
    if isinstance(value, Mapping):
        if segment in value:
            return value[segment]
        raise _Missing(f"no key {segment!r}")
    if isinstance(value, (list, tuple)) and segment.isdigit():
        return _step(value, int(segment))
    raise _Missing(f"{type(value).__name__} has no {segment!r}")


async def resolve_path(
    path: str, scope: Scope, *, fetch: Fetcher | None, strict: bool, typed: bool = True
) -> Any:
    """Value of ``path``; ``fetch=None`` makes ``.@`` inert (conditions)."""
    segments = parse_path(path)
    if not segments:
        raise Unresolved(path, "empty placeholder")
    head = segments[0]
    try:
        value = scope.root(str(head))
    except KeyError:
        if not strict:
            return None
        raise Unresolved(path, f"unknown name {head!r}") from None
    for segment in segments[1:]:
        if segment == "@":
            if fetch is not None and hasattr(value, "path") and isinstance(value, Mapping):
                value = await fetch(str(value))  # a preview marker: the fetcher names it
                continue
            if fetch is None or not isinstance(value, str):
                continue
            if not value.startswith(("http://", "https://")):
                continue
            if not same_origin(value, scope.base_url):
                if not strict:
                    return None
                raise Unresolved(path, f".@ only fetches Rossum URLs, not {value!r}")
            value = await fetch(value)
            continue
        try:
            value = _step(value, segment)
        except _Missing as exc:
            if not strict:
                return None
            raise Unresolved(path, str(exc)) from None
    if typed and isinstance(value, Datapoint):
        return value.typed()
    if isinstance(value, Column):
        if not strict:
            return None
        raise Unresolved(path, "a column of a multivalue is not a value; use .all_values")
    return value


def _b64(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, (dict, list)):
        raw = json.dumps(value, default=str).encode()
    else:
        raw = str(value).encode()
    return base64.b64encode(raw).decode("ascii")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Datapoint):
        return str(value)
    return str(value)


def _unwrap(value: Any) -> Any:
    """Datapoints inside a filled value become their typed values (rows, ``all_values``)."""
    if isinstance(value, Datapoint):
        return value.typed()
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


async def _placeholder(
    match: re.Match[str], scope: Scope, fetch: Fetcher | None, strict: bool
) -> Any:
    if match.group(1):
        value = await resolve_path(match.group(2), scope, fetch=fetch, strict=strict)
        if match.group(2) == "payload" and isinstance(value, Mapping):
            # rossflow never ships credentials inside an encoded payload (they would escape
            # redaction): the hook's secrets and the Rossum token are left out.
            value = {
                k: v for k, v in value.items() if k not in ("secrets", "rossum_authorization_token")
            }
        return _b64(_unwrap(value))
    return _unwrap(await resolve_path(match.group(3), scope, fetch=fetch, strict=strict))


async def fill(template: Any, scope: Scope, *, fetch: Fetcher | None, strict: bool) -> Any:
    """Fill every string of ``template`` (dicts and lists recursively; keys too)."""
    if isinstance(template, str):
        stripped = template.strip()
        match = _PLACEHOLDER.fullmatch(stripped)
        if match:
            return await _placeholder(match, scope, fetch, strict)
        parts: list[str] = []
        last = 0
        for match in _PLACEHOLDER.finditer(template):
            parts.append(template[last : match.start()])
            parts.append(_text(await _placeholder(match, scope, fetch, strict)))
            last = match.end()
        if not parts:
            return template
        parts.append(template[last:])
        return "".join(parts)
    if isinstance(template, Mapping):
        return {
            str(await fill(k, scope, fetch=fetch, strict=strict)): await fill(
                v, scope, fetch=fetch, strict=strict
            )
            for k, v in template.items()
        }
    if isinstance(template, list):
        return [await fill(v, scope, fetch=fetch, strict=strict) for v in template]
    return template


def find_placeholders(template: Any) -> list[str]:
    """Every placeholder path in ``template`` (for load-time checks and previews)."""
    found: list[str] = []
    if isinstance(template, str):
        for match in _PLACEHOLDER.finditer(template):
            found.append(match.group(2) or match.group(3))
    elif isinstance(template, Mapping):
        for k, v in template.items():
            found += find_placeholders(k) + find_placeholders(v)
    elif isinstance(template, list):
        for v in template:
            found += find_placeholders(v)
    return found
