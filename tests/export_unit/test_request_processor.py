"""Request Processor (v2): loading, filters, placeholders and request encoding (no servers)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from rossflow.export.errors import ConfigError
from rossflow.export.loading import load_pipeline
from rossflow.export.rp.filters import evaluate_filter
from rossflow.export.rp.handlers import extract
from rossflow.export.rp.http import encode_request, oauth1_header, response_object
from rossflow.export.rp.templates import FieldTree, Scope, Unresolved, fill

CONTENT: list[dict[str, Any]] = [
    {
        "category": "section",
        "schema_id": "basic",
        "children": [
            {
                "category": "datapoint",
                "schema_id": "invoice_id",
                "id": 1,
                "content": {"value": "INV-7"},
            },
            {
                "category": "datapoint",
                "schema_id": "total",
                "id": 2,
                "content": {"value": "1234.50"},
            },
            {"category": "datapoint", "schema_id": "empty", "id": 3, "content": {"value": ""}},
            {
                "category": "multivalue",
                "schema_id": "line_items",
                "children": [
                    {
                        "category": "tuple",
                        "schema_id": "line_item",
                        "children": [
                            {
                                "category": "datapoint",
                                "schema_id": "sku",
                                "id": 10,
                                "content": {"value": "A"},
                            },
                        ],
                    },
                    {
                        "category": "tuple",
                        "schema_id": "line_item",
                        "children": [
                            {
                                "category": "datapoint",
                                "schema_id": "sku",
                                "id": 11,
                                "content": {"value": "B"},
                            },
                        ],
                    },
                ],
            },
            {
                "category": "multivalue",
                "schema_id": "tags",
                "children": [
                    {
                        "category": "datapoint",
                        "schema_id": "tag",
                        "id": 20,
                        "content": {"value": "x"},
                    },
                ],
            },
        ],
    }
]


def scope(**extra: Any) -> Scope:
    return Scope(
        payload={
            "annotation": {"id": 5},
            "n": 5,
            "d": {"a": 1},
            "nul": None,
            "secrets": {"k": "s"},
        },
        fields=FieldTree(CONTENT, {"total": "number"}),
        properties={"vendor": {"name": "ACME", "codes": [1, 2]}},
        secrets={"k": "s"},
        extra=extra,
        base_url="https://acme.rossum.app",
    )


def hook(settings: dict[str, Any], name: str = "RP") -> dict[str, Any]:
    return {
        "name": name,
        "type": "function",
        "settings": settings,
        "events": ["annotation_content.export"],
    }


def call(**request: Any) -> dict[str, Any]:
    return {"name": "c", "request": {"url": "https://erp.example/x", "method": "POST", **request}}


# ------------------------------------------------------------------------------ loading


def test_stages_become_chained_steps_with_gates() -> None:
    cfg = load_pipeline(
        hook(
            {
                "stages": [
                    {"call_api": [call()]},
                    {
                        "evaluate": [{"name": "ok", "condition": {"field.x.value": {"$eq": "1"}}}],
                        "get_content": [
                            {"name": "p", "source": "explicit", "query": ["{payload.n}"]}
                        ],
                        "call_api": [call(), {**call(), "name": "d"}],
                    },
                ]
            }
        )
    )
    names = [s.name for s in cfg.steps]
    assert names == [
        "RP/stage-1/call_api:c",
        "RP/stage-2/evaluate",
        "RP/stage-2/get_content",
        "RP/stage-2/call_api:c",
        "RP/stage-2/call_api:d",
    ]
    assert [s.after for s in cfg.steps[1:]] == [[n] for n in names[:-1]]
    assert {s.gate for s in cfg.steps[2:]} == {"RP/stage-2/evaluate"}
    assert cfg.steps[0].gate is None


def test_a_v1_hook_after_an_rp_hook_runs_after_its_last_stage() -> None:
    rp = {**hook({"stages": [{"call_api": [call()]}, {"call_api": [call()]}]}), "url": "h/1"}
    rest = {
        "name": "after",
        "settings": {"request": {"url": "https://x", "method": "POST"}},
        "run_after": ["h/1"],
    }
    cfg = load_pipeline([rp, rest])
    assert cfg.step("after").after == ["RP/stage-2/call_api:c"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"stages": [{"evaluat": []}]}, "settings.stages[0]: unknown phase 'evaluat'"),
        (
            {"stages": [{"evaluate": [{"name": "n", "condition": {"field.a": {"$not": 1}}}]}]},
            "settings.stages[0].evaluate[0].condition[\"field.a\"].$not: unknown operator '$not'",
        ),
        (
            {"stages": [{"evaluate": [{"name": "n", "condition": {"$nor": []}}]}]},
            "condition.$nor: unknown operator '$nor' here",
        ),
        (
            {"stages": [{"call_api": [call(content_type="xml")]}]},
            "settings.stages[0].call_api[0].request.content_type: unknown value 'xml'",
        ),
        (
            {"stages": [{"call_api": [{**call(), "auth": {"type": "basic"}}]}]},
            "settings.stages[0].call_api[0].auth.type: unknown auth type 'basic'",
        ),
        (
            {"stages": [{"get_content": [{"name": "x", "source": "relations", "query": {}}]}]},
            "settings.stages[0].get_content[0].source: unknown source 'relations'",
        ),
        (
            {"stages": [{"call_api": [{**call(), "retries": 3}]}]},
            "settings.stages[0].call_api[0]: unknown key 'retries'",
        ),
        (
            {
                "stages": [
                    {
                        "call_api": [
                            {
                                **call(),
                                "response_handlers": [
                                    {
                                        "target_type": "schema_id",
                                        "target_key": "x",
                                        "value": {"response.body": {"$jsonpath": "id"}},
                                    }
                                ],
                            }
                        ]
                    }
                ]
            },
            "response_handlers[0].value.response.body.$jsonpath: unknown extractor",
        ),
    ],
)
def test_bad_settings_are_refused_with_hook_name_and_key_path(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline(hook(settings, name="Create Draft"))
    text = str(info.value)
    assert "hook 'Create Draft'" in text
    assert expected in text


def test_a_lone_rp_hook_with_only_bad_input_is_a_config_error_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match="stages: must be a list"):
        load_pipeline({"name": "x", "settings": {"stages": "nope"}})


def test_compat_switches_from_a_hooks_wrapper() -> None:
    cfg = load_pipeline(
        {
            "hooks": [hook({"stages": [{"call_api": [call()]}]})],
            "compat": {"non_2xx": "record", "single_generic_message": True},
        }
    )
    assert cfg.compat.non_2xx == "record" and cfg.compat.single_generic_message
    assert cfg.compat.unresolved_placeholder == "error"
    with pytest.raises(ConfigError):
        load_pipeline({"hooks": [hook({"stages": [{"call_api": [call()]}]})], "compat": {"x": 1}})


# ------------------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    ("condition", "values", "expected"),
    [
        ({"a": {"$eq": 1}}, {"a": 1}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"$ne": ""}}, {"a": ""}, False),
        ({"a": {"$gt": 5}}, {"a": 6}, True),
        ({"a": {"$gte": 5}}, {"a": 5}, True),
        ({"a": {"$lt": 5}}, {"a": None}, False),  # None never compares
        ({"a": {"$lte": 5}}, {"a": "x"}, False),  # type mismatch is false, not an error
        ({"a": {"$in": ["200", "201"]}}, {"a": "201"}, True),
        ({"a": {"$in": ["200", "201"]}}, {"a": 201}, False),
        ({"a": {"$nin": ["x"]}}, {"a": "y"}, True),
        ({"a": {"$exists": True}}, {"a": ""}, True),
        ({"a": {"$exists": False}}, {}, True),
        ({"a": {"$exists": True, "$ne": ""}}, {"a": ""}, False),
        ({"a": {"$regex": "@gmail\\.com$"}}, {"a": "me@gmail.com"}, True),
        ({"a": {"$regex": "1"}}, {"a": 1}, False),  # only strings match
        ({"a": {"$size": 2}}, {"a": [1, 2]}, True),
        ({"a": {"$size": {"$gt": 0}}}, {"a": []}, False),
        ({"$and": [{"a": 1}, {"b": 2}]}, {"a": 1, "b": 2}, True),
        ({"$or": [{"a": 1}, {"b": 2}]}, {"a": 0, "b": 2}, True),
        ({"$or": [{"a": 1}, {"b": 2}]}, {"a": 0, "b": 0}, False),
        ({"a": {"$eq": None}}, {}, True),  # Rossum's None == None footgun, kept verbatim
    ],
)
def test_filter_operators(
    condition: dict[str, Any], values: dict[str, Any], expected: bool
) -> None:
    assert evaluate_filter(condition, values.get) is expected


def test_size_of_something_unmeasurable_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(Exception, match=r"\$size needs a list"):
        evaluate_filter({"a": {"$size": 1}}, {"a": 5}.get)


# --------------------------------------------------------------------------- placeholders


async def test_exact_match_keeps_type_and_composite_stringifies() -> None:
    s = scope()
    assert await fill("{payload.n}", s, fetch=None, strict=True) == 5
    assert await fill(" {payload.d} ", s, fetch=None, strict=True) == {"a": 1}
    assert await fill("N={payload.n}", s, fetch=None, strict=True) == "N=5"
    assert await fill("x={payload.nul}y", s, fetch=None, strict=True) == "x=y"
    assert await fill({"k": ["{property.vendor.codes[1]}"]}, s, fetch=None, strict=True) == {
        "k": [2]
    }


async def test_field_value_is_raw_and_field_is_typed() -> None:
    s = scope()
    assert await fill("{field.total.value}", s, fetch=None, strict=True) == "1234.50"
    assert await fill("{field.total}", s, fetch=None, strict=True) == 1234.5
    assert await fill("{field.invoice_id}", s, fetch=None, strict=True) == "INV-7"
    assert await fill("t={field.total}", s, fetch=None, strict=True) == "t=1234.5"


async def test_iteration_item_sequence_token_secret() -> None:
    s = scope(sequence=1, token="tok", line=FieldTree(CONTENT).fields["line_items"][1])
    text = "{line.sku.value}-{sequence}-{token}-{secret.k}-{payload.secrets.k}"
    assert await fill(text, s, fetch=None, strict=True) == "B-1-tok-s-s"


async def test_multivalue_column_needs_all_values() -> None:
    s = scope()
    with pytest.raises(Unresolved, match="all_values"):
        await fill("{field.sku}", s, fetch=None, strict=True)
    values = await fill("{field.sku.all_values}", s, fetch=None, strict=True)
    assert values == ["A", "B"]


async def test_unresolved_is_an_error_naming_it_when_strict_and_none_when_lenient() -> None:
    s = scope()
    with pytest.raises(Unresolved, match=r"\{payload\.secrets\.missing\}"):
        await fill("Bearer {payload.secrets.missing}", s, fetch=None, strict=True)
    assert await fill("{property.nope}", s, fetch=None, strict=False) is None
    assert await fill("a{property.nope}b", s, fetch=None, strict=False) == "ab"


async def test_base64_and_json_braces_are_not_placeholders() -> None:
    s = scope()
    assert (
        await fill("{base64(payload.n)}", s, fetch=None, strict=True)
        == base64.b64encode(b"5").decode()
    )
    raw = '{"a": 1, "b": "{payload.n}"}'
    assert await fill(raw, s, fetch=None, strict=True) == '{"a": 1, "b": "5"}'


async def test_dereference_fetches_same_origin_only() -> None:
    fetched: list[str] = []

    async def fetch(url: str) -> Any:
        fetched.append(url)
        return {"x": 42}

    s = Scope(
        payload={
            "own": "https://api.acme.rossum.app/v1/documents/1",
            "other": "https://httpbin.org/get",
            "plain": "not a url",
        },
        fields=FieldTree([]),
        properties={},
        secrets={},
        extra={},
        base_url="https://acme.rossum.app",
    )
    assert await fill("{payload.own.@.x}", s, fetch=fetch, strict=True) == 42
    assert await fill("{payload.plain.@}", s, fetch=fetch, strict=True) == "not a url"
    with pytest.raises(Unresolved, match="only fetches Rossum URLs"):
        await fill("{payload.other.@}", s, fetch=fetch, strict=True)
    # conditions never fetch: .@ is inert
    assert await fill("{payload.own.@}", s, fetch=None, strict=False) == s.payload["own"]
    assert fetched == ["https://api.acme.rossum.app/v1/documents/1"]


# ------------------------------------------------------------------------- HTTP encoding


def test_json_body_is_serialised_like_requests() -> None:
    req = encode_request(
        method="post",
        url="https://e/x",
        content={"a": 1, "b": "é"},
        content_type="json",
        headers={"Accept": "application/json"},
        params={"q": "1 2"},
        timeout_s=10,
        step="s",
    )
    assert req.body == b'{"a": 1, "b": "\\u00e9"}'
    assert req.headers["Content-Type"] == "application/json"
    assert req.url == "https://e/x?q=1+2"


def test_form_raw_and_string_json_bodies() -> None:
    form = encode_request(
        method="POST",
        url="u",
        content={"a[b]": "x y", "n": 1},
        content_type="form",
        headers=None,
        params=None,
        timeout_s=1,
        step="s",
    )
    assert form.body == b"a%5Bb%5D=x+y&n=1"
    assert form.headers["Content-Type"] == "application/x-www-form-urlencoded"
    raw = encode_request(
        method="PATCH",
        url="u",
        content='[{"op": "replace"}]',
        content_type=None,
        headers={"Content-Type": "application/json-patch+json"},
        params=None,
        timeout_s=1,
        step="s",
    )
    assert raw.body == b'[{"op": "replace"}]'
    assert raw.headers == {"Content-Type": "application/json-patch+json"}
    # content_type json on a string double-encodes, as Rossum's engine does
    double = encode_request(
        method="POST",
        url="u",
        content='{"a": 1}',
        content_type="json",
        headers=None,
        params=None,
        timeout_s=1,
        step="s",
    )
    assert json.loads(double.body or b"") == '{"a": 1}'


def test_multipart_splits_files_and_fields() -> None:
    req = encode_request(
        method="POST",
        url="https://e/att",
        content={
            "attachment[file]": ["a.pdf", b"%PDF", "application/pdf"],
            "attachment[intent]": "Supplier",
        },
        content_type="multipart",
        headers={},
        params=None,
        timeout_s=1,
        step="s",
    )
    body = req.build().content
    assert b'name="attachment[file]"; filename="a.pdf"' in body
    assert b"Content-Type: application/pdf" in body and b"%PDF" in body
    # plain fields come first and, as with requests, carry no Content-Type
    assert body.index(b'name="attachment[intent]"\r\n\r\nSupplier') < body.index(b"%PDF")


def _requests_prepare(**kw: Any) -> Any:
    import requests

    return requests.Request(**kw).prepare()


@pytest.mark.parametrize(
    ("content_type", "content", "headers"),
    [
        ("json", {"a": 1, "b": ["é", None, 2.5], "c": {"d": True}}, {}),
        ("form", {"scope": "a b", "client_id": "x&y", "n": 3}, {}),
        (None, '{"pre": "serialised"}', {"Content-Type": "application/json"}),
        (None, {"k": "v"}, {}),
        ("files", {"file": ["scan.pdf", b"%PDF-1.4", "application/pdf"], "meta": "x"}, {}),
        (
            "multipart",
            {"attachment[file]": ["a.eml", b"From: x", "message/rfc822"], "intent": "Email"},
            {},
        ),
    ],
)
def test_bodies_are_byte_identical_to_requests(
    content_type: str | None, content: Any, headers: dict[str, str]
) -> None:
    """Rossum's engine sends with requests: the same content gives the same bytes here."""
    ours = encode_request(
        method="POST",
        url='https://erp.example/api/a b/{x}?x=1&f=["id"]|y',
        content=content,
        content_type=content_type,
        headers=headers,
        params={"fields": '["id"]'},
        timeout_s=10,
        step="s",
    )
    kw: dict[str, Any] = {
        "method": "POST",
        "url": 'https://erp.example/api/a b/{x}?x=1&f=["id"]|y',
        "headers": headers,
        "params": {"fields": '["id"]'},
    }
    if content_type == "json":
        kw["json"] = content
    elif content_type == "files":
        kw["files"] = {k: tuple(v) if isinstance(v, list) else v for k, v in content.items()}
    elif content_type == "multipart":
        kw["files"] = {k: tuple(v) for k, v in content.items() if isinstance(v, list)}
        kw["data"] = {k: v for k, v in content.items() if not isinstance(v, list)}
    else:
        kw["data"] = content
    theirs = _requests_prepare(**kw)
    body = ours.body or b""
    their_type = theirs.headers.get("Content-Type", "")
    if "boundary=" in their_type:
        boundary = their_type.split("boundary=")[1]
        ours_boundary = ours.headers["Content-Type"].split("boundary=")[1]
        body = body.replace(ours_boundary.encode(), boundary.encode())
        assert ours.headers["Content-Type"].split(";")[0] == their_type.split(";")[0]
    else:
        assert ours.headers.get("Content-Type", "") == their_type
    assert body == (theirs.body.encode() if isinstance(theirs.body, str) else theirs.body)
    assert ours.url == theirs.url
    assert ours.build().url.raw_path.decode() == theirs.path_url


