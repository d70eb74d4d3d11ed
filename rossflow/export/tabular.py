"""Annotation content flattened to rows (CSV/XLSX) and run-report frames, via pandas.

One row per line item with every header field repeated, which is what ERPs and spreadsheet
users import; an annotation without line items gives one row of header fields. This replaces
the hand-written CSV Jinja loops of Rossum's templating docs (which never quote values).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import pandas as pd

from rossflow.export.context import datapoint_value, find_nodes, iter_datapoints

__all__ = [
    "RUN_REPORT_COLUMNS",
    "annotation_rows",
    "frame_to_csv",
    "frame_to_xlsx",
    "rows_to_frame",
    "run_report_frame",
]

Node = Mapping[str, Any]

# The export run report: one row per annotation, these columns in this order (README, "Run
# report"). ``status`` is the Rossum status the annotation was left in; ``step``/``target``/
# ``http_status`` describe the failure (or the last delivery of a success).
RUN_REPORT_COLUMNS = [
    "annotation_id",
    "queue_id",
    "document",
    "outcome",
    "status",
    "step",
    "target",
    "http_status",
    "message",
    "warnings",
]
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _typed(value: Any, dp_type: str | None) -> Any:
    if not typed_value_applies(value, dp_type):
        return value
    if dp_type == "number":
        try:
            number = Decimal(str(value).replace(" ", ""))
        except InvalidOperation:
            return value
        return int(number) if number == number.to_integral_value() else float(number)
    if dp_type == "date":
        try:
            return pd.Timestamp(str(value)).date()
        except ValueError:
            return value
    return value


def typed_value_applies(value: Any, dp_type: str | None) -> bool:
    """Only non-empty strings of number/date datapoints are converted."""
    return isinstance(value, str) and value.strip() != "" and dp_type in ("number", "date")


def _dp_type(node: Node) -> str | None:
    content = node.get("content")
    if isinstance(content, Mapping) and "type" in content:
        return str(content["type"])
    return str(node["type"]) if node.get("type") else None


def _cell(node: Node, typed: bool) -> Any:
    value = datapoint_value(node)
    value = "" if value is None else value
    return _typed(value, _dp_type(node)) if typed else value


def _tables(content: Sequence[Node]) -> list[Node]:
    """Multivalues whose children are tuples (tables), in document order."""
    return [
        node
        for node in _walk_all(content)
        if node.get("category") == "multivalue"
        and any(child.get("category") == "tuple" for child in node.get("children") or [])
    ]


def _walk_all(nodes: Sequence[Node]) -> Iterable[Node]:
    for node in nodes:
        yield node
        yield from _walk_all(node.get("children") or [])


def annotation_rows(
    content: Sequence[Node],
    *,
    table: str | None = None,
    columns: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    typed: bool = False,
    multivalue_separator: str = "; ",
) -> list[dict[str, Any]]:
    """Rows of one annotation: header fields repeated on each line of ``table``.

    ``table`` is the schema id of the table multivalue (default: the first table found);
    ``meta`` columns (e.g. ``annotation_id``) come first; ``columns`` selects and orders.
    ``typed`` converts number/date datapoints (for XLSX); CSV keeps Rossum's strings.
    """
    tables = _tables(content)
    chosen: Node | None = None
    if table is not None:
        found = find_nodes(content, table)
        if not found or found[0].get("category") != "multivalue":
            raise ValueError(f"table {table!r} is not a multivalue in this annotation")
        chosen = found[0]
    elif tables:
        chosen = tables[0]
    in_chosen = {id(n) for n in _walk_all([chosen])} if chosen is not None else set()
    in_any_table = {id(n) for t in tables for n in _walk_all([t])}

    header: dict[str, Any] = dict(meta or {})
    multi: dict[str, list[Any]] = {}
    for node in iter_datapoints(content):
        if id(node) in in_any_table or id(node) in in_chosen:
            continue
        sid = str(node.get("schema_id"))
        multi.setdefault(sid, []).append(_cell(node, typed))
    for sid, values in multi.items():
        if len(values) == 1:
            header[sid] = values[0]
        else:  # a multivalue of plain datapoints
            header[sid] = multivalue_separator.join(str(v) for v in values)

    rows: list[dict[str, Any]] = []
    items = list(chosen.get("children") or []) if chosen is not None else []
    for item in items:
        row = dict(header)
        for node in iter_datapoints([item]):
            row[str(node.get("schema_id"))] = _cell(node, typed)
        rows.append(row)
    if not rows:
        rows.append(dict(header))
    if columns is not None:
        rows = [{col: row.get(col, "") for col in columns} for row in rows]
    return rows


def rows_to_frame(
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """DataFrame of rows; columns keep first-seen order unless ``columns`` is given."""
    rows = list(rows)
    order: list[str] = list(columns) if columns is not None else []
    if columns is None:
        for row in rows:
            for key in row:
                if key not in order:
                    order.append(key)
    frame = pd.DataFrame([{c: row.get(c, "") for c in order} for row in rows], columns=order)
    if rename:
        frame = frame.rename(columns=dict(rename))
    return frame


def _neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells that spreadsheets would execute as formulas (CSV injection)."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
            try:
                float(value)
                return value  # "-12.5" is a number, not a formula
            except ValueError:
                return "'" + value
        return value

    return frame.apply(lambda col: col.map(fix))


def frame_to_csv(
    frame: pd.DataFrame,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    escape_formulas: bool = False,
) -> bytes:
    """CSV bytes (header row, minimal quoting, ``\\n`` line ends)."""
    if escape_formulas:
        frame = _neutralise_formulas(frame)
    text = frame.to_csv(index=False, sep=delimiter, lineterminator="\n")
    return text.encode(encoding)


def frame_to_xlsx(
    frame: pd.DataFrame, *, sheet_name: str = "export", escape_formulas: bool = True
) -> bytes:
    """XLSX bytes (openpyxl); text cells that look like formulas are neutralised by default."""
    if escape_formulas:
        frame = _neutralise_formulas(frame)
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as writer:
        frame.to_excel(writer, index=False, sheet_name=sheet_name[:31] or "export")
    return buffer.getvalue()


def run_report_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-annotation outcome report of a run (standard columns first, extras after).

    Each row is a mapping such as ``{"annotation_id": 1, "status": "exported", "step": ..,
    "message": ..}``; a :class:`StepError` may be passed as ``error`` and is expanded.
    """
    expanded: list[dict[str, Any]] = []
    for row in rows:
        data = dict(row)
        error = data.pop("error", None)
        if error is not None:
            info = error.to_dict() if hasattr(error, "to_dict") else {"message": str(error)}
            data.setdefault("step", info.get("step"))
            data.setdefault("target", info.get("target"))
            data.setdefault("http_status", info.get("http_status"))
            data.setdefault("message", info.get("message"))
        expanded.append(data)
    extras: list[str] = []
    for data in expanded:
        for key in data:
            if key not in RUN_REPORT_COLUMNS and key not in extras:
                extras.append(key)
    columns = RUN_REPORT_COLUMNS + extras
    frame = pd.DataFrame([{c: d.get(c) for c in columns} for d in expanded], columns=columns)
    if "http_status" in frame:
        # A failure without an HTTP status (timeout, refused connection) has no number.
        status = frame["http_status"].replace("", None)
        frame["http_status"] = pd.to_numeric(status, errors="coerce").astype("Int64")
    return frame
