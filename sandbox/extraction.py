"""Simulated AI extraction: deterministic values from the document's text.

Text source: PDFs via pypdf (all pages), anything else decoded as UTF-8 (images and other binary
files simply yield no text). The convention is one ``Label: value`` per line; the label is matched
case-insensitively (``_``/``-`` count as spaces) against the schema datapoint's ``label`` or its
schema id, plus a few aliases (``Invoice date``, ``Vendor``, ``Total``, …)::

    Invoice number: INV-2024-001
    Issue date: 2024-03-01
    Due date: 2024-03-31
    PO number: PO-7788
    Vendor name: ACME s.r.o.
    Vendor VAT: CZ12345678
    Customer name: Rossum Ltd
    Currency: EUR
    Total amount: 1210.00
    Tax amount: 210.00
    Item: Consulting services | 10 | 100.00 | 1000.00

``Item:`` (or ``Line item:``) rows become ``line_items`` tuples: description | quantity | unit price
| total (missing trailing cells stay empty). The first occurrence of a header field wins. Dates are
normalised to ISO (``2024-03-01``, ``01.03.2024``, ``01/03/2024``, ``1 March 2024`` …, day first),
numbers to plain decimals (``1 210,00`` -> ``1210.00``), enums by option value or label
(``EUR`` -> ``eur``). Found values get page 1, a synthetic position, ``rir_confidence`` 0.90-0.99
(derived from a CRC of the value, so stable) and ``validation_sources: ["score"]``. A text without
any recognised line still gives a valid annotation with empty values. A text containing
``SANDBOX_FAIL_IMPORT`` makes the import fail (``failed_import``).
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from sandbox.content import Alloc, Node, find_by_schema_id, iter_nodes, new_tuple, normalize

FAIL_MARKER = "SANDBOX_FAIL_IMPORT"
ITEM_LABELS = ("item", "line item", "line")
ALIASES = {
    "invoice date": "date_issue",
    "date of issue": "date_issue",
    "invoice no": "invoice_id",
    "invoice": "invoice_id",
    "order number": "order_id",
    "purchase order": "order_id",
    "po": "order_id",
    "vendor": "sender_name",
    "supplier": "sender_name",
    "supplier name": "sender_name",
    "vendor vat id": "sender_vat_id",
    "vat id": "sender_vat_id",
    "customer": "recipient_name",
    "total": "amount_total",
    "amount due": "amount_total",
    "tax": "amount_total_tax",
    "vat": "amount_total_tax",
    "vat amount": "amount_total_tax",
    "due": "date_due",
}
_LINE_RE = re.compile(r"^\s*([^:|]{1,60}?)\s*:\s*(.*?)\s*$")


def extract_text(body: bytes, mime_type: str) -> str:
    """Plain text of a document (PDF text layer or UTF-8); empty for binaries."""
    if body.startswith(b"%PDF") or mime_type == "application/pdf":
        try:
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(body))
            return "\n".join((page.extract_text() or "") for page in reader.pages)
        except Exception:
            return ""
    if b"\x00" in body[:4096]:
        return ""
    return body.decode("utf-8", errors="replace")


def _norm_label(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", text)).strip().lower()


@dataclass
class Extracted:
    """Parsed text: header values by schema id and table rows (each with its line number)."""

    fields: dict[str, tuple[str, int]] = field(default_factory=dict)
    items: list[tuple[list[str], int]] = field(default_factory=list)
    failed: bool = False


def parse_text(text: str, sindex: dict[str, Node]) -> Extracted:
    """Apply the ``Label: value`` convention to ``text``."""
    result = Extracted(failed=FAIL_MARKER in text)
    labels: dict[str, str] = {}
    for sid, snode in sindex.items():
        if snode.get("category") != "datapoint":
            continue
        labels.setdefault(_norm_label(sid), sid)
        if snode.get("label"):
            labels.setdefault(_norm_label(str(snode["label"])), sid)
    for alias, sid in ALIASES.items():
        if sid in sindex:
            labels.setdefault(alias, sid)
    table_ids = _table_schema_ids(sindex)
    for lineno, line in enumerate(text.splitlines()):
        m = _LINE_RE.match(line)
        if not m:
            continue
        label, value = _norm_label(m.group(1)), m.group(2)[:1500]
        if label in ITEM_LABELS and table_ids:
            result.items.append(([c.strip() for c in value.split("|")], lineno))
            continue
        found = labels.get(label)
        if found is None or found in table_ids or not value:
            continue
        sid = found
        result.fields.setdefault(sid, (value, lineno))
    return result


def _table_schema_ids(sindex: dict[str, Node]) -> list[str]:
    """Datapoint ids of the first multivalue tuple (line items), in column order."""
    for snode in sindex.values():
        if snode.get("category") == "multivalue":
            child = snode.get("children") or {}
            if child.get("category") == "tuple":
                return [c["id"] for c in child.get("children") or []]
    return []


def confidence(schema_id: str, value: str) -> float:
    """Stable pseudo confidence in [0.90, 0.9999]."""
    return round(0.9 + (zlib.crc32(f"{schema_id}:{value}".encode()) % 1000) / 10000, 4)


def _position(lineno: int, col: int = 0) -> list[int]:
    top = 60 + 22 * lineno
    left = 60 + 140 * col
    return [left, top, left + 130, top + 18]


def fill_content(
    content: list[Node], sindex: dict[str, Node], extracted: Extracted, aid: int, alloc: Alloc
) -> None:
    """Write extracted values into the (empty) content tree; upload ``values`` stay untouched."""
    for sid, (raw, lineno) in extracted.fields.items():
        node = find_by_schema_id(content, sid)
        if node is None or node.get("category") != "datapoint":
            continue
        if (node.get("content") or {}).get("value"):
            continue  # initialised from upload values
        value, norm = normalize(sindex.get(sid), raw)
        pos = _position(lineno)
        node["content"].update(
            value=value,
            normalized_value=norm,
            page=1,
            position=pos,
            rir_text=raw,
            rir_position=pos,
            rir_confidence=confidence(sid, raw),
        )
        node["validation_sources"] = ["score"]
    if not extracted.items:
        return
    for node, _parent in iter_nodes(content):
        if node.get("category") != "multivalue":
            continue
        tuple_schema = (sindex.get(node["schema_id"]) or {}).get("children") or {}
        if tuple_schema.get("category") != "tuple":
            continue
        columns = [c["id"] for c in tuple_schema.get("children") or []]
        for cells, lineno in extracted.items:
            spec: dict[str, dict[str, Any]] = {}
            for col, (sid, raw) in enumerate(zip(columns, cells, strict=False)):
                if not raw:
                    continue
                spec[sid] = {
                    "value": raw,
                    "page": 1,
                    "position": _position(lineno, col),
                    "rir": True,
                    "rir_confidence": confidence(sid, raw),
                    "validation_sources": ["score"],
                }
            node["children"].append(new_tuple(aid, alloc, tuple_schema, spec))
        break


def apply_upload_values(
    content: list[Node], sindex: dict[str, Node], values: dict[str, str]
) -> None:
    """Initialise datapoints whose ``rir_field_names`` contain a key of upload ``values``."""
    if not values:
        return
    for node, _parent in iter_nodes(content):
        if node.get("category") != "datapoint":
            continue
        snode = sindex.get(node["schema_id"]) or {}
        for key in snode.get("rir_field_names") or []:
            if key in values:
                value, norm = normalize(snode, str(values[key]))
                node["content"].update(value=value, normalized_value=norm, rir_confidence=1.0)
                node["validation_sources"] = ["score"]
                break