def test_oauth1_header_verifies_with_oauthlib() -> None:
    from oauthlib.oauth1 import RequestValidator, ResourceEndpoint

    auth = {
        "consumer_key": "ck",
        "consumer_secret": "cs",
        "token_key": "tk",
        "token_secret": "ts",
        "realm": "123_SB1",
        "signature_method": "HMAC-SHA256",
    }
    header = oauth1_header(auth, "GET", "https://erp.example/record?q=1")
    assert header.startswith("OAuth ") and 'realm="123_SB1"' in header
    assert 'oauth_signature_method="HMAC-SHA256"' in header

    class Validator(RequestValidator):
        enforce_ssl = False
        allowed_signature_methods = ("HMAC-SHA256", "HMAC-SHA1")

        def check_client_key(self, key: str) -> bool:
            return True

        def check_access_token(self, token: str) -> bool:
            return True

        def check_nonce(self, nonce: str) -> bool:
            return True

        def validate_client_key(self, key: str, request: Any) -> bool:
            return key == "ck"

        def validate_access_token(self, key: str, token: str, request: Any) -> bool:
            return token == "tk"

        def validate_timestamp_and_nonce(self, *a: Any, **k: Any) -> bool:
            return True

        def validate_realms(self, *a: Any, **k: Any) -> bool:
            return True

        def get_client_secret(self, key: str, request: Any) -> str:
            return "cs"

        def get_access_token_secret(self, key: str, token: str, request: Any) -> str:
            return "ts"

        @property
        def dummy_client(self) -> str:
            return "dummy"

        @property
        def dummy_access_token(self) -> str:
            return "dummy"

    endpoint = ResourceEndpoint(Validator())
    ok, _ = endpoint.validate_protected_resource_request(
        "https://erp.example/record?q=1", http_method="GET", headers={"Authorization": header}
    )
    assert ok
    tampered, _ = endpoint.validate_protected_resource_request(
        "https://erp.example/record?q=2", http_method="GET", headers={"Authorization": header}
    )
    assert not tampered


