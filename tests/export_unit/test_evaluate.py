"""The safe condition language: Rossum ergonomics without eval."""

from __future__ import annotations

import pytest

from rossflow.export.context import ExportContext
from rossflow.export.errors import ConditionError, ConditionEvalError
from rossflow.export.evaluate import compile_condition
from rossflow.export.extract import build_response_record


@pytest.fixture
def done(ctx: ExportContext) -> ExportContext:
    """Context after a REST call returned 201 and the extractor stored status and id."""
    record = build_response_record(
        201, {"Content-Type": "application/json"}, b'{"id": "ERP-1", "errors": []}'
    )
    return ctx.with_response("api1", record).with_values(
        {"api1_status_code": 201, "erp_document_id": "ERP-1"}
    )


def test_seed_example_verbatim(ctx: ExportContext, done: ExportContext) -> None:
    cond = compile_condition("r.field.api1_status_code != '201'")
    assert cond.evaluate(ctx) is True  # nothing stored yet -> "" != '201' -> export fails
    assert cond.evaluate(done) is False
    assert cond.referenced_fields == {"api1_status_code"}


def test_missing_field_is_empty_string(ctx: ExportContext) -> None:
    assert compile_condition("r.field.does_not_exist == ''").evaluate(ctx)
    assert compile_condition("not field.does_not_exist").evaluate(ctx)


def test_responses_and_functions(done: ExportContext) -> None:
    assert compile_condition("responses.api1.status_code == 201").evaluate(done)
    assert compile_condition("responses['api1'].body.id == 'ERP-1'").evaluate(done)
    assert compile_condition(
        "r.responses.api1.ok and len(responses.api1.body.errors) == 0"
    ).evaluate(done)
    assert compile_condition("jmespath('body.errors | length(@)', responses.api1) == 0").evaluate(
        done
    )
    assert compile_condition("responses.api1.status_code in [200, 201]").evaluate(done)
    assert compile_condition("responses.nope.status_code is None").evaluate(done)
    cond = compile_condition("responses.api1.status_code not in (200, 204)")
    assert cond.evaluate(done) and cond.referenced_steps == {"api1"}


def test_field_helpers(ctx: ExportContext) -> None:
    assert compile_condition("float(field.amount_total) > 2600").evaluate(ctx)
    assert compile_condition("int(field.item_quantity[0]) == 10").evaluate(ctx)
    assert compile_condition("len(field.line_items) == 3").evaluate(ctx)
    assert compile_condition("field.currency.upper() == 'EUR'").evaluate(ctx)
    assert compile_condition("upper(r.field.currency) == 'EUR'").evaluate(ctx)
    assert compile_condition("startswith(field.invoice_id, 'INV-')").evaluate(ctx)
    assert compile_condition("matches('^INV-\\\\d{4}-', field.invoice_id)").evaluate(ctx)
    assert compile_condition("default(field.erp_document_id, 'none') == 'none'").evaluate(ctx)
    assert compile_condition("annotation.id == 315777 and document.id == 315877").evaluate(ctx)
    assert compile_condition("payload.document.original_file_name.endswith('.pdf')").evaluate(ctx)
    assert compile_condition("abs(float(field.amount_total) - 2601.5) < 0.01").evaluate(ctx)
    assert compile_condition("'eur' if field.currency else 'none'").value(ctx) == "eur"
    assert compile_condition("values.order_id == 'PO-77812'").evaluate(ctx)


def test_references_read_as_text(ctx: ExportContext) -> None:
    from rossflow.export.templating import RenderedFile

    ctx = ctx.with_reference("xml", RenderedFile("xml", b"<a>ok</a>", "application/xml"))
    ctx = ctx.with_reference("hdr", {"status_code": 201, "headers": {"etag": "e"}})
    assert compile_condition("contains(references.xml, '<a>ok')").evaluate(ctx)
    assert compile_condition("references.hdr.status_code == 201").evaluate(ctx)


def test_multiline_condition(ctx: ExportContext) -> None:
    cond = compile_condition("field.currency == 'eur'\n  and field.order_id != ''")
    assert cond.evaluate(ctx)


