"""Reply records and extraction with JMESPath, XPath and regex."""

from __future__ import annotations

import pytest

from rossflow.export.errors import ExtractionError
from rossflow.export.extract import (
    build_response_record,
    collapse,
    extract_regex,
    extract_value,
    extract_xpath,
    headers_document,
    parse_document,
    snake_case,
)

JSON_HEADERS = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("ETag", '"abc123"'),
    ("X-Request-ID", "r-1"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
]
XML_BODY = (
    b'<?xml version="1.0"?>'
    b'<r:Result xmlns:r="urn:erp:result" status="created">'
    b"<r:DocumentId>ERP-4711</r:DocumentId><r:Messages><r:Msg>ok</r:Msg></r:Messages>"
    b"</r:Result>"
)


def json_record() -> dict:
    return build_response_record(
        201, JSON_HEADERS, b'{"id": 4711, "errors": []}', url="https://erp.example/api"
    )


def test_snake_case() -> None:
    assert snake_case("Content-Type") == "content_type"
    assert snake_case("X-Request-ID") == "x_request_id"
    assert snake_case("ETag") == "etag"


def test_response_record_shape() -> None:
    record = json_record()
    assert record["status_code"] == 201 and record["ok"]
    assert record["headers"]["content_type"] == "application/json; charset=utf-8"
    assert record["headers"]["set_cookie"] == "a=1, b=2"
    assert record["raw"][1] == ["ETag", '"abc123"']
    assert record["body"] == {"id": 4711, "errors": []}
    assert record["text"] == '{"id": 4711, "errors": []}'
    assert headers_document(record) == {
        "status_code": 201,
        "headers": record["headers"],
        "raw": record["raw"],
    }


def test_response_record_text_and_sniffing() -> None:
    text = build_response_record(500, {"Content-Type": "text/plain"}, "boom")
    assert text["body"] == "boom" and not text["ok"]
    sniffed = build_response_record(200, [], b"[1, 2]")
    assert sniffed["body"] == [1, 2]
    empty = build_response_record(204, [], None)
    assert empty["body"] is None and empty["text"] == ""
    broken = build_response_record(200, {"content-type": "application/json"}, b"{not json")
    assert broken["body"] == "{not json"
    latin = build_response_record(
        200, {"Content-Type": "text/plain; charset=latin-1"}, "Müller".encode("latin-1")
    )
    assert latin["text"] == "Müller"


def test_jmespath_against_record_like_rossum_headers_document() -> None:
    record = json_record()
    doc = headers_document(record)
    assert extract_value(document=doc, jmespath_expr="status_code").value == 201
    assert extract_value(document=doc, jmespath_expr="headers.etag").value == '"abc123"'
    assert extract_value(document=record, jmespath_expr="body.id").value == 4711
    # the stored payload document (body text) as in Rossum's second extractor example
    assert extract_value(document=record["text"], jmespath_expr="id").value == 4711


def test_missing_value_is_none_with_reason() -> None:
    outcome = extract_value(
        document=json_record(), jmespath_expr="body.nope", target_schema_id="erp_document_id"
    )
    assert outcome.value is None and not outcome.found
    assert "no match" in (outcome.reason or "")
    assert "body.nope" in (outcome.reason or "")


def test_required_missing_raises_naming_rule_and_path() -> None:
    with pytest.raises(ExtractionError, match=r"my-rule \(jmespath 'body.nope'\): no match"):
        extract_value(
            document=json_record(), jmespath_expr="body.nope", required=True, rule="my-rule"
        )


def test_invalid_jmespath_names_rule() -> None:
    with pytest.raises(ExtractionError, match=r"rule -> t .*invalid JMESPath 'a\['"):
        extract_value(document={}, jmespath_expr="a[", target_schema_id="t")


def test_invalid_json_source() -> None:
    with pytest.raises(ExtractionError, match="not valid JSON"):
        extract_value(document=b"<html>", jmespath_expr="a")


def test_xpath_with_namespaces() -> None:
    ns = {"r": "urn:erp:result"}
    assert extract_xpath("/r:Result/r:DocumentId", XML_BODY, namespaces=ns) == "ERP-4711"
    assert extract_xpath("/r:Result/@status", XML_BODY, namespaces=ns) == "created"
    assert extract_xpath("count(//r:Msg)", XML_BODY, namespaces=ns) == 1
    assert extract_xpath("//r:Missing", XML_BODY, namespaces=ns) is None
    # a reply record works as the source as well (its text is parsed)
    record = build_response_record(200, {"Content-Type": "application/xml"}, XML_BODY)
    outcome = extract_value(
        document=record,
        fmt="xml",
        xpath="//r:DocumentId",
        namespaces=ns,
        target_schema_id="erp_document_id",
    )
    assert outcome.value == "ERP-4711"


def test_xpath_errors() -> None:
    with pytest.raises(ExtractionError, match="declare the prefix"):
        extract_xpath("/r:Result", XML_BODY)
    with pytest.raises(ExtractionError, match="not well-formed XML"):
        extract_xpath("/a", b"<a><b></a>")
    with pytest.raises(ExtractionError, match="invalid XPath"):
        extract_xpath("/a[", b"<a/>")


def test_xml_parser_does_not_resolve_entities() -> None:
    evil = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    assert "root:" not in str(extract_xpath("/a", evil) or "")


def test_regex_group_or_whole_match() -> None:
    assert extract_regex(r"id=(\d+)", "created id=4711 ok") == "4711"
    assert extract_regex(r"\d{4}", "created id=4711 ok") == "4711"
    assert extract_regex(r"id=(\d+)", "nothing") is None
    outcome = extract_value(document=json_record(), fmt="text", regex=r'"id": (\d+)')
    assert outcome.value == "4711"
    with pytest.raises(ExtractionError, match="invalid regex"):
        extract_regex("(", "x")


def test_exactly_one_method() -> None:
    with pytest.raises(ExtractionError, match="exactly one"):
        extract_value(document={}, jmespath_expr="a", regex="b")
    with pytest.raises(ExtractionError, match="JMESPath needs a JSON source"):
        extract_value(document=XML_BODY, fmt="xml", jmespath_expr="a")


def test_parse_document_text_of_dict() -> None:
    assert parse_document({"a": 1}, "text") == '{"a": 1}'


def test_collapse_last_rule_wins() -> None:
    a = extract_value(document={"a": 1, "b": 2}, jmespath_expr="a", target_schema_id="t")
    b = extract_value(document={"a": 1, "b": 2}, jmespath_expr="b", target_schema_id="t")
    miss = extract_value(document={}, jmespath_expr="z", target_schema_id="t")
    assert collapse([a, b, miss]) == {"t": 2}
