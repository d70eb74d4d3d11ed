"""Reply records and value extraction (JMESPath, XPath, regex).

Rossum's REST export stores ``{"status_code", "headers" (snake_cased), "raw"}`` under
``response_headers_reference_key`` and the body under ``response_payload_reference_key``; the
data value extractor then runs JMESPath over either document (``format: json`` only). We build
one record per reply - ``{status_code, headers, raw, body, text, ok, url}`` - that serves both
(the headers document is its subset) and add XPath (lxml, with a namespace prefix map) and
regex (group 1, or the whole match) as the Request Processor does.

A value that is not found is ``None`` with a reason, never an exception, unless the rule says
``required``; malformed expressions and unparsable documents raise :class:`ExtractionError`
naming the rule and the path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jmespath
import jmespath.exceptions
from lxml import etree

from rossflow.export.errors import ExtractionError

__all__ = [
    "ExtractOutcome",
    "build_response_record",
    "collapse",
    "extract_jmespath",
    "extract_regex",
    "extract_value",
    "extract_xpath",
    "headers_document",
    "parse_document",
    "snake_case",
]

SourceFormat = Literal["json", "xml", "text"]
_SNAKE_RE = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """``Content-Type`` -> ``content_type`` (how Rossum stores reply headers)."""
    return _SNAKE_RE.sub("_", name.strip()).strip("_").lower()


def _decode(body: bytes | str | None, encoding: str | None = None) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body
    try:
        return body.decode(encoding or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return body.decode("utf-8", "replace")


def _charset(content_type: str) -> str | None:
    match = re.search(r"charset=([\w.-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else None


def build_response_record(
    status_code: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    body: bytes | str | None,
    *,
    url: str | None = None,
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    """Normalise an HTTP reply into the record extract rules and conditions read.

    ``body`` is the parsed JSON when the reply is JSON (by Content-Type, or when it parses),
    otherwise the text; ``text`` is always the decoded body.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    raw = [[str(k), str(v)] for k, v in pairs]
    snake: dict[str, str] = {}
    for key, value in raw:
        skey = snake_case(key)
        snake[skey] = f"{snake[skey]}, {value}" if skey in snake else value
    content_type = snake.get("content_type", "")
    text = _decode(body, _charset(content_type))
    parsed: Any = text if text else None
    looks_json = "json" in content_type.lower() or (
        not content_type and text.lstrip()[:1] in ("{", "[")
    )
    if text and looks_json:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    return {
        "status_code": int(status_code),
        "ok": 200 <= int(status_code) < 300,
        "headers": snake,
        "raw": raw,
        "body": parsed,
        "text": text,
        "url": url,
        "elapsed_s": elapsed_s,
    }


def headers_document(record: Mapping[str, Any]) -> dict[str, Any]:
    """What Rossum stores under ``response_headers_reference_key``."""
    return {
        "status_code": record["status_code"],
        "headers": dict(record.get("headers") or {}),
        "raw": [list(pair) for pair in record.get("raw") or []],
    }


@dataclass(frozen=True)
class ExtractOutcome:
    """Result of one rule: the value (``None`` when not found) and why it is missing."""

    rule: str
    target_schema_id: str | None
    value: Any
    found: bool
    reason: str | None = None


def parse_document(document: Any, fmt: SourceFormat, *, rule: str = "") -> Any:
    """Parse a stored artefact for ``fmt`` (dicts pass through; bytes/str are parsed)."""
    content = getattr(document, "content", document)  # RenderedFile or raw
    if fmt == "json":
        if isinstance(content, (bytes, str)):
            text = _decode(content)
            if not text.strip():
                return None
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ExtractionError(f"{rule}: source is not valid JSON: {exc}") from exc
        return content
    if fmt == "xml":
        if isinstance(content, Mapping) and "text" in content:  # a reply record
            content = content["text"]
        if isinstance(content, etree._Element):
            return content
        data = content.encode("utf-8") if isinstance(content, str) else content
        if not isinstance(data, bytes) or not data.strip():
            raise ExtractionError(f"{rule}: source is empty or not XML")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            return etree.fromstring(data, parser=parser)
        except etree.XMLSyntaxError as exc:
            raise ExtractionError(f"{rule}: source is not well-formed XML: {exc}") from exc
    if isinstance(content, Mapping) and "text" in content:
        return content["text"]
    if isinstance(content, (bytes, str)):
        return _decode(content)
    return json.dumps(content, ensure_ascii=False)


