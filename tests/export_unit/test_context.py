"""Template context: field flattening exactly like Rossum, payload, lazy original file."""

from __future__ import annotations

from typing import Any

import pytest

from rossflow.export.context import (
    ExportContext,
    build_context,
    build_payload,
    build_writeback_operations,
    datapoint_value,
    find_datapoint_ids,
    flatten_fields,
    get_value,
    get_values,
    id_in_url,
    set_datapoint_values,
    to_datapoint_value,
    value_lookup,
)
from rossflow.export.errors import StepError


def hook_dp(sid: str, value: str, normalized: Any = None, dp_id: int = 1) -> dict[str, Any]:
    """A datapoint in the API/hook shape (value under ``content``)."""
    content: dict[str, Any] = {"value": value}
    if normalized is not None:
        content["normalized_value"] = normalized
    return {"id": dp_id, "category": "datapoint", "schema_id": sid, "content": content}


def test_header_fields_flatten(ctx: ExportContext) -> None:
    field = ctx.field
    assert field["invoice_id"] == "INV-2024-0042"
    assert field["date_issue"] == "2024-03-27"
    assert field["amount_total"] == "2601.50"
    assert field["sender_name"] == "Müller & Söhne <GmbH>"
    assert field["erp_document_id"] == ""
    # sections themselves do not appear, and tuple ids stay inside the table
    assert "basic_info_section" not in field
    assert "line_item" not in field


def test_table_is_list_of_dicts(ctx: ExportContext) -> None:
    items = ctx.field["line_items"]
    assert isinstance(items, list) and len(items) == 3
    assert items[0] == {
        "item_description": "Consulting services March 2024",
        "item_quantity": "10",
        "item_amount_base": "150.00",
        "item_amount_total": "1815.00",
    }


def test_normalized_value_wins_when_truthy() -> None:
    content = [
        {
            "category": "section",
            "schema_id": "s",
            "children": [
                hook_dp("date_issue", "27/03/2024", "2024-03-27"),
                hook_dp("amount_total", "2.601,50", "2601.50"),
                hook_dp(
                    "note", "raw", ""
                ),  # empty normalized value falls back, like Rossum's helper
            ],
        }
    ]
    field = flatten_fields(content)
    assert field == {"date_issue": "2024-03-27", "amount_total": "2601.50", "note": "raw"}


def test_tuple_outside_table_becomes_dict() -> None:
    content = [
        {
            "category": "section",
            "schema_id": "s",
            "children": [
                {
                    "category": "tuple",
                    "schema_id": "bank",
                    "children": [hook_dp("iban", "CZ65 0800"), hook_dp("bic", "GIBACZPX")],
                },
            ],
        }
    ]
    assert flatten_fields(content) == {"bank": {"iban": "CZ65 0800", "bic": "GIBACZPX"}}


def test_plain_multivalue_list_and_rossum_compat() -> None:
    content = [
        {
            "category": "section",
            "schema_id": "s",
            "children": [
                {
                    "category": "multivalue",
                    "schema_id": "po_numbers",
                    "children": [hook_dp("po_number", "PO-1"), hook_dp("po_number", "PO-2")],
                },
                {"category": "multivalue", "schema_id": "empty", "children": []},
            ],
        }
    ]
    assert flatten_fields(content)["po_numbers"] == ["PO-1", "PO-2"]
    # Rossum's helper: a dict keyed by schema id where the last value wins
    assert flatten_fields(content, plain_multivalue="rossum")["po_numbers"] == {"po_number": "PO-2"}
    assert flatten_fields(content)["empty"] == []


def test_datapoint_value_both_shapes() -> None:
    assert datapoint_value({"value": "a"}) == "a"
    assert datapoint_value({"content": {"value": "a", "normalized_value": "b"}}) == "b"


def test_lookups(ctx: ExportContext) -> None:
    assert get_value(ctx.content, "order_id") == "PO-77812"
    assert get_value(ctx.content, "nope", "dflt") == "dflt"
    assert get_values(ctx.content, "item_quantity") == ["10", "1", "2"]
    assert len(find_datapoint_ids(ctx.content, "item_quantity")) == 3
    assert find_datapoint_ids(ctx.content, "erp_document_id")
    values = value_lookup(ctx.content, {"erp_document_id": "ERP-1"})
    assert values["invoice_id"] == "INV-2024-0042"
    assert values["item_quantity"] == "10"  # first occurrence
    assert values["erp_document_id"] == "ERP-1"  # overrides win
    assert isinstance(values["line_items"], list)


