"""Filename/directory templates: built-ins, datapoints, sequences, sanitising."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from rossflow.export.config import SequenceSpec, TemplateVariable
from rossflow.export.context import ExportContext
from rossflow.export.errors import FilenameError
from rossflow.export.filenames import (
    FilenameRenderer,
    document_filename,
    join_remote_path,
    sanitize_value,
)

NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)


def counter() -> Callable[[str], int]:
    """In-memory sequence store standing in for the engine's persistent counter."""
    counts: defaultdict[str, int] = defaultdict(int)

    def draw(name: str) -> int:
        value = counts[name]
        counts[name] += 1
        return value

    return draw


def renderer(ctx: ExportContext, **kwargs: object) -> FilenameRenderer:
    kwargs.setdefault("now", NOW)
    return FilenameRenderer(ctx, **kwargs)  # type: ignore[arg-type]


def test_builtins(ctx: ExportContext) -> None:
    r = renderer(ctx)
    assert r.render("invoice_data-{annotation.id}.csv") == "invoice_data-315777.csv"
    assert r.render("{document.id}-{document_id}-{annotation_id}") == "315877-315877-315777"
    assert (
        r.render(
            "{original_file_name}|{original_file_stem}|{original_file_ext}|{original_file_suffix}"
        )
        == "INV-2024-0042.pdf|INV-2024-0042|pdf|.pdf"
    )
    assert r.render("{year}-{month}-{day}T{hour}{minute}{second}") == "2024-03-05T070809"
    assert r.render("{date}_{timestamp}") == "2024-03-05_20240305T070809"
    assert r.render("{{literal}}") == "{literal}"


def test_datapoint_variables(ctx: ExportContext) -> None:
    r = renderer(ctx)
    assert r.render("{invoice_id}_{order_id}.xml") == "INV-2024-0042_PO-77812.xml"
    # values written back by earlier steps are visible too
    r2 = renderer(ctx.with_values({"export_order_name": "ORDER 7"}))
    assert r2.render("{export_order_name}.json") == "ORDER 7.json"


def test_legacy_template_variables_and_sequence(ctx: ExportContext) -> None:
    variables = [TemplateVariable(name="doc_id", type="datapoint", schema_id="invoice_id")]
    draw = counter()
    names = []
    for _ in range(3):
        r = renderer(ctx, template_variables=variables, counter=draw)
        xml = r.render("{doc_id}-{year}-{month}-{day}-{seq_1}.xml")
        doc = r.render("{doc_id}-{year}-{month}-{day}-{seq_1}")
        assert xml == doc + ".xml"  # one draw per annotation: data file and document match
        names.append(xml)
    assert names == [
        "INV-2024-0042-2024-03-05-00000.xml",
        "INV-2024-0042-2024-03-05-00001.xml",
        "INV-2024-0042-2024-03-05-00002.xml",
    ]


def test_declared_sequences(ctx: ExportContext) -> None:
    r = renderer(
        ctx, sequences={"batch": SequenceSpec(digits=3, start=100, increment=10)}, counter=counter()
    )
    assert r.render("{batch}") == "100"
    draw = counter()
    draw("batch")
    r2 = renderer(
        ctx, sequences={"batch": SequenceSpec(digits=3, start=100, increment=10)}, counter=draw
    )
    assert r2.render("{batch}") == "110"
    legacy = [TemplateVariable(name="seq_2", type="sequence", digits=2, start=7)]
    assert renderer(ctx, template_variables=legacy, counter=counter()).render("{seq_2}") == "07"


def test_sequence_without_counter(ctx: ExportContext) -> None:
    with pytest.raises(FilenameError, match="needs a sequence counter"):
        renderer(ctx).render("{seq_1}")


def test_constant_and_custom_variables(ctx: ExportContext) -> None:
    r = renderer(
        ctx,
        template_variables=[TemplateVariable(name="env", type="constant", value="prod")],
        variables={"export_order_name": "{order_id}-{annotation.id}", "loop": "{loop}"},
        extra={"tenant": "acme"},
    )
    assert r.render("{tenant}/{env}/{export_order_name}.json") == "acme/prod/PO-77812-315777.json"
    with pytest.raises(FilenameError, match="nests too deeply"):
        r.render("{loop}")


def test_unknown_variable_and_bad_braces(ctx: ExportContext) -> None:
    r = renderer(ctx)
    with pytest.raises(FilenameError, match=r"unknown variable \{nope\}"):
        r.render("{nope}.xml")
    with pytest.raises(FilenameError, match="unbalanced"):
        r.render("a{b")
    with pytest.raises(FilenameError, match="empty placeholder"):
        r.render("a{}")


def test_values_cannot_inject_paths(ctx: ExportContext) -> None:
    evil = ctx.with_values(
        {"invoice_id": "../../etc/passwd", "order_id": "..", "sftp_folder": "/abs\\olute\nx"}
    )
    r = renderer(evil)
    path = r.path("/export/{sftp_folder}", "{invoice_id}.xml")
    assert path == "/export/_abs_olutex/.._.._etc_passwd.xml"
    with pytest.raises(FilenameError, match="traversal"):
        r.path("/export/{order_id}", "x.xml")


def test_literal_traversal_and_root(ctx: ExportContext) -> None:
    r = renderer(ctx)
    with pytest.raises(FilenameError, match="traversal"):
        r.path("/export/../etc", "{annotation.id}.xml")
    assert r.path("in", "a.xml", root="/home/rossum") == "/home/rossum/in/a.xml"
    with pytest.raises(FilenameError, match="outside the target root"):
        r.path("/etc", "a.xml", root="/home/rossum")
    assert r.path("/home/rossum/x", "a.xml", root="/home/rossum") == "/home/rossum/x/a.xml"


def test_s3_keys_have_no_leading_slash(ctx: ExportContext) -> None:
    r = renderer(ctx)
    assert (
        r.path("/invoices/{year}", "{annotation.id}.json", flavor="s3")
        == "invoices/2024/315777.json"
    )
    assert join_remote_path("", "a.json", flavor="s3", root="/tenant/") == "tenant/a.json"
    assert join_remote_path("//a//./b/", "c", flavor="sftp") == "/a/b/c"


def test_join_remote_path_rejects_bad_parts() -> None:
    with pytest.raises(FilenameError, match="control"):
        join_remote_path("/a", "b\x00c")
    with pytest.raises(FilenameError, match="backslashes"):
        join_remote_path("C:\\x", "b")
    with pytest.raises(FilenameError, match="empty filename"):
        join_remote_path("/a", "")
    with pytest.raises(FilenameError, match="longer than 255"):
        join_remote_path("/a", "x" * 300)


def test_document_filename_appends_original_extension(ctx: ExportContext) -> None:
    assert document_filename("invoice_file-1", "scan.PDF") == "invoice_file-1.PDF"
    assert document_filename("invoice_file-1.pdf", "scan.pdf") == "invoice_file-1.pdf"
    assert document_filename("x", None) == "x"
    assert (
        renderer(ctx).path(
            "/export", "invoice_file-{annotation.id}", document_suffix_from="INV.pdf"
        )
        == "/export/invoice_file-315777.pdf"
    )


def test_sanitize_value() -> None:
    assert sanitize_value("  a/b\\c\td  ") == "a_b_cd"
    assert sanitize_value(None) == ""
    assert sanitize_value(12.0) == "12"