@pytest.mark.parametrize(
    "text,what",
    [
        ("__import__('os')", "__import__"),
        ("__import__('os').system('id')", "__import__"),
        ("r.__class__", "__class__"),
        ("field.__dict__", "__dict__"),
        ("r.field._data", "_data"),
        ("(lambda: 1)()", "lambda"),
        ("[x for x in field.line_items]", "comprehension"),
        ("{x for x in 'ab'}", "comprehension"),
        ("(x := 1)", "assignment"),
        ("f'{field}'", "f-string"),
        ("open('/etc/passwd')", "open"),
        ("eval('1')", "eval"),
        ("getattr(r, 'field')", "getattr"),
        ("field.invoice_id.format(1)", "string methods"),
        ("str(1, encoding='x')", "keyword"),
        ("2 ** 1000000", "**"),
        ("os.system('id')", "may be called"),
        ("os.path", "unknown name 'os'"),
        ("responses['__class__']", "__class__"),
        ("{'a': 1}", "dict literal"),
        ("field.line_items[0:2]", "slice"),
        ("matches(field.x, 'y')", "literal pattern"),
        ("jmespath('a[', field)", "invalid JMESPath"),
    ],
)
def test_rejected_at_compile_time(text: str, what: str) -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition(text)
    assert what in str(err.value)


@pytest.mark.parametrize("text", ["", "   ", "a ==", "x" * 5000])
def test_invalid_text(text: str) -> None:
    with pytest.raises(ConditionError):
        compile_condition(text)


def test_deep_nesting_is_rejected() -> None:
    with pytest.raises(ConditionError):
        compile_condition("not " * 400 + "True")


def test_runtime_errors_are_clear(ctx: ExportContext) -> None:
    with pytest.raises(ConditionEvalError, match="cannot compare str with int"):
        compile_condition("field.amount_total > 100").evaluate(ctx)
    with pytest.raises(ConditionEvalError, match="int\\(\\) cannot convert"):
        compile_condition("int(field.invoice_id) > 1").evaluate(ctx)
    with pytest.raises(ConditionEvalError, match="repetition"):
        compile_condition("field.invoice_id * 1000000").evaluate(ctx)
    with pytest.raises(ConditionEvalError, match="cannot read attribute"):
        compile_condition("field.invoice_id.real").evaluate(ctx)
    with pytest.raises(ConditionEvalError, match="ZeroDivisionError"):
        compile_condition("1 / 0").evaluate(ctx)


def test_plain_mapping_context() -> None:
    cond = compile_condition("responses.a.status_code >= 500 or field.x == 'y'")
    assert cond.evaluate({"responses": {"a": {"status_code": 503}}, "field": {}})
    with pytest.raises(ConditionEvalError, match="not available"):
        cond.evaluate({})


def test_condition_does_not_call_eval(monkeypatch: pytest.MonkeyPatch, ctx: ExportContext) -> None:
    import ast
    import builtins

    real_compile = builtins.compile

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be used")

    def ast_only(
        source: object, filename: object, mode: str, flags: int = 0, *a: object, **kw: object
    ) -> object:
        # ast.parse uses compile(..., PyCF_ONLY_AST): parsing is fine, code objects are not
        if not flags & ast.PyCF_ONLY_AST:
            raise AssertionError("compile() to code must not be used")
        return real_compile(source, filename, mode, flags, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", ast_only)
    cond = compile_condition("r.field.api1_status_code != '201' and len(field.line_items) == 3")
    assert cond.evaluate(ctx)


def test_a_condition_builds_only_the_names_it_reads(
    done: ExportContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The field lookups walk the whole content: a condition on ``responses`` alone must not
    pay for them (it runs for every document of every batch)."""
    import rossflow.export.evaluate as evaluate

    on_reply = compile_condition("responses.api1.status_code != 201 and payload is not None")
    on_field = compile_condition("r.field.api1_status_code != '201'")
    assert on_reply.root_names == {"responses", "payload"}
    assert on_field.root_names == {"r"}

    def walked(content: object) -> object:
        raise AssertionError("the content was walked for field lookups")

    monkeypatch.setattr(evaluate, "iter_datapoints", walked)
    assert on_reply.evaluate(done) is False
    with pytest.raises(AssertionError, match="walked"):
        on_field.evaluate(done)
