"""REST placeholders and Rossum JSON-templating operators."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from rossflow.export.context import ExportContext
from rossflow.export.errors import PlaceholderError
from rossflow.export.placeholders import (
    PlaceholderResolver,
    condition_passes,
    find_placeholders,
    required_secrets,
    resolver_for,
)
from tests.export_unit.conftest import PDF_BYTES


@pytest.fixture
def res(ctx: ExportContext) -> PlaceholderResolver:
    return resolver_for(
        ctx,
        secrets={"client_secret": "cs-123456", "token": SecretStr("tok-abcdef")},
        file_content=b"<xml/>",
    )


def test_file_content_and_original_file_keep_bytes(res: PlaceholderResolver) -> None:
    assert res.resolve("#{file_content}") == b"<xml/>"
    assert res.resolve("#{original_file}") == PDF_BYTES
    assert res.resolve("payload=#{file_content}") == "payload=<xml/>"


def test_binary_original_file_cannot_be_embedded(ctx: ExportContext) -> None:
    resolver = PlaceholderResolver(values={}, original_file=lambda: b"\xff\xfe\x00")
    with pytest.raises(PlaceholderError, match="binary"):
        resolver.resolve("x #{original_file}")


def test_original_file_loaded_only_when_used(ctx: ExportContext, pdf_loader: Any) -> None:
    resolver = resolver_for(ctx)
    resolver.resolve({"a": "@{invoice_id}"})
    assert pdf_loader.calls == []


def test_secrets(res: PlaceholderResolver) -> None:
    assert res.resolve("Bearer {secret.token}") == "Bearer tok-abcdef"
    assert res.resolve({"client_secret": "{secret.client_secret}"}) == {
        "client_secret": "cs-123456"
    }
    assert res.used_secrets == {"token", "client_secret"}
    with pytest.raises(PlaceholderError) as err:
        res.resolve("{secret.password}")
    assert "{secret.password}" in str(err.value)
    assert "client_secret, token" in str(err.value)  # names, never values
    assert "cs-123456" not in str(err.value)


def test_schema_id_exact_keeps_type_composite_stringifies(res: PlaceholderResolver) -> None:
    assert res.resolve("@{invoice_id}") == "INV-2024-0042"
    items = res.resolve("@{line_items}")
    assert isinstance(items, list) and items[2]["item_quantity"] == "2"
    assert res.resolve("@{invoice_id}.json") == "INV-2024-0042.json"
    assert res.resolve("n=@{erp_document_id}|") == "n=|"
    assert res.resolve({"@{currency}_total": "@{amount_total}"}) == {"eur_total": "2601.50"}
    assert res.resolve([1, True, None, "@{order_id}"]) == [1, True, None, "PO-77812"]


def test_values_written_by_earlier_steps(ctx: ExportContext) -> None:
    resolver = resolver_for(ctx.with_values({"erp_document_id": "ERP-1", "extra_key": 5}))
    assert resolver.resolve("@{erp_document_id}") == "ERP-1"
    assert resolver.resolve("@{extra_key}") == 5
    flat = PlaceholderResolver(values={"x": None})
    assert flat.resolve("@{x}") is None
    assert flat.resolve("[@{x}]") == "[]"


@pytest.mark.parametrize("text", ["@{ghost}", "#{file}", "@{}", "#{payload}"])
def test_unknown_placeholders_raise_naming_them(res: PlaceholderResolver, text: str) -> None:
    with pytest.raises(PlaceholderError) as err:
        res.resolve({"a": [text]})
    assert text in str(err.value)


def test_plain_braces_are_left_alone(res: PlaceholderResolver) -> None:
    assert res.resolve('{"json": {"in": "a string"}}') == '{"json": {"in": "a string"}}'
    assert res.resolve("{payload.x}") == "{payload.x}"


def test_missing_file_content(ctx: ExportContext) -> None:
    with pytest.raises(PlaceholderError, match="no templated file"):
        resolver_for(ctx).resolve("#{file_content}")


def test_condition_gate(res: PlaceholderResolver) -> None:
    assert condition_passes(None, res)
    assert condition_passes("@{order_id}", res)
    assert not condition_passes("@{erp_document_id}", res)  # empty -> skip
    assert not condition_passes("FALSE", res)
    assert not condition_passes("@{flag}", PlaceholderResolver(values={"flag": "False"}))
    assert condition_passes("@{flag}", PlaceholderResolver(values={"flag": "yes"}))


def test_find_placeholders_and_required_secrets() -> None:
    template = {"a": "{secret.x} @{y}", "b": ["#{file_content}", {"{secret.z}": 1}]}
    assert find_placeholders(template) == {"{secret.x}", "@{y}", "#{file_content}", "{secret.z}"}
    assert required_secrets(template) == {"x", "z"}


# ------------------------------------------------------------------------- JSON operators


def test_datapoint_value_types(res: PlaceholderResolver) -> None:
    template = {
        "s": {"$DATAPOINT_VALUE$": {"schema_id": "invoice_id"}},
        "f": {"$DATAPOINT_VALUE$": {"schema_id": "amount_total", "value_type": "float"}},
        "i": {"$DATAPOINT_VALUE$": {"schema_id": "item_quantity", "value_type": "integer"}},
        "d": {"$DATAPOINT_VALUE$": {"schema_id": "date_issue", "value_type": "iso_datetime"}},
        "empty": {"$DATAPOINT_VALUE$": {"schema_id": "erp_document_id", "value_type": "integer"}},
    }
    assert res.resolve(template) == {
        "s": "INV-2024-0042",
        "f": 2601.5,
        "i": 10,
        "d": "2024-03-27T00:00:00",
        "empty": None,
    }


def test_datapoint_value_boolean_and_bad_cast() -> None:
    r = PlaceholderResolver(values={"flag": "True", "n": "abc"})
    assert r.resolve({"$DATAPOINT_VALUE$": {"schema_id": "flag", "value_type": "boolean"}})
    with pytest.raises(PlaceholderError, match="cannot convert 'n'"):
        r.resolve({"$DATAPOINT_VALUE$": {"schema_id": "n", "value_type": "integer"}})
    with pytest.raises(PlaceholderError, match="unknown value_type"):
        r.resolve({"$DATAPOINT_VALUE$": {"schema_id": "n", "value_type": "money"}})


def test_datapoint_mapping(res: PlaceholderResolver) -> None:
    spec = {
        "$DATAPOINT_MAPPING$": {
            "schema_id": "currency",
            "mapping": {"eur": "EUR-€", "usd": "USD-$"},
            "fallback_mapping": "OTHER",
        }
    }
    assert res.resolve({"_ns_type": spec}) == {"_ns_type": "EUR-€"}
    spec["$DATAPOINT_MAPPING$"]["mapping"] = {"usd": "x"}
    assert res.resolve({"_ns_type": spec}) == {"_ns_type": "OTHER"}
    del spec["$DATAPOINT_MAPPING$"]["fallback_mapping"]
    assert res.resolve({"_ns_type": spec}) == {"_ns_type": None}


def test_for_each_schema_id_with_loop_index(res: PlaceholderResolver) -> None:
    template = {
        "items": {
            "$FOR_EACH_SCHEMA_ID$": {
                "schema_id": "line_item",
                "mapping": {
                    "_ns_type": "VendorBillItem",
                    "line": "@{schema_loop.index}",
                    "line0": "{schema_loop.index0}",
                    "quantity": "@{item_quantity}",
                    "description": "@{item_description}",
                    "invoice": "@{invoice_id}",  # falls back to the header outside the row
                    "amount": {
                        "$DATAPOINT_VALUE$": {
                            "schema_id": "item_amount_total",
                            "value_type": "float",
                        }
                    },
                },
            }
        }
    }
    items = res.resolve(template)["items"]
    assert len(items) == 3
    assert items[1] == {
        "_ns_type": "VendorBillItem",
        "line": 2,
        "line0": 1,
        "quantity": "1",
        "description": "Cloud hosting – Premium plan",
        "invoice": "INV-2024-0042",
        "amount": 603.79,
    }


def test_for_each_over_multivalue_id_and_fallback(res: PlaceholderResolver) -> None:
    by_mv = res.resolve(
        {"$FOR_EACH_SCHEMA_ID$": {"schema_id": "line_items", "mapping": "@{item_quantity}"}}
    )
    assert by_mv == ["10", "1", "2"]
    assert res.resolve(
        {"x": {"$FOR_EACH_SCHEMA_ID$": {"schema_id": "nothing", "mapping": {}}}}
    ) == {"x": []}


def test_if_schema_id(res: PlaceholderResolver) -> None:
    template = {
        "dueDate": {
            "$IF_SCHEMA_ID$": {
                "schema_id": "date_due",
                "mapping": {
                    "$DATAPOINT_VALUE$": {"schema_id": "date_due", "value_type": "iso_datetime"}
                },
            }
        },
        "erpId": {"$IF_SCHEMA_ID$": {"schema_id": "erp_document_id", "mapping": "@{x}"}},
        "withFallback": {
            "$IF_SCHEMA_ID$": {
                "schema_id": "erp_document_id",
                "mapping": "x",
                "fallback_mapping": "none",
            }
        },
    }
    assert res.resolve(template) == {"dueDate": "2024-04-26T00:00:00", "withFallback": "none"}


def test_if_datapoint_value(res: PlaceholderResolver) -> None:
    def tpl(op: str, value: Any, **extra: Any) -> dict[str, Any]:
        return {
            "Other_Field": 123,
            "Company_Reference": {
                op: {"schema_id": "currency", "value": value, "mapping": {"field_1": 456}, **extra}
            },
        }

    assert res.resolve(tpl("$IF_DATAPOINT_VALUE$", "eur")) == {
        "Other_Field": 123,
        "Company_Reference": {"field_1": 456},
    }
    assert res.resolve(tpl("$IF_DATAPOINT_VALUE$", "usd")) == {"Other_Field": 123}
    assert res.resolve(tpl("$IF_DATAPOINT_VALUE$", "usd", fallback_mapping="fb")) == {
        "Other_Field": 123,
        "Company_Reference": "fb",
    }
    # the docs' spelling without the trailing "$" works as well
    assert res.resolve(tpl("$IF_DATAPOINT_VALUE", "eur"))["Company_Reference"] == {"field_1": 456}


def test_if_datapoint_value_needs_exactly_one_match(res: PlaceholderResolver) -> None:
    with pytest.raises(PlaceholderError, match="found 3"):
        res.resolve(
            {"$IF_DATAPOINT_VALUE$": {"schema_id": "item_quantity", "value": "1", "mapping": 1}}
        )
    with pytest.raises(PlaceholderError, match="found 0"):
        res.resolve({"$IF_DATAPOINT_VALUE$": {"schema_id": "ghost", "value": "1", "mapping": 1}})
    # inside a loop the current row is searched first
    rows = res.resolve(
        {
            "$FOR_EACH_SCHEMA_ID$": {
                "schema_id": "line_item",
                "mapping": {
                    "$IF_DATAPOINT_VALUE$": {
                        "schema_id": "item_quantity",
                        "value": 1,
                        "mapping": "single",
                        "fallback_mapping": "many",
                    }
                },
            }
        }
    )
    assert rows == ["many", "single", "many"]


def test_skipped_items_are_dropped_from_lists(res: PlaceholderResolver) -> None:
    template = [{"$IF_SCHEMA_ID$": {"schema_id": "erp_document_id", "mapping": 1}}, 2]
    assert res.resolve(template) == [2]
    assert res.resolve({"$IF_SCHEMA_ID$": {"schema_id": "erp_document_id", "mapping": 1}}) is None


@pytest.mark.parametrize(
    "template,match",
    [
        ({"$FOO$": {}}, r"unknown operator \$FOO\$"),
        ({"$FOR_EACH$": {"schema_id": "x"}}, r"\$FOR_EACH\$ is not supported"),
        ({"$DATAPOINT_VALUE$": {"schema_id": "x"}, "other": 1}, "must be the only key"),
        ({"$DATAPOINT_VALUE$": "x"}, "needs an object"),
        ({"$DATAPOINT_VALUE$": {}}, "needs 'schema_id'"),
        ({"$DATAPOINT_VALUE$": {"schema_id": "ghost"}}, "no datapoint 'ghost'"),
        ({"a": "@{schema_loop.index}"}, "outside"),
    ],
)
def test_operator_errors(res: PlaceholderResolver, template: Any, match: str) -> None:
    with pytest.raises(PlaceholderError, match=match):
        res.resolve(template)


def test_dollar_keys_that_are_not_operators_pass(res: PlaceholderResolver) -> None:
    assert res.resolve({"$type": "x", "price$": 1}) == {"$type": "x", "price$": 1}