# --------------------------------------------------------------------------- extraction


def reply(body: bytes, ctype: str | None, status: int = 200) -> dict[str, Any]:
    headers = {"Content-Type": ctype} if ctype else {}
    return response_object(
        httpx.Response(
            status, content=body, headers=headers, request=httpx.Request("GET", "https://e/")
        ),
        0.1,
    )


def test_response_object_body_by_content_type_and_extractors() -> None:
    r = reply(b'{"id": "X1", "items": [{"n": 1}]}', "application/json")
    assert extract({"response.body": {"$jmespath": "id"}}, r, "h") == "X1"
    assert extract({"response": {"$jmespath": "status_code"}}, r, "h") == 200
    assert (
        extract({"response": {"$jmespath": "headers.content_type"}}, r, "h") == "application/json"
    )
    assert extract({"response.body": {"$regex": '"id": "(\\w+)"'}}, r, "h") == "X1"
    xml = reply(b"<r><order><status>OK</status></order><i>1</i><i>2</i></r>", "application/xml")
    assert extract({"response.body": {"$xmlpath": ".//order/status"}}, xml, "h") == "OK"
    assert extract({"response.body": {"$xmlpath": ".//i"}}, xml, "h") == ["1", "2"]
    with pytest.raises(Exception, match="needs an XML response"):
        extract({"response.body": {"$xmlpath": ".//x"}}, r, "h")
    bodyless = reply(b"", None, 204)
    assert "body" not in bodyless
    assert extract({"response.body": {"$jmespath": "id"}}, bodyless, "h") is None


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            [{"call_api": [call(content={"v": "{fields.total}"})]}],
            "settings.stages[0].call_api[0].request: placeholder {fields.total} uses unknown "
            "name 'fields'",
        ),
        (
            [{"call_api": [call(headers={"Authorization": "Bearer {token}"})]}],
            "placeholder {token} uses unknown name 'token'",
        ),
        (
            [{"call_api": [call(url="https://e/{item.id}")]}],
            "placeholder {item.id} uses unknown name 'item'",
        ),
        (
            [{"call_api": [call(content="{property.draft.content.@}")]}],
            "placeholder {property.draft.content.@}: no earlier get_content or property "
            "handler stores 'draft'",
        ),
        (
            [{"call_api": [{**call(), "auth": {"url": "{token}", "credential_key": "t"}}]}],
            "settings.stages[0].call_api[0].auth: placeholder {token} uses unknown name 'token'",
        ),
    ],
)
def test_placeholders_no_stage_provides_are_refused_at_load(
    stages: list[dict[str, Any]], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline(hook({"stages": stages}))
    assert expected in str(info.value)


def test_placeholders_provided_by_earlier_stages_load() -> None:
    stages = [
        {
            "get_content": [{"name": "draft", "source": "document_relation", "query": {}}],
            "call_api": [
                {
                    **call(content="{property.draft.content.@}"),
                    "response_handlers": [
                        {
                            "target_type": "property",
                            "target_key": "erp",
                            "value": {"response.body": {"$jmespath": "id"}},
                        }
                    ],
                }
            ],
        },
        {
            "call_api": [
                {
                    **call(
                        url="https://e/{property.erp}/{line.sku.value}/{sequence}",
                        iterate_over="field.line_items",
                        iteration_item_name="line",
                        headers={"Authorization": "Bearer {token}"},
                    ),
                    "auth": {"url": "https://e/token", "credential_key": "access_token"},
                }
            ]
        },
    ]
    cfg = load_pipeline(hook({"stages": stages}))
    assert len(cfg.steps) == 3


def test_native_request_processor_step_expands_and_later_steps_follow_it() -> None:
    cfg = load_pipeline(
        """
name: native-rp
compat: {unresolved_placeholder: skip_call}
steps:
  - name: erp
    type: request_processor
    stages:
      - evaluate: [{name: has_id, condition: {"field.invoice_id.value": {"$ne": ""}}}]
        call_api:
          - name: create
            request: {url: "https://erp/api/x", method: POST, content_type: json}
  - name: check
    type: evaluate
    after: [erp]
    require: "True"
"""
    )
    assert [s.name for s in cfg.steps] == [
        "erp/stage-1/evaluate",
        "erp/stage-1/call_api:create",
        "check",
    ]
    assert cfg.step("check").after == ["erp/stage-1/call_api:create"]
    assert cfg.compat.unresolved_placeholder == "skip_call"
    with pytest.raises(ConfigError, match="unknown keys stage"):
        load_pipeline(
            {"name": "x", "steps": [{"name": "erp", "type": "request_processor", "stage": []}]}
        )


async def test_base64_of_the_payload_leaves_credentials_out() -> None:
    s = scope()
    s.payload["rossum_authorization_token"] = "rossum-token"  # type: ignore[index]
    encoded = await fill("{base64(payload)}", s, fetch=None, strict=True)
    decoded = json.loads(base64.b64decode(encoded))
    assert decoded["annotation"] == {"id": 5}
    assert "secrets" not in decoded and "rossum_authorization_token" not in decoded
    assert await fill("{payload.secrets.k}", s, fetch=None, strict=True) == "s"
