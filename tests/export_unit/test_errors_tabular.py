"""Error messages with redaction, and tabular/run-report frames."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from pydantic import SecretStr

from rossflow.export.context import ExportContext
from rossflow.export.errors import (
    ConfigError,
    DeliveryError,
    StepError,
    TemplateRenderError,
    excerpt,
    redact,
)
from rossflow.export.tabular import (
    RUN_REPORT_COLUMNS,
    annotation_rows,
    frame_to_csv,
    frame_to_xlsx,
    rows_to_frame,
    run_report_frame,
)

# ------------------------------------------------------------------------------- errors


def test_redact_known_secrets_and_bearer_tokens() -> None:
    text = "client_secret=cs-123456&token=tok-abcdef Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x"
    out = redact(text, {"a": "cs-123456", "b": SecretStr("tok-abcdef"), "short": "ab"})
    assert "cs-123456" not in out and "tok-abcdef" not in out and "eyJhbG" not in out
    assert out.count("***") == 3
    assert redact("ab cd", ["ab"]) == "ab cd"  # too short to mask safely
    assert redact("", ["x"]) == ""


def test_longer_secret_masked_first() -> None:
    assert redact("pass-1234-extended", ["pass-1234", "pass-1234-extended"]) == "***"


def test_excerpt_is_bounded_single_line_and_redacted() -> None:
    body = ("error: token s3cr3t-value rejected\n" * 50).encode()
    out = excerpt(body, ["s3cr3t-value"])
    assert out is not None and len(out) <= 300 and "\n" not in out
    assert "s3cr3t" not in out and out.endswith("…")
    assert excerpt(None) is None


def test_step_error_message_for_operators() -> None:
    err = DeliveryError(
        "POST returned HTTP 422",
        step="post_to_erp",
        target="https://erp.example/api",
        http_status=422,
        reply='{"errors": ["vendor unknown"], "echo": "Bearer abcdefghijkl"}',
        secrets={"k": "abcdefghijkl"},
        annotation_id=315777,
    )
    msg = err.message()
    assert msg.startswith("[post_to_erp] POST returned HTTP 422")
    assert "target=https://erp.example/api" in msg and "HTTP 422" in msg
    assert "annotation=315777" in msg
    assert "vendor unknown" in msg and "abcdefghijkl" not in msg
    assert str(err) == msg
    data = err.to_dict()
    assert data["kind"] == "DeliveryError" and data["http_status"] == 422


def test_with_step_and_secret_in_reason() -> None:
    err = StepError("bad key sk-9999999", secrets=["sk-9999999"]).with_step("s")
    assert err.step == "s" and "sk-9999999" not in str(err)


def test_template_render_error_fields() -> None:
    err = TemplateRenderError("boom", template_key="k", lineno=3, step="t")
    assert err.message() == "[t] template 'k' line 3: boom"


def test_config_error_lists_problems() -> None:
    err = ConfigError("invalid", ["a", "b"])
    assert str(err) == "invalid\n  - a\n  - b"
    assert isinstance(err, ValueError)


# ------------------------------------------------------------------------------ tabular


def test_rows_repeat_header_per_line_item(ctx: ExportContext) -> None:
    rows = annotation_rows(ctx.content)
    assert len(rows) == 3
    for row in rows:
        assert row["invoice_id"] == "INV-2024-0042"
        assert row["sender_name"] == "Müller & Söhne <GmbH>"
        assert row["amount_total"] == "2601.50"
    assert [r["item_description"] for r in rows] == [
        "Consulting services March 2024",
        "Cloud hosting – Premium plan",
        "Travel expenses (Prague)",
    ]


def test_rows_without_line_items(ctx: ExportContext) -> None:
    content = [s for s in ctx.content if s["schema_id"] != "line_items_section"]
    rows = annotation_rows(content, meta={"annotation_id": 1})
    assert len(rows) == 1 and rows[0]["annotation_id"] == 1
    assert next(iter(rows[0])) == "annotation_id"


def test_rows_columns_and_unknown_table(ctx: ExportContext) -> None:
    rows = annotation_rows(ctx.content, columns=["invoice_id", "item_quantity", "nope"])
    assert rows[1] == {"invoice_id": "INV-2024-0042", "item_quantity": "1", "nope": ""}
    with pytest.raises(ValueError, match="not a multivalue"):
        annotation_rows(ctx.content, table="invoice_id")


def test_typed_rows(ctx: ExportContext) -> None:
    rows = annotation_rows(ctx.content, typed=True)
    assert rows[0]["item_quantity"] == 10
    assert rows[1]["item_amount_total"] == pytest.approx(603.79)
    assert str(rows[0]["date_issue"]) == "2024-03-27"
    assert rows[0]["invoice_id"] == "INV-2024-0042"


def test_csv_and_xlsx_bytes(ctx: ExportContext) -> None:
    frame = rows_to_frame(annotation_rows(ctx.content), rename={"invoice_id": "Invoice"})
    csv = frame_to_csv(frame, delimiter=";").decode()
    assert csv.splitlines()[0].startswith("Invoice;date_issue;")
    assert '"Müller & Söhne <GmbH>"' not in csv  # no quoting needed with ';'
    assert len(csv.splitlines()) == 4
    back = pd.read_excel(io.BytesIO(frame_to_xlsx(frame)))
    assert back.shape == (3, frame.shape[1])


def test_formula_neutralisation() -> None:
    frame = rows_to_frame([{"a": '=HYPERLINK("x")', "b": "-12.5", "c": "@SUM(A1)"}])
    csv = frame_to_csv(frame, escape_formulas=True).decode()
    assert "'=HYPERLINK" in csv and ",-12.5," in csv and "'@SUM" in csv


def test_run_report_frame() -> None:
    err = DeliveryError("HTTP 500", step="post", target="https://erp", http_status=500)
    frame = run_report_frame(
        [
            {"annotation_id": 1, "status": "exported", "duration_s": 0.4},
            {"annotation_id": 2, "status": "failed_export", "error": err, "attempt": 3},
        ]
    )
    assert list(frame.columns[: len(RUN_REPORT_COLUMNS)]) == RUN_REPORT_COLUMNS
    assert frame.columns[-1] == "attempt"
    failed = frame.iloc[1]
    assert failed["step"] == "post" and failed["http_status"] == 500
    assert "HTTP 500" in failed["message"]
    assert pd.isna(frame.iloc[0]["http_status"])
    assert run_report_frame([]).empty
