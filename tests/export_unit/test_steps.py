"""Pure per-step logic, and a whole pipeline walked without any network."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from lxml import etree

from rossflow.export.config import (
    CleanStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    RestStep,
    SftpStep,
    TemplateStep,
)
from rossflow.export.context import ExportContext
from rossflow.export.errors import DeliveryError, EvaluationFailed, ExtractionError, StepError
from rossflow.export.extract import build_response_record
from rossflow.export.loading import load_pipeline
from rossflow.export.rest_request import (
    apply_response,
    prepare_auth_request,
    prepare_request,
    rest_gate,
    token_from_auth_response,
)
from rossflow.export.steps import (
    annotation_content_bytes,
    plan_file_storage,
    run_clean_step,
    run_evaluate_step,
    run_extract_step,
    run_template_step,
    step_enabled,
)
from tests.export_unit.conftest import PDF_BYTES

NOW = datetime(2024, 3, 5, tzinfo=UTC)
SECRETS = {
    "client_id": "cid-0001",
    "client_secret": "cs-123456",
    "access_token": "tok-abcdef",
    "token": "tok-abcdef",
}


def v1_step(settings: dict[str, Any], name: str = "s") -> Any:
    return load_pipeline([{"name": name, "settings": settings}]).steps[0]


def rendered_ctx(ctx: ExportContext, key: str, template: str, **kw: Any) -> ExportContext:
    step = TemplateStep(name="t", outputs=[{"key": key, "template": template, **kw}])  # type: ignore[list-item]
    new, _ = run_template_step(step, ctx)
    return new


def counter() -> Any:
    counts: defaultdict[str, int] = defaultdict(int)

    def draw(name: str) -> int:
        counts[name] += 1
        return counts[name] - 1

    return draw


# ------------------------------------------------------------------------------ requests


def test_raw_file_content_request(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["rest_status_resolver"])
    ctx = rendered_ctx(ctx, "export_annotation_to_xml_bas64", "<a>{{ field.invoice_id }}</a>")
    req = prepare_request(step, ctx, secrets=SECRETS)
    assert req.method == "POST" and req.url == "https://apiexport.yourserver.com/payload"
    assert req.content == b"<a>INV-2024-0042</a>"
    assert req.headers == {"Content-Type": "application/xml"}
    assert req.timeout_s == 120 and req.retries == 0
    assert "body=raw" in req.describe() and "INV" not in req.describe()


def test_content_type_defaults_from_rendered_file(ctx: ExportContext) -> None:
    ctx = rendered_ctx(ctx, "inv", '{"a": 1}', format="json")
    step = RestStep(
        name="r",
        export_reference_key="inv",  # type: ignore[arg-type]
        request={"url": "https://x/@{invoice_id}", "content": "#{file_content}"},
    )
    req = prepare_request(step, ctx)
    assert req.headers["Content-Type"] == "application/json"
    assert req.url == "https://x/INV-2024-0042"


def test_original_file_request(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    req = prepare_request(v1_step(v1_settings["rest_original_file"]), ctx)
    assert req.content == PDF_BYTES
    assert req.headers["Content-Type"] == "application/pdf"


def test_multipart_request(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["rest_multipart"])
    ctx = ctx.with_values({"document_id": "DOC-1", "vendor": "ACME"})
    ctx = rendered_ctx(ctx, "exported_annotation_csv", "a,b\n1,2", content_type="text/csv")
    req = prepare_request(step, ctx, secrets=SECRETS)
    ctype = req.headers.pop("Content-Type")
    assert req.headers == {"Authorization": "Bearer tok-abcdef"}
    boundary = ctype.removeprefix("multipart/form-data; boundary=")
    assert boundary != ctype and req.files is None and req.data is None
    assert (
        req.content
        == (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="other_field"\r\n\r\nACME\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="DOC-1.json"\r\n'
            "Content-Type: text/csv\r\n\r\na,b\n1,2\r\n"
            f"--{boundary}--\r\n"
        ).encode()
    )
    assert req.secrets_used == {"token"}


def test_json_body_with_operators(ctx: ExportContext) -> None:
    step = RestStep(
        name="r",
        request={  # type: ignore[arg-type]
            "url": "https://erp/api",
            "body": "json",
            "content": {
                "externalId": "@{invoice_id}",
                "total": {
                    "$DATAPOINT_VALUE$": {"schema_id": "amount_total", "value_type": "float"}
                },
                "lines": {
                    "$FOR_EACH_SCHEMA_ID$": {
                        "schema_id": "line_item",
                        "mapping": {"n": "@{schema_loop.index}", "qty": "@{item_quantity}"},
                    }
                },
            },
        },
    )
    req = prepare_request(step, ctx)
    assert req.json == {
        "externalId": "INV-2024-0042",
        "total": 2601.5,
        "lines": [{"n": 1, "qty": "10"}, {"n": 2, "qty": "1"}, {"n": 3, "qty": "2"}],
    }


def test_form_body(ctx: ExportContext) -> None:
    step = RestStep(
        name="r",
        request={  # type: ignore[arg-type]
            "url": "https://erp/api",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            "content": {"invoice": "@{invoice_id}", "lines": "@{line_items}"},
        },
    )
    req = prepare_request(step, ctx)
    assert req.data is not None and req.data["invoice"] == "INV-2024-0042"
    assert json.loads(req.data["lines"])[0]["item_quantity"] == "10"


def test_missing_reference_is_a_clear_error(
    ctx: ExportContext, v1_settings: dict[str, Any]
) -> None:
    with pytest.raises(StepError, match="'export_annotation_to_csv' was not produced"):
        prepare_request(v1_step(v1_settings["rest_simple"], "rest"), ctx)


def test_rest_gate(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["rest_oauth2_full"])
    assert not rest_gate(step, ctx.with_values({"api_gate": ""}))
    assert not rest_gate(step, ctx.with_values({"api_gate": "False"}))
    assert rest_gate(step, ctx.with_values({"api_gate": "yes"}))


def test_auth_request_and_token(v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["rest_oauth2_full"])
    req = prepare_auth_request(step.auth, secrets=SECRETS)
    assert req.url == "http://custom.url/token"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs((req.content or b"").decode())
    assert form["client_secret"] == ["cs-123456"] and form["grant_type"] == ["client_credentials"]
    ok = build_response_record(
        200,
        {"Content-Type": "application/json"},
        b'{"access_token": "new-token-1", "expires_in": 3600}',
    )
    assert token_from_auth_response(step.auth, ok) == ("new-token-1", 3600.0)
    denied = build_response_record(401, {}, b'{"error": "invalid_client cs-123456"}')
    with pytest.raises(DeliveryError, match="authentication failed") as err:
        token_from_auth_response(step.auth, denied, step="s", secrets=SECRETS)
    assert "cs-123456" not in str(err.value)
    with pytest.raises(DeliveryError, match="no token"):
        token_from_auth_response(step.auth, build_response_record(200, {}, b"{}"))


# ----------------------------------------------------------------------------- responses


def test_apply_response_stores_rossum_documents(
    ctx: ExportContext, v1_settings: dict[str, Any]
) -> None:
    step = v1_step(v1_settings["rest_oauth2_full"], "api1")
    record = build_response_record(
        201, [("Content-Type", "application/json"), ("ETag", "e1")], b'{"id": "ERP-1"}'
    )
    new, outcome = apply_response(step, ctx, record)
    assert outcome.status == "success" and outcome.error is None
    assert new.references["export_reply_headers"]["headers"]["etag"] == "e1"
    assert new.references["export_reply_payload"] == '{"id": "ERP-1"}'
    assert new.responses["api1"]["body"] == {"id": "ERP-1"}
    outcome.raise_for_status()


def test_non_2xx_fails_by_default_with_redacted_excerpt(ctx: ExportContext) -> None:
    step = RestStep(name="api1", request={"url": "https://erp/api"})  # type: ignore[arg-type]
    record = build_response_record(404, {}, b"no such vendor; key=tok-abcdef")
    _, outcome = apply_response(step, ctx, record, secrets=SECRETS)
    assert outcome.status == "error"
    with pytest.raises(DeliveryError) as err:
        outcome.raise_for_status()
    assert err.value.http_status == 404 and not err.value.retryable
    assert "expected 2xx" in str(err.value) and "no such vendor" in str(err.value)
    assert "tok-abcdef" not in str(err.value)
    _, retry = apply_response(step, ctx, build_response_record(503, {}, b""))
    assert retry.error is not None and retry.error.retryable


def test_status_resolver_warning(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["rest_status_resolver"])
    _, outcome = apply_response(step, ctx, build_response_record(202, {}, b"queued"))
    assert outcome.status == "warning" and outcome.message and "queued" in outcome.message
    outcome.raise_for_status()  # warnings do not raise


# ------------------------------------------------------------------------------- extract


def test_extract_from_rossum_documents(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    rest = v1_step(v1_settings["rest_oauth2_full"], "api1")
    record = build_response_record(201, {"Content-Type": "application/json"}, b'{"id": 99}')
    ctx, _ = apply_response(rest, ctx, record)
    extract = v1_step(v1_settings["extract_docs"])
    new, result = run_extract_step(extract, ctx)
    assert result.values == {"api1_status_code": 201, "coupa_invoice_id": 99}
    assert new.field["api1_status_code"] == "201"
    assert new.values["coupa_invoice_id"] == 99  # not in the schema: kept as overlay
    assert result.operations is None  # coupa_invoice_id has no datapoint to write to


def test_extract_condition_skips_source(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["extract_anchor"])
    _new, result = run_extract_step(step, ctx.with_values({"api_gate": ""}))
    assert result.skipped_sources == ["api_xml_export_reply_payload"] and not result.values
    with pytest.raises(ExtractionError, match="is not available"):
        run_extract_step(step, ctx.with_values({"api_gate": "1"}))


def test_extract_from_step_record_with_writeback_ops(ctx: ExportContext) -> None:
    cfg = load_pipeline(
        {
            "name": "p",
            "steps": [
                {"name": "api1", "type": "rest", "request": {"url": "https://erp"}},
                {
                    "name": "x",
                    "type": "extract",
                    "after": ["api1"],
                    "sources": [
                        {
                            "source_step": "api1",
                            "format": "xml",
                            "namespaces": {"r": "urn:r"},
                            "rules": [
                                {"xpath": "/r:Result/r:Id", "target_schema_id": "erp_document_id"}
                            ],
                        },
                        {
                            "source_step": "api1",
                            "format": "text",
                            "rules": [
                                {
                                    "regex": "status=(\\w+)",
                                    "target_schema_id": "api1_status_code",
                                    "default": "unknown",
                                }
                            ],
                        },
                    ],
                },
            ],
        }
    )
    record = build_response_record(
        200,
        {"Content-Type": "application/xml"},
        b'<r:Result xmlns:r="urn:r"><r:Id>E-7</r:Id></r:Result>',
    )
    ctx = ctx.with_response("api1", record)
    step = cfg.step("x")
    assert isinstance(step, ExtractStep)
    new, result = run_extract_step(step, ctx)
    assert result.values == {"erp_document_id": "E-7", "api1_status_code": "unknown"}
    assert result.operations is not None and len(result.operations) == 2
    assert {op["value"]["content"]["value"] for op in result.operations} == {"E-7", "unknown"}
    assert new.field["erp_document_id"] == "E-7"


def test_required_rule_names_step(ctx: ExportContext) -> None:
    step = ExtractStep(
        name="x",
        sources=[
            {  # type: ignore[list-item]
                "source_step": "api1",
                "rules": [{"jmespath": "body.id", "target_schema_id": "t", "required": True}],
            }
        ],
    )
    ctx = ctx.with_response("api1", build_response_record(200, {}, b"{}"))
    with pytest.raises(ExtractionError, match=r"^\[x\] extract\[0\] responses.api1 -> t"):
        run_extract_step(step, ctx)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_seed_condition(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["evaluator"], "5. Evaluator")
    outcome = run_evaluate_step(step, ctx)
    assert not outcome.passed
    assert outcome.message == "export failed: condition `r.field.api1_status_code != '201'` is true"
    with pytest.raises(EvaluationFailed, match=r"^\[5. Evaluator\] export failed"):
        outcome.raise_if_failed("5. Evaluator")
    assert run_evaluate_step(step, ctx.with_values({"api1_status_code": "201"})).passed


def test_evaluate_require_and_message_template(ctx: ExportContext) -> None:
    step = EvaluateStep(
        name="e",
        require="responses.api1.status_code == 201",
        level="warning",
        message="ERP said {{ responses.api1.status_code }} for {{ field.invoice_id }}",
    )
    ctx = ctx.with_response("api1", build_response_record(409, {}, b"dup"))
    outcome = run_evaluate_step(step, ctx)
    assert not outcome.passed and outcome.level == "warning"
    assert outcome.message == "ERP said 409 for INV-2024-0042"
    outcome.raise_if_failed()  # warnings do not raise


def test_step_enabled(ctx: ExportContext) -> None:
    step = CleanStep(name="c", when="field.currency == 'usd'")
    assert not step_enabled(step, ctx)
    assert step_enabled(CleanStep(name="c"), ctx)


def test_clean_step(ctx: ExportContext) -> None:
    ctx = rendered_ctx(ctx, "a", "A").with_reference("b", "B").with_response("r", {"x": 1})
    new, keys = run_clean_step(CleanStep(name="c", keys=["a"]), ctx)
    assert keys == ["a"] and list(new.references) == ["b"] and new.responses == {}
    _, all_keys = run_clean_step(CleanStep(name="c"), ctx)
    assert sorted(all_keys) == ["a", "b"]


# -------------------------------------------------------------------------- file storage


def test_plan_file_storage_v1_example(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["file_storage"])
    assert isinstance(step, FileStorageStep)
    ctx = rendered_ctx(ctx, "export_annotation_to_csv", "a,b", content_type="text/csv")
    ctx = ctx.with_values({"export_order_name": "ORD-1"})
    planned = plan_file_storage(step, ctx, now=NOW)
    assert [p.path for p in planned] == [
        "/export/invoice_data-315777.csv",
        "/export/invoice_file-315777.pdf",
        "/export/ORD-1.json",
    ]
    assert [p.content_type for p in planned] == ["text/csv", "application/pdf", "text/csv"]
    assert planned[1].read() == PDF_BYTES
    assert planned[2].read() == b"a,b"
    assert planned[0].read().decode().count("\n") == 4  # header + three line items
    assert {p.collision for p in planned} == {"replace"}


def test_plan_legacy_sftp_with_sequence(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_step(v1_settings["legacy_sftp"])
    ctx = ctx.with_values({"document_id": "INV42"})
    draw = counter()
    first = plan_file_storage(step, ctx, now=NOW, counter=draw)
    second = plan_file_storage(step, ctx, now=NOW, counter=draw)
    assert [p.path for p in first] == [
        "/upload/INV42-2024-03-05-00000.xml",
        "/upload/INV42-2024-03-05-00000.pdf",
    ]
    assert second[0].path == "/upload/INV42-2024-03-05-00001.xml"
    root = etree.fromstring(first[0].read())
    assert root.tag == "export"
    assert root.find(".//datapoint[@schema_id='invoice_id']").text == "INV-2024-0042"
    assert len(root.findall(".//tuple[@schema_id='line_item']")) == 3


def test_plan_s3_and_injected_annotation_content(
    ctx: ExportContext, v1_settings: dict[str, Any]
) -> None:
    step = v1_step(v1_settings["file_storage_s3"])
    ctx = ctx.with_values({"sftp_folder": "acme"})
    calls: list[str] = []

    def fetch(fmt: str) -> bytes:
        calls.append(fmt)
        return b"{}"

    planned = plan_file_storage(step, ctx, now=NOW, annotation_content=fetch)
    assert planned[0].path == "acme/invoices/315777.json"
    assert calls == []  # lazy
    assert planned[0].read() == b"{}" and calls == ["json"]


def test_plan_rejects_duplicate_paths(ctx: ExportContext) -> None:
    step = SftpStep.model_validate(
        {
            "name": "s",
            "export_rules": [
                {
                    "path_to_directory": "/x",
                    "objects": [
                        {
                            "type": "annotation_content",
                            "format": "json",
                            "filename_template": "a.json",
                        },
                        {
                            "type": "annotation_content",
                            "format": "xml",
                            "filename_template": "a.json",
                        },
                    ],
                }
            ],
        }
    )
    with pytest.raises(StepError, match="same path"):
        plan_file_storage(step, ctx)


def test_annotation_content_bytes_formats(ctx: ExportContext) -> None:
    data = json.loads(annotation_content_bytes(ctx, "json"))
    assert data["results"][0]["url"].endswith("/315777")
    assert annotation_content_bytes(ctx, "xlsx")[:2] == b"PK"
    with pytest.raises(StepError, match="unsupported"):
        annotation_content_bytes(ctx, "pdf")


# ------------------------------------------------------------------------ whole pipeline


def test_readme_pipeline_end_to_end_without_network(ctx: ExportContext) -> None:
    readme = Path(__file__).parents[2] / "rossflow" / "export" / "README.md"
    yaml_text = re.search(r"```yaml\n(.*?)```", readme.read_text(), re.S).group(1)  # type: ignore[union-attr]
    cfg = load_pipeline(yaml_text)
    draw = counter()
    uploads: list[str] = []
    for step in cfg.topological_order():
        if not step_enabled(step, ctx):
            continue
        if isinstance(step, CleanStep):
            ctx, _ = run_clean_step(step, ctx)
        elif isinstance(step, TemplateStep):
            ctx, files = run_template_step(step, ctx)
            assert b"M\xc3\xbcller &amp; S\xc3\xb6hne &lt;GmbH&gt;" in files[0].content
        elif isinstance(step, RestStep):
            assert rest_gate(step, ctx, secrets=SECRETS)
            auth = cfg.auths[step.auth] if isinstance(step.auth, str) else step.auth
            assert auth is not None
            assert prepare_auth_request(auth, secrets=SECRETS).content
            req = prepare_request(step, ctx, secrets=SECRETS)
            assert req.headers["Authorization"] == "Bearer tok-abcdef"
            assert req.content is not None and req.content.startswith(b'<Invoice number="INV')
            reply = build_response_record(
                201,
                {"Content-Type": "application/xml"},
                b"<Result><DocumentId>ERP-4711</DocumentId></Result>",
            )
            ctx, outcome = apply_response(step, ctx, reply, secrets=SECRETS)
            outcome.raise_for_status()
        elif isinstance(step, ExtractStep):
            ctx, result = run_extract_step(step, ctx)
            assert result.values == {"api1_status_code": 201, "erp_document_id": "ERP-4711"}
        elif isinstance(step, EvaluateStep):
            run_evaluate_step(step, ctx).raise_if_failed(step.name)
        elif isinstance(step, FileStorageStep):
            for planned in plan_file_storage(step, ctx, counter=draw, now=NOW):
                planned.read()
                uploads.append(planned.path)
    assert uploads == [
        "/outbound/2024/03/INV-2024-0042-00000.xml",
        "/outbound/2024/03/INV-2024-0042-00000.pdf",
        "/outbound/2024/03/315777.json",
    ]