def test_payload_shape(ctx: ExportContext) -> None:
    payload = ctx.payload
    assert payload["annotation"]["id"] == 315777
    assert payload["annotation"]["status"] == "confirmed"
    assert payload["annotation"]["metadata"] == {"source": "sftp-inbox"}
    assert payload["document"]["id"] == 315877
    assert payload["document"]["original_file_name"] == "INV-2024-0042.pdf"
    assert payload["export_item"]["url"].endswith("/annotations/315777")
    assert ctx.annotation_id == 315777 and ctx.document_id == 315877


def test_hook_payload_passes_through() -> None:
    payload = {
        "annotation": {
            "url": "https://x/api/v1/annotations/9",
            "content": [{"category": "section", "schema_id": "s", "children": [hook_dp("a", "1")]}],
        },
        "document": {"url": "https://x/api/v1/documents/7", "original_file_name": "a.pdf"},
    }
    ctx = build_context(payload)
    assert ctx.annotation_id == 9 and ctx.document_id == 7
    assert ctx.field == {"a": "1"}
    assert build_payload(payload)["document"]["original_file_name"] == "a.pdf"


def test_original_file_is_lazy(ctx: ExportContext, pdf_loader: Any) -> None:
    assert not ctx.file.loaded
    assert pdf_loader.calls == []
    assert ctx.file.original_file.startswith(b"%PDF")
    assert ctx.file.original_file.startswith(b"%PDF")
    assert len(pdf_loader.calls) == 1


def test_missing_original_file_loader(export_item: dict[str, Any]) -> None:
    with pytest.raises(StepError, match="original file is not available"):
        _ = build_context(export_item).file.original_file


def test_with_values_updates_content_and_overlay(ctx: ExportContext) -> None:
    new = ctx.with_values({"erp_document_id": 4711, "api1_status_code": "201", "not_in_schema": 1})
    assert new.field["erp_document_id"] == "4711"
    assert new.value("api1_status_code") == "201"
    assert new.field["not_in_schema"] == "1"
    assert new.values["not_in_schema"] == 1
    assert ctx.field["erp_document_id"] == ""  # the original context is untouched


def test_set_datapoint_values_drops_normalized_value() -> None:
    content = [
        {"category": "section", "schema_id": "s", "children": [hook_dp("amount", "1,00", "1.00")]}
    ]
    new, missing = set_datapoint_values(content, {"amount": "2.00", "other": "x"})
    assert flatten_fields(new) == {"amount": "2.00"}
    assert missing == {"other": "x"}


def test_writeback_operations(ctx: ExportContext) -> None:
    ops = build_writeback_operations(ctx.content, {"erp_document_id": "ERP-9"})
    assert ops == [
        {
            "op": "replace",
            "id": find_datapoint_ids(ctx.content, "erp_document_id")[0],
            "value": {"content": {"value": "ERP-9"}},
        }
    ]
    with pytest.raises(StepError, match="no datapoint with id for schema_id 'ghost'"):
        build_writeback_operations(ctx.content, {"ghost": 1}, step="extract")


def test_to_datapoint_value_never_python_repr() -> None:
    assert to_datapoint_value(None) == ""
    assert to_datapoint_value(201.0) == "201"
    assert to_datapoint_value(True) == "true"
    assert to_datapoint_value(["a", 1]) == '["a",1]'
    assert to_datapoint_value({"k": "v"}) == '{"k":"v"}'


def test_id_from_url() -> None:
    assert id_in_url("https://x/api/v1/annotations/123") == 123
    assert id_in_url("https://x/api/v1/annotations/123/") == 123
    assert id_in_url(None) is None
    assert id_in_url("https://x/none") is None


def test_content_must_be_a_list(export_item: dict[str, Any]) -> None:
    export_item["content"] = "https://x/content"
    with pytest.raises(StepError, match="not a list"):
        build_context(export_item)
