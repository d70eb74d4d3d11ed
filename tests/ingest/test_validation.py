"""Validation: magic bytes agree with the extension, sizes, unsafe names."""

from __future__ import annotations

import pytest

from rossflow.ingest import FileRejected, Limits
from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.validation import (
    parse_types,
    safe_rel,
    sniff,
    unsafe_name_reason,
    validate,
)
from tests.ingest.helpers import (
    DOCX_HEAD,
    JPEG_HEAD,
    OLE2_HEAD,
    PNG_HEAD,
    TIFF_HEAD,
    XLSX_HEAD,
    pdf,
)


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("a.pdf", pdf(1), "pdf"),
        ("a.PDF", b"\xef\xbb\xbfjunk%PDF-1.7", "pdf"),
        ("a.png", PNG_HEAD, "png"),
        ("a.jpg", JPEG_HEAD, "jpeg"),
        ("a.jpeg", JPEG_HEAD, "jpeg"),
        ("a.tif", TIFF_HEAD, "tiff"),
        ("a.tiff", b"MM\x00*\x00\x00\x00\x08", "tiff"),
        ("a.doc", OLE2_HEAD, "doc"),
        ("a.xls", OLE2_HEAD, "xls"),
        ("a.docx", DOCX_HEAD, "docx"),
        ("a.xlsx", XLSX_HEAD, "xlsx"),
    ],
)
def test_accepted_types(name: str, head: bytes, kind: str) -> None:
    assert validate(name, len(head), head, Limits()) == kind


@pytest.mark.parametrize(
    ("name", "head", "reason"),
    [
        ("a.pdf", PNG_HEAD, ingest_errors.TYPE_MISMATCH),  # extension lies
        ("a.png", pdf(1), ingest_errors.TYPE_MISMATCH),
        ("a.docx", XLSX_HEAD, ingest_errors.TYPE_MISMATCH),
        ("a.pdf", b"MZ\x90\x00 this is an exe", ingest_errors.UNSUPPORTED_TYPE),
        ("a.txt", b"hello", ingest_errors.UNSUPPORTED_TYPE),
        ("a.zip", b"PK\x03\x04", ingest_errors.UNSUPPORTED_TYPE),
        ("noextension", pdf(1), ingest_errors.UNSUPPORTED_TYPE),
        ("../a.pdf", pdf(1), ingest_errors.UNSAFE_NAME),
        ("x/../../a.pdf", pdf(1), ingest_errors.UNSAFE_NAME),
        ("..\\..\\a.pdf", pdf(1), ingest_errors.UNSAFE_NAME),
        ("a\x00b.pdf", pdf(1), ingest_errors.UNSAFE_NAME),
        ("a\nb.pdf", pdf(1), ingest_errors.UNSAFE_NAME),
    ],
)
def test_rejections(name: str, head: bytes, reason: str) -> None:
    with pytest.raises(FileRejected) as info:
        validate(name, len(head), head, Limits())
    assert info.value.reason == reason
    assert info.value.step == "validate"


def test_sizes() -> None:
    with pytest.raises(FileRejected) as empty:
        validate("a.pdf", 0, b"", Limits())
    assert empty.value.reason == ingest_errors.EMPTY
    with pytest.raises(FileRejected) as big:
        validate("a.pdf", 1001, pdf(1), Limits(max_bytes=1000))
    assert big.value.reason == ingest_errors.TOO_LARGE
    assert validate("a.pdf", 1000, pdf(1), Limits(max_bytes=1000)) == "pdf"


def test_accepted_types_can_be_narrowed() -> None:
    only_pdf = Limits(accepted_types=parse_types(["PDF"]))
    with pytest.raises(FileRejected):
        validate("a.png", 16, PNG_HEAD, only_pdf)
    assert parse_types(["jpg", ".tif"]) == ("jpeg", "tiff")
    with pytest.raises(ValueError):
        parse_types(["exe"])


def test_unicode_and_spaces_are_fine() -> None:
    for name in ("faktura č. 1.pdf", "请求 发票.pdf", "a b/c  d.pdf", "..hidden-ish.pdf", "🎁.pdf"):
        assert unsafe_name_reason(name) is None
        assert validate(name, 10, pdf(1), Limits()) == "pdf"


def test_safe_rel_never_escapes() -> None:
    assert safe_rel("../../etc/passwd.pdf") == "__/__/etc/passwd.pdf"
    assert safe_rel("..\\..\\a.pdf") == ".._.._a.pdf"
    assert safe_rel("/abs//x/./y.pdf") == "abs/x/y.pdf"
    assert safe_rel("a\x00b.pdf") == "a_b.pdf"
    assert safe_rel("") == "_"


def test_sniff_is_conservative() -> None:
    assert sniff(b"") == set()
    assert sniff(b"PK\x03\x04" + b"\x00" * 20) == {"docx", "xlsx"}
