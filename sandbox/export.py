"""Rendering of ``/v1/queues/{id}/export`` in JSON, XML, CSV and XLSX (spec §7).

* JSON: paginated envelope; each result ``{url, status, arrived_at, exported_at, document {url,
  file_name, file}, modifier, schema {url}, metadata, content}`` where content is the export tree
  (sections > datapoints ``{category, schema_id, value, type, rir_confidence}``; multivalue >
  tuple > datapoints). ``value`` is ISO for dates and a plain decimal for numbers.
* XML: the same data as ``<export><results><annotation url=…>…</annotation></results>
  <pagination>…</pagination></export>``.
* CSV/XLSX: header = schema labels (meta columns keep their ``meta_*`` names). Default columns are
  all exportable datapoints in schema order; ``columns`` replaces them, ``prepend_columns`` /
  ``append_columns`` add around them. Meta columns: meta_arrived_at, meta_file, meta_file_name,
  meta_status, meta_url, meta_automated, meta_modified_at, meta_assigned_at. When table columns
  are selected, every line item gives one row with the header fields repeated (an annotation
  without line items gives one row with empty item cells) - INF, not stated by Rossum.
* Datapoints with ``can_export: false`` are omitted from every format.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sandbox import content as ct
from sandbox.util import PH, ApiError

META_COLUMNS = (
    "meta_arrived_at",
    "meta_file",
    "meta_file_name",
    "meta_status",
    "meta_url",
    "meta_automated",
    "meta_modified_at",
    "meta_assigned_at",
)
QUOTING: dict[str, Any] = {
    "quote_minimal": csv.QUOTE_MINIMAL,
    "quote_none": csv.QUOTE_NONE,
    "quote_all": csv.QUOTE_ALL,
    "quote_non_numeric": csv.QUOTE_NONNUMERIC,
}


def json_item(
    ann: dict[str, Any], tree: list[ct.Node], doc: dict[str, Any], sindex: dict[str, ct.Node]
) -> dict[str, Any]:
    return {
        "url": ann["url"],
        "status": ann["status"],
        "arrived_at": doc.get("arrived_at", ann.get("_arrived_at")),
        "exported_at": ann.get("exported_at"),
        "document": {
            "url": ann["document"],
            "file_name": doc.get("original_file_name", ann.get("_file_name")),
            "file": f"{ann['document']}/content",
        },
        "modifier": ann.get("modifier"),
        "schema": {"url": ann["schema"]},
        "metadata": ann.get("metadata") or {},
        "content": ct.export_tree(tree, sindex),
    }


def _xml_node(node: dict[str, Any]) -> str:
    sid = quoteattr(node["schema_id"])
    if node["category"] == "datapoint":
        conf = node.get("rir_confidence")
        conf_attr = "" if conf is None else f" rir_confidence={quoteattr(str(conf))}"
        return (
            f"<datapoint schema_id={sid} type={quoteattr(node['type'])}{conf_attr}>"
            f"{escape(node['value'])}</datapoint>"
        )
    inner = "".join(_xml_node(c) for c in node["children"])
    return f"<{node['category']} schema_id={sid}>{inner}</{node['category']}>"


def _xml_text(tag: str, value: Any) -> str:
    return f"<{tag}/>" if value in (None, "") else f"<{tag}>{escape(str(value))}</{tag}>"


def render_xml(items: list[dict[str, Any]], pagination: dict[str, Any]) -> str:
    out = ['<?xml version="1.0" encoding="utf-8"?><export><results>']
    for it in items:
        doc = it["document"]
        modifier = it["modifier"]
        metadata = it["metadata"]
        out.append(
            f"<annotation url={quoteattr(it['url'])}>"
            f"{_xml_text('status', it['status'])}"
            f"{_xml_text('arrived_at', it['arrived_at'])}"
            f"{_xml_text('exported_at', it['exported_at'])}"
            f"<document url={quoteattr(doc['url'])}>{_xml_text('file_name', doc['file_name'])}"
            f"{_xml_text('file', doc['file'])}</document>"
            + ("<modifier/>" if not modifier else f"<modifier url={quoteattr(modifier)}/>")
            + f"<schema url={quoteattr(it['schema']['url'])}/>"
            + ("<metadata/>" if not metadata else _xml_text("metadata", json.dumps(metadata)))
            + "<content>"
            + "".join(_xml_node(s) for s in it["content"])
            + "</content>"
            + "</annotation>"
        )
    out.append("</results><pagination>")
    out.append(_xml_text("next", pagination["next"]))
    out.append(_xml_text("previous", pagination["previous"]))
    out.append(f"<total>{pagination['total']}</total>")
    out.append(f"<total_pages>{pagination['total_pages']}</total_pages>")
    out.append("</pagination></export>")
    return "".join(out)


def csv_columns(
    params: dict[str, str], schema_content: list[ct.Node], sindex: dict[str, ct.Node]
) -> list[tuple[str, str]]:
    """(key, header) of every CSV column; unknown names -> 400."""

    def names(raw: str | None) -> list[str]:
        return [n.strip() for n in (raw or "").split(",") if n.strip()]

    def exportable(sid: str) -> bool:
        node = sindex.get(sid)
        return (
            node is not None
            and node.get("category") == "datapoint"
            and node.get("can_export", True) is not False
        )

    if params.get("columns"):
        middle = names(params["columns"])
    else:
        middle = [sid for sid in sindex if exportable(sid)]
    keys = names(params.get("prepend_columns")) + middle + names(params.get("append_columns"))
    out: list[tuple[str, str]] = []
    for key in keys:
        if key in META_COLUMNS:
            out.append((key, key))
        elif exportable(key):
            out.append((key, str(sindex[key].get("label") or key)))
        else:
            raise ApiError(400, f"unknown or non-exportable column {key!r}")
    return out


def table_ids(sindex: dict[str, ct.Node]) -> set[str]:
    ids: set[str] = set()
    for snode in sindex.values():
        if snode.get("category") == "multivalue":
            child = snode.get("children") or {}
            if child.get("category") == "tuple":
                ids |= {c["id"] for c in child.get("children") or []}
            else:
                ids.add(child.get("id", ""))
    return ids


def csv_rows(
    ann: dict[str, Any],
    tree: list[ct.Node],
    doc: dict[str, Any],
    columns: list[tuple[str, str]],
    sindex: dict[str, ct.Node],
    tables: set[str],
) -> list[list[str]]:
    header = ct.header_values(tree, sindex)
    meta = {
        "meta_arrived_at": doc.get("arrived_at") or ann.get("_arrived_at") or "",
        "meta_file": f"{ann['document']}/content",
        "meta_file_name": doc.get("original_file_name") or ann.get("_file_name") or "",
        "meta_status": ann["status"],
        "meta_url": ann["url"],
        "meta_automated": "true" if ann.get("automated") else "false",
        "meta_modified_at": ann.get("modified_at") or "",
        "meta_assigned_at": ann.get("assigned_at") or "",
    }
    uses_table = any(key in tables for key, _ in columns)
    items = ct.table_rows(tree, sindex) if uses_table else []
    rows = []
    for item in items or [{}]:
        row = []
        for key, _ in columns:
            if key in meta:
                row.append(meta[key])
            elif key in tables:
                row.append(item.get(key, ""))
            else:
                row.append(header.get(key, ""))
        rows.append(row)
    return rows


def render_csv(header: list[str], rows: list[list[str]], params: dict[str, str], base: str) -> str:
    delimiter = params.get("delimiter") or ","
    quotechar = params.get("quote_char") or '"'
    quoting_name = params.get("quoting") or "quote_minimal"
    if quoting_name not in QUOTING or len(delimiter) != 1 or len(quotechar) != 1:
        raise ApiError(400, "invalid CSV formatting parameters")
    escapechar = params.get("escape_char") or None
    if quoting_name == "quote_none" and not escapechar:
        raise ApiError(400, "escape_char is mandatory with quoting=quote_none")
    buf = io.StringIO()
    try:
        writer = csv.writer(
            buf,
            delimiter=delimiter,
            quotechar=quotechar,
            quoting=QUOTING[quoting_name],
            escapechar=escapechar,
            lineterminator="\r\n",
        )
        writer.writerow(header)
        writer.writerows(rows)
    except csv.Error as exc:
        raise ApiError(400, f"CSV error: {exc}") from exc
    return buf.getvalue().replace(PH, base)


def render_xlsx(header: list[str], rows: list[list[str]], base: str) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "export"
    ws.append(header)
    for row in rows:
        ws.append([c.replace(PH, base) for c in row])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
