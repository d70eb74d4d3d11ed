"""Response handlers of the Request Processor: extract a value, test it, store it.

Extraction runs first and is visible to the handler's condition as ``found_value`` (Rossum's
``ResponseHandler.handle_response``). ``priority_response_handlers`` stop at the first one
that handled the response; ``response_handlers`` all run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jmespath
from lxml import etree

from rossflow.export.errors import ExtractionError

__all__ = ["context_value", "extract"]


def context_value(response: Mapping[str, Any], path: str) -> Any:
    """``response.body.x`` against the response; a missing segment gives ``{}`` (Rossum)."""
    parts = path.split(".")
    value: Any = {"response": response}
    for part in parts:
        value = value.get(part, {}) if isinstance(value, Mapping) else {}
    return value


def _xml_text(element: Any) -> Any:
    if isinstance(element, etree._Element):
        if element.text is not None and element.text.strip():
            return element.text
        return etree.tostring(element, encoding="unicode")
    return str(element)


def extract(value_spec: Mapping[str, Any], response: Mapping[str, Any], handler: str) -> Any:
    """Apply ``{"<path>": {"$jmespath"|"$xmlpath"|"$regex": query}}`` to the response."""
    ((path, spec),) = value_spec.items()
    ((op, query),) = spec.items()
    target = context_value(response, path)
    if op == "$jmespath":
        return jmespath.search(query, target)
    if op == "$regex":
        text = target if isinstance(target, str) else json.dumps(target, default=str)
        match = re.search(query, text)
        if match is None:
            return None
        return match.group(1) if match.groups() else match.group(0)
    # $xmlpath
    ctype = str((response.get("headers") or {}).get("content_type", ""))
    if "xml" not in ctype.lower():
        raise ExtractionError(
            f"{handler}: $xmlpath needs an XML response, got Content-Type {ctype or 'none'!r}"
        )
    raw = target if isinstance(target, (str, bytes)) else response.get("content", b"")
    try:
        root = etree.fromstring(raw.encode() if isinstance(raw, str) else raw)
    except etree.XMLSyntaxError as exc:
        raise ExtractionError(f"{handler}: the reply is not well-formed XML: {exc}") from exc
    try:
        found = root.xpath(query)
    except etree.XPathError as exc:
        raise ExtractionError(f"{handler}: invalid $xmlpath {query!r}: {exc}") from exc
    if not isinstance(found, list):
        return found
    texts = [_xml_text(e) for e in found]
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else texts