def extract_jmespath(expression: str, data: Any, *, rule: str = "") -> Any:
    """JMESPath over parsed data; invalid expressions raise :class:`ExtractionError`."""
    try:
        return jmespath.search(expression, data)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExtractionError(f"{rule}: invalid JMESPath {expression!r}: {exc}") from exc


def _xpath_scalar(result: Any) -> Any:
    if isinstance(result, list):
        if not result:
            return None
        result = result[0]
    if isinstance(result, etree._Element):
        return "".join(result.itertext())
    if isinstance(result, bytes):
        return result.decode("utf-8", "replace")
    if isinstance(result, float) and result.is_integer():
        return int(result)
    if isinstance(result, str):
        return str(result)  # lxml "smart strings" keep a reference to the tree
    return result


def extract_xpath(
    expression: str,
    document: Any,
    *,
    namespaces: Mapping[str, str] | None = None,
    rule: str = "",
) -> Any:
    """First XPath match as text (element text, attribute value, or number)."""
    root = parse_document(document, "xml", rule=rule)
    try:
        result = root.xpath(expression, namespaces=dict(namespaces or {}))
    except etree.XPathEvalError as exc:
        hint = ""
        if "Undefined namespace prefix" in str(exc):
            hint = " (declare the prefix under 'namespaces')"
        raise ExtractionError(f"{rule}: invalid XPath {expression!r}: {exc}{hint}") from exc
    except etree.XPathError as exc:
        raise ExtractionError(f"{rule}: invalid XPath {expression!r}: {exc}") from exc
    return _xpath_scalar(result)


def extract_regex(pattern: str, text: str, *, rule: str = "") -> str | None:
    """Group 1 of the first match (the whole match when the pattern has no group)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ExtractionError(f"{rule}: invalid regex {pattern!r}: {exc}") from exc
    match = compiled.search(text or "")
    if match is None:
        return None
    return match.group(1) if compiled.groups else match.group(0)


def extract_value(
    *,
    document: Any,
    fmt: SourceFormat = "json",
    jmespath_expr: str | None = None,
    xpath: str | None = None,
    regex: str | None = None,
    namespaces: Mapping[str, str] | None = None,
    target_schema_id: str | None = None,
    required: bool = False,
    rule: str | None = None,
) -> ExtractOutcome:
    """Apply one rule (exactly one of JMESPath/XPath/regex) to a stored document or record.

    JMESPath runs against the parsed document (JSON) - for a reply record that means paths like
    ``status_code``, ``headers.etag`` or ``body.id``. XPath runs against the XML body; regex
    against the text.
    """
    chosen = [
        (k, v) for k, v in (("jmespath", jmespath_expr), ("xpath", xpath), ("regex", regex)) if v
    ]
    if len(chosen) != 1:
        raise ExtractionError(
            f"{rule or target_schema_id}: exactly one of jmespath/value_path, xpath or regex "
            "is required"
        )
    kind, path = chosen[0]
    label = rule or f"rule -> {target_schema_id}"
    where = f"{label} ({kind} {path!r})"
    if kind == "jmespath":
        data = parse_document(document, "json", rule=where) if fmt != "xml" else None
        if fmt == "xml":
            raise ExtractionError(f"{where}: JMESPath needs a JSON source; use xpath for XML")
        value = extract_jmespath(path, data, rule=where)
    elif kind == "xpath":
        value = extract_xpath(path, document, namespaces=namespaces, rule=where)
    else:
        text = parse_document(document, "text", rule=where)
        value = extract_regex(path, text, rule=where)
    if value is None or value == []:
        reason = f"{where}: no match in the source"
        if required:
            raise ExtractionError(reason)
        return ExtractOutcome(where, target_schema_id, None, False, reason)
    return ExtractOutcome(where, target_schema_id, value, True)


def collapse(outcomes: Sequence[ExtractOutcome]) -> dict[str, Any]:
    """Values by target schema id; later rules win (no silent list-repr merging)."""
    values: dict[str, Any] = {}
    for outcome in outcomes:
        if outcome.target_schema_id and outcome.found:
            values[outcome.target_schema_id] = outcome.value
    return values
