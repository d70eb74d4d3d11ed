"""Jinja rendering: Rossum compatibility, sandbox, XML escaping, errors with line numbers."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pandas as pd
import pytest

from rossflow.export.config import TemplateOutput, TemplateStep
from rossflow.export.context import ExportContext
from rossflow.export.errors import TemplateRenderError
from rossflow.export.loading import load_pipeline
from rossflow.export.templating import render, render_step, render_text, wants_autoescape
from tests.export_unit.conftest import PDF_BYTES


def out(**kwargs: Any) -> TemplateOutput:
    kwargs.setdefault("key", "k")
    return TemplateOutput(**kwargs)


def v1_template(settings: dict[str, Any]) -> TemplateStep:
    step = load_pipeline([{"name": "t", "settings": settings}]).steps[0]
    assert isinstance(step, TemplateStep)
    return step


def test_rossum_csv_line_items_example(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    step = v1_template(v1_settings["templating_csv_items"])
    text = render(step, ctx).text
    lines = text.splitlines()
    assert lines[0] == "Document ID,Document Type,Item Description,Item Quantity"
    # document_id/document_type are not in our schema: lenient v1 mode renders ""
    assert lines[1] == ",,Consulting services March 2024,10"
    assert len(lines) == 4


def test_rossum_xml_example_escapes_and_filters(
    ctx: ExportContext, v1_settings: dict[str, Any]
) -> None:
    rendered = render(v1_template(v1_settings["templating_xml"]), ctx)
    assert "<CURRENCY>EUR</CURRENCY>" in rendered.text
    assert "<AMOUNT_TOTAL_TAX>451.50</AMOUNT_TOTAL_TAX>" in rendered.text
    assert rendered.content_type == "application/xml"  # template starts with "<"


def test_rossum_tree_example(ctx: ExportContext, v1_settings: dict[str, Any]) -> None:
    text = render(v1_template(v1_settings["templating_tree"]), ctx).text
    assert "*********" in text and "    |" in text


def test_b64encode_original_file_is_lazy(
    ctx: ExportContext, v1_settings: dict[str, Any], pdf_loader: Any
) -> None:
    csv_step = v1_template(v1_settings["templating_csv"])
    render(csv_step, ctx)
    assert pdf_loader.calls == []  # no template used the file: no download
    rendered = render(v1_template(v1_settings["templating_original_b64"]), ctx)
    assert base64.b64decode(rendered.content) == PDF_BYTES
    assert len(pdf_loader.calls) == 1


def test_b64encode_text() -> None:
    assert render_text("{{ 'Žluť' | b64encode }}", {}) == base64.b64encode("Žluť".encode()).decode()


def test_xml_autoescape(ctx: ExportContext) -> None:
    output = out(
        key="inv",
        format="xml",
        template='<a n="{{ field.sender_name }}">{{ field.sender_name }}</a>',
    )
    text = render(output, ctx).text
    assert text == ('<a n="Müller &amp; Söhne &lt;GmbH&gt;">Müller &amp; Söhne &lt;GmbH&gt;</a>')


def test_xml_escape_is_idempotent_with_e_filter(ctx: ExportContext) -> None:
    output = out(
        key="inv.xml", template="<a>{{ field.sender_name | e }}{{ 'x<y' | xml_escape }}</a>"
    )
    assert wants_autoescape(output)
    assert render(output, ctx).text == "<a>Müller &amp; Söhne &lt;GmbH&gt;x&lt;y</a>"


def test_autoescape_decision() -> None:
    assert wants_autoescape(out(template="x", content_type="application/xml"))
    assert wants_autoescape(out(key="x.XML", template="x"))
    assert not wants_autoescape(out(template="{}", format="json"))
    assert not wants_autoescape(out(template="<a/>", autoescape=False))
    assert wants_autoescape(out(template="  <?xml version='1.0'?><a/>"))


def test_json_output_with_tojson(ctx: ExportContext) -> None:
    output = out(
        key="inv",
        format="json",
        template=(
            '{"vendor": {{ field.sender_name | tojson }}, "lines": {{ field.line_items | length }}}'
        ),
    )
    rendered = render(output, ctx)
    assert json.loads(rendered.content) == {"vendor": "Müller & Söhne <GmbH>", "lines": 3}
    assert rendered.content_type == "application/json"


def test_invalid_json_output_is_caught(ctx: ExportContext) -> None:
    output = out(key="bad.json", format="json", template='{\n"a": {{ field.invoice_id }}\n}')
    with pytest.raises(TemplateRenderError, match=r"template 'bad.json' line 2: .*not valid JSON"):
        render(output, ctx)


def test_malformed_xml_output_is_caught(ctx: ExportContext) -> None:
    output = out(key="x", format="xml", template="<a>{{ field.invoice_id }}</b>")
    with pytest.raises(TemplateRenderError, match="not well-formed XML"):
        render(output, ctx)


@pytest.mark.parametrize(
    "expr",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ field.__class__.__init__.__globals__ }}",
        "{{ payload.items.__self__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
@pytest.mark.parametrize("undefined", ["strict", "lenient"])
def test_sandbox_blocks_attribute_escapes(ctx: ExportContext, expr: str, undefined: str) -> None:
    output = out(key="evil", template=expr, undefined=undefined)
    with pytest.raises(TemplateRenderError, match="template 'evil'"):
        render(output, ctx)


@pytest.mark.parametrize("expr", ["{{ 'x' * 100000000 }}", "{{ 10 ** 100000 }}"])
def test_sandbox_bounds_resource_use(ctx: ExportContext, expr: str) -> None:
    with pytest.raises(TemplateRenderError, match="blocked by the sandbox"):
        render(out(key="dos", template=expr), ctx)
    assert render(out(template="{{ '-' * 3 }}{{ 2 ** 3 }}"), ctx).text == "---8"


def test_sandbox_blocks_unsafe_method_calls(ctx: ExportContext) -> None:
    output = out(key="evil", template="{{ payload.clear() }}")
    with pytest.raises(TemplateRenderError, match="template 'evil' line 1"):
        render(output, ctx)
    assert ctx.payload  # not mutated


def test_syntax_error_names_key_and_line() -> None:
    with pytest.raises(TemplateRenderError) as err:
        render_text("line1\nline2 {% if %}\n", {}, key="my_tpl")
    assert err.value.template_key == "my_tpl"
    assert err.value.lineno == 2
    assert "template 'my_tpl' line 2" in str(err.value)


def test_runtime_error_names_key_and_line(ctx: ExportContext) -> None:
    output = out(key="calc", template_multiline=["a", "b", "{{ 1 / 0 }}"])
    with pytest.raises(TemplateRenderError, match=r"template 'calc' line 3: ZeroDivisionError"):
        render(output, ctx)


def test_undefined_attribute_on_none_fails(ctx: ExportContext) -> None:
    output = out(key="t", template_multiline=["{% set x = none %}", "{{ x.year }}"])
    with pytest.raises(TemplateRenderError, match=r"template 't' line 2: .*year"):
        render(output, ctx)


def test_strict_vs_lenient_undefined(ctx: ExportContext) -> None:
    with pytest.raises(TemplateRenderError, match=r"line 1: .*typo_field"):
        render(out(template="{{ field.typo_field }}"), ctx)
    assert render(out(template="[{{ field.typo_field }}]", undefined="lenient"), ctx).text == "[]"
    # default() keeps working in strict mode
    assert render(out(template="{{ field.typo_field | default('n/a') }}"), ctx).text == "n/a"


def test_none_renders_empty(ctx: ExportContext) -> None:
    assert render(out(template="[{{ payload.annotation.exported_at }}]"), ctx).text == "[]"


def test_payload_access_like_rossum_docs(ctx: ExportContext) -> None:
    text = render(
        out(
            template=(
                "{{payload['document']['original_file_name']}} "
                "https://example.rossum.app/document/{{payload['annotation']['id']}}"
            )
        ),
        ctx,
    ).text
    assert text == "INV-2024-0042.pdf https://example.rossum.app/document/315777"


def test_content_encoding(ctx: ExportContext) -> None:
    rendered = render(out(template="{{ field.sender_name }}", content_encoding="cp1250"), ctx)
    assert rendered.content == "Müller & Söhne <GmbH>".encode("cp1250")
    with pytest.raises(TemplateRenderError, match="cannot be encoded as ascii"):
        render(out(template="ok\n{{ field.sender_name }}", content_encoding="ascii"), ctx)


def test_render_step_multiple_outputs(ctx: ExportContext) -> None:
    step = TemplateStep(
        name="t",
        outputs=[
            out(key="a", template="A"),  # type: ignore[list-item]
            out(key="b", template="{{ field.currency }}"),
        ],
    )
    files = render_step(step, ctx)
    assert [(f.key, f.text) for f in files] == [("a", "A"), ("b", "eur")]
    with pytest.raises(ValueError, match="single output"):
        render(step, ctx)


def test_tabular_csv_output(ctx: ExportContext) -> None:
    rendered = render(out(key="rows", tabular="csv", include_meta=True), ctx)
    frame = pd.read_csv(io.BytesIO(rendered.content), dtype=str)
    assert len(frame) == 3
    assert list(frame.columns[:3]) == ["annotation_id", "document_id", "file_name"]
    assert (frame["invoice_id"] == "INV-2024-0042").all()
    assert list(frame["item_quantity"]) == ["10", "1", "2"]
    assert rendered.content_type == "text/csv"


def test_tabular_xlsx_output(ctx: ExportContext) -> None:
    rendered = render(
        out(
            key="rows",
            tabular="xlsx",
            columns=["invoice_id", "item_description", "item_amount_total"],
        ),
        ctx,
    )
    frame = pd.read_excel(io.BytesIO(rendered.content))
    assert list(frame.columns) == ["invoice_id", "item_description", "item_amount_total"]
    assert frame["item_amount_total"].tolist() == [1815, 603.79, 182.71]
    assert rendered.format == "xlsx"
