"""Rossum v1 hooks as production chains use them, and bad input refused at load time.

Fixtures follow the documented formats (rossum.university REST API export, JSON templating,
Rossum API hook objects); values are our own.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from rossflow.export.config import CodeStep, RestStep, SoapStep
from rossflow.export.context import ExportContext
from rossflow.export.errors import ConfigError
from rossflow.export.loading import load_pipeline
from rossflow.export.rest_request import (
    apply_response,
    encode_multipart,
    prepare_auth_request,
    prepare_request,
)
from rossflow.export.soap import soap_fault, soap_headers
from rossflow.export.templating import RenderedFile

API = "https://acme.rossum.app/api/v1"


def hook(hid: int, name: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": hid,
        "url": f"{API}/hooks/{hid}",
        "name": name,
        "type": "webhook",
        "events": ["annotation_content.export"],
        "settings": settings,
        **extra,
    }


AUTH = {
    "url": "@{token_url}",
    "method": "POST",
    "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    "data": {
        "grant_type": "client_credentials",
        "client_id": "@{client_ref}",
        "client_secret": "{secret.client_secret}",
    },
}


def template_hook(key_name: str = "export_reference_key", key: str = "draft") -> dict[str, Any]:
    return hook(
        1,
        "Render",
        {
            "export_configs": [
                {key_name: key, "file_content_template": '{"n": "{{ field.invoice_id }}"}'}
            ]
        },
    )


def rest_hook(hid: int, name: str, request: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return hook(hid, name, {"auth": AUTH, "request": request, **settings})


def with_values(ctx: ExportContext, **values: Any) -> ExportContext:
    return ctx.with_values(values)


# ---------------------------------------------------------------------------- loading


def test_export_id_is_the_old_name_of_export_reference_key() -> None:
    cfg = load_pipeline([template_hook("export_id", "custom_json")])
    assert cfg.steps[0].outputs[0].key == "custom_json"
    rest = {
        "export_id": "custom_json",
        "request": {"url": "https://erp/x", "data": "#{file_content}"},
    }
    cfg = load_pipeline([template_hook("export_id", "custom_json"), hook(2, "Send", rest)])
    assert cfg.step("Send").export_reference_key == "custom_json"


def test_errors_name_the_key_as_the_user_wrote_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline([template_hook("export_id", "")])
    text = str(err.value)
    assert "hook 'Render': settings.export_configs[0].export_id:" in text
    assert "outputs" not in text and ".key" not in text


def test_request_data_string_is_the_raw_body(ctx: ExportContext) -> None:
    cfg = load_pipeline(
        [
            template_hook(),
            rest_hook(
                2,
                "Create",
                {
                    "url": "https://erp.example/api/invoices",
                    "method": "POST",
                    "data": "#{file_content}",
                    "headers": {"Accept": "application/json", "Content-Type": "application/json"},
                },
                export_reference_key="draft",
            ),
        ]
    )
    step = cfg.step("Create")
    assert isinstance(step, RestStep)
    ctx = with_values(ctx, token_url="https://idp.example/token", client_ref="cid")
    ctx = ctx.with_reference("draft", RenderedFile("draft", b'{"n": "7"}', "application/json"))
    req = prepare_request(step, ctx, secrets={"access_token": "tok-123456"}, auth=step.auth)
    assert req.method == "POST" and req.url == "https://erp.example/api/invoices"
    assert req.content == b'{"n": "7"}'
    # no Authorization header configured: the token goes in as a bearer token, like Rossum
    assert req.headers == {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "Authorization": "Bearer tok-123456",
    }


def test_request_data_dict_is_form_fields_or_multipart(ctx: ExportContext) -> None:
    form = RestStep(
        name="f",
        request={"url": "https://erp/x", "data": {"a[b]": "@{invoice_id}", "c": "d e"}},  # type: ignore[arg-type]
    )
    ctx = with_values(ctx, invoice_id="INV-1")
    req = prepare_request(form, ctx)
    assert req.data == {"a[b]": "INV-1", "c": "d e"}
    multi = RestStep(
        name="m",
        request={  # type: ignore[arg-type]
            "url": "https://erp/x",
            "data": {"attachment[url]": "@{invoice_id}"},
            "headers": {"Content-Type": "multipart/form-data"},
        },
    )
    req = prepare_request(multi, ctx)
    ctype = req.headers["Content-Type"]
    boundary = ctype.split("boundary=")[1]
    assert (
        req.content
        == (
            f'--{boundary}\r\nContent-Disposition: form-data; name="attachment[url]"\r\n\r\n'
            f"INV-1\r\n--{boundary}--\r\n"
        ).encode()
    )
    # deterministic: the same export prepares the same bytes
    assert prepare_request(multi, ctx).content == req.content


def test_file_content_multipart_honours_a_hard_coded_boundary(ctx: ExportContext) -> None:
    boundary = "--------------------------1234567890"
    step = RestStep(
        name="attach",
        request={  # type: ignore[arg-type]
            "url": "https://erp/x/@{erp_document_id}/image",
            "method": "PUT",
            "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            "file_key": "file",
            "file_name": "@{invoice_id}.pdf",
            "file_content": "#{original_file}",
        },
    )
    ctx = with_values(ctx, invoice_id="INV-9", erp_document_id="77")
    req = prepare_request(step, ctx)
    assert req.url == "https://erp/x/77/image" and req.method == "PUT"
    assert req.headers["Content-Type"] == f"multipart/form-data; boundary={boundary}"
    original = ctx.file.original_file
    assert (
        req.content
        == (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="INV-9.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode()
        + original
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_encode_multipart_escapes_quotes_in_names() -> None:
    body, ctype = encode_multipart({'a"b': "v"}, {}, content_type="")
    assert b'name="a%22b"' in body and ctype.startswith("multipart/form-data; boundary=")


def test_placeholders_in_every_part_of_auth(ctx: ExportContext) -> None:
    cfg = load_pipeline([rest_hook(2, "Send", {"url": "https://erp/x", "method": "PUT"})])
    step = cfg.steps[0]
    ctx = with_values(ctx, token_url="https://idp.example/oauth/token", client_ref="client-7")
    req = prepare_auth_request(step.auth, secrets={"client_secret": "sec-ret-1"}, ctx=ctx)
    assert req.url == "https://idp.example/oauth/token"
    assert req.content == (
        b"grant_type=client_credentials&client_id=client-7&client_secret=sec-ret-1"
    )
    assert req.headers == {"Content-Type": "application/x-www-form-urlencoded"}


def test_token_is_not_added_twice(ctx: ExportContext) -> None:
    placed = RestStep(
        name="r",
        auth=AUTH,  # type: ignore[arg-type]
        request={
            "url": "https://erp/x",
            "headers": {"Authorization": "Token {secret.access_token}"},
        },  # type: ignore[arg-type]
    )
    req = prepare_request(placed, ctx, secrets={"access_token": "abc123"}, auth=placed.auth)  # type: ignore[arg-type]
    assert req.headers == {"Authorization": "Token abc123"}
    in_url = RestStep(
        name="r",
        auth=AUTH,  # type: ignore[arg-type]
        request={"url": "https://erp/x?access_token={secret.access_token}"},  # type: ignore[arg-type]
    )
    req = prepare_request(in_url, ctx, secrets={"access_token": "abc123"}, auth=in_url.auth)  # type: ignore[arg-type]
    assert "Authorization" not in req.headers and req.url.endswith("=abc123")


def test_hook_queues_select_the_chain_of_a_queue() -> None:
    q1, q2 = f"{API}/queues/11", f"{API}/queues/22"
    line = template_hook()
    line["queues"] = [q1]
    header = {**template_hook(), "id": 3, "url": f"{API}/hooks/3", "name": "Render header"}
    header["queues"] = [q2]
    send = rest_hook(
        2,
        "Create",
        {"url": "https://erp/x", "data": "#{file_content}"},
        export_reference_key="draft",
    )
    send["queues"] = [q1, q2]
    send["run_after"] = [f"{API}/hooks/1", f"{API}/hooks/3"]
    cfg = load_pipeline([line, header, send])
    assert [s.name for s in cfg.steps_for_queue(11)] == ["Render", "Create"]
    assert [s.name for s in cfg.steps_for_queue(22)] == ["Render header", "Create"]
    # the same reference key from two hooks of the same queue is refused
    header["queues"] = [q1]
    with pytest.raises(
        ConfigError, match="'draft' is produced by both 'Render' and 'Render header'"
    ):
        load_pipeline([line, header, send])


def test_bad_queue_reference_is_refused() -> None:
    bad = template_hook()
    bad["queues"] = ["queue-one"]
    with pytest.raises(ConfigError, match="hook 'Render': queues: queue 'queue-one' is neither"):
        load_pipeline([bad])


# --------------------------------------------------------------------------- code hooks


def coupa_function_hook() -> dict[str, Any]:
    return {
        "id": 9,
        "url": f"{API}/hooks/9",
        "name": "Handle Responses",
        "type": "function",
        "events": ["annotation_content.export"],
        "settings": {},
        "config": {"runtime": "python3.12", "code": "def rossum_hook_request_handler(p): ..."},
    }


def test_code_hook_is_refused_with_how_to_plug_in_a_replacement() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline([template_hook(), coupa_function_hook()])
    text = str(err.value)
    assert "hook 'Handle Responses' is a Rossum serverless function (python3.12)" in text
    assert 'code_steps: {"Handle Responses": "yourpackage.module:function"}' in text


def test_code_hook_mapped_to_a_function(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("coupa_replacement")
    module.handle = lambda payload: {"messages": []}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "coupa_replacement", module)
    cfg = load_pipeline(
        {
            "hooks": [template_hook(), coupa_function_hook()],
            "code_steps": {"Handle Responses": "coupa_replacement:handle"},
        }
    )
    step = cfg.step("Handle Responses")
    assert isinstance(step, CodeStep) and step.function == "coupa_replacement:handle"
    assert step.after == ["Render"] and step.replaces_hook == "Handle Responses"
    # left out on purpose: a warning, never silence
    cfg = load_pipeline([template_hook(), coupa_function_hook()], code_steps={"9": None})
    assert [s.name for s in cfg.steps] == ["Render"]
    assert any("left out on purpose" in w and "will NOT run" in w for w in cfg.warnings)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_pipeline(
            [template_hook(), coupa_function_hook()],
            code_steps={"Handle Responses": "no_such_module_xyz:f"},
        )


def test_netsuite_connector_is_refused_in_one_sentence() -> None:
    settings = {
        "export_configs": [
            {"payload": [{"method_name": "add", "method_args": [{"_ns_type": "VendorBill"}]}]}
        ],
        "netsuite_settings": {"account": "123_SB1"},
    }
    with pytest.raises(ConfigError) as err:
        load_pipeline([hook(5, "NetSuite", settings)])
    (problem,) = err.value.problems
    assert problem.startswith("hook 'NetSuite' is Rossum's NetSuite connector")
    assert "add(VendorBill)" in problem and problem.count(". ") == 0


def test_request_processor_hook_in_a_v1_chain_keeps_its_queues_and_order() -> None:
    rp = hook(
        7,
        "RP",
        {
            "stages": [
                {
                    "call_api": [
                        {"name": "create", "request": {"url": "https://erp/x", "method": "POST"}}
                    ]
                }
            ]
        },
        queues=[f"{API}/queues/5"],
    )
    rp["run_after"] = [f"{API}/hooks/1"]
    after = rest_hook(8, "Attach", {"url": "https://erp/y"})
    after["run_after"] = [f"{API}/hooks/7"]
    cfg = load_pipeline([template_hook(), rp, after])
    stage_steps = [s for s in cfg.steps if s.name.startswith("RP/")]
    assert [s.name for s in stage_steps] == ["RP/stage-1/call_api:create"]
    assert stage_steps[0].after == ["Render"]
    assert stage_steps[0].queues == [5] or stage_steps[0].queues == [f"{API}/queues/5"]
    assert cfg.step("Attach").after == ["RP/stage-1/call_api:create"]
    assert [s.name for s in cfg.steps_for_queue(6)] == ["Render", "Attach"]


# ----------------------------------------------------------------------------- bad input


def test_cycle_in_run_after_names_the_hook() -> None:
    a = template_hook()
    a["run_after"] = [f"{API}/hooks/2"]
    b = rest_hook(2, "Send", {"url": "https://erp/x"})
    b["run_after"] = [f"{API}/hooks/1"]
    with pytest.raises(
        ConfigError, match=r"hook 'Render': run_after forms a cycle \(Render -> Send -> Render\)"
    ):
        load_pipeline([a, b])


def test_reference_key_used_before_it_is_produced() -> None:
    send = rest_hook(
        2, "Send", {"url": "https://erp/x", "data": "#{file_content}"}, export_reference_key="draft"
    )
    send["run_after"] = []
    render = template_hook()
    render["run_after"] = [f"{API}/hooks/2"]
    with pytest.raises(ConfigError, match="'Send' uses 'draft' before it is produced"):
        load_pipeline([send, render])


def test_placeholder_no_step_provides() -> None:
    send = hook(2, "Send", {"request": {"url": "https://erp/x", "data": "#{file_content}"}})
    with pytest.raises(
        ConfigError,
        match=r"hook 'Send': request.data uses #\{file_content\} but no export_reference_key",
    ):
        load_pipeline([send])
    bearer = hook(
        3,
        "Bearer",
        {
            "request": {
                "url": "https://erp/x",
                "headers": {"Authorization": "Bearer {secret.access_token}"},
            }
        },
    )
    with pytest.raises(ConfigError, match="only an 'auth' block provides"):
        load_pipeline([bearer])
    odd = hook(4, "Odd", {"request": {"url": "https://erp/x", "content": "#{templated}"}})
    with pytest.raises(ConfigError, match=r"unknown placeholder #\{templated\}"):
        load_pipeline([odd])


def test_unknown_json_templating_operator() -> None:
    body = {"total": {"$DATAPOINT_VALU$": {"schema_id": "amount_total"}}}
    send = hook(2, "Send", {"request": {"url": "https://erp/x", "content": body}})
    with pytest.raises(
        ConfigError, match=r"request.content uses unknown operator \$DATAPOINT_VALU\$"
    ):
        load_pipeline([send])


def test_unknown_step_type_and_evaluator_operator_in_native_pipelines() -> None:
    with pytest.raises(ConfigError, match=r"steps\[0\] \('x'\): unknown step type 'ftp'"):
        load_pipeline({"name": "p", "steps": [{"name": "x", "type": "ftp"}]})
    with pytest.raises(ConfigError, match="step 'e'"):
        load_pipeline(
            {"name": "p", "steps": [{"name": "e", "type": "evaluate", "condition": "2 ** 8"}]}
        )


# --------------------------------------------------------------------------------- SOAP


def test_soap_headers_and_faults(ctx: ExportContext) -> None:
    assert soap_headers("1.1", "urn:add") == {
        "Content-Type": "text/xml; charset=utf-8",
        "SOAPAction": '"urn:add"',
    }
    assert soap_headers("1.2", "urn:add") == {
        "Content-Type": 'application/soap+xml; charset=utf-8; action="urn:add"'
    }
    fault11 = (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        "<faultcode>s:Client</faultcode><faultstring>Invalid vendor</faultstring>"
        "</s:Fault></s:Body></s:Envelope>"
    )
    assert soap_fault(fault11) == "s:Client: Invalid vendor"
    fault12 = (
        '<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><e:Fault>'
        "<e:Code><e:Value>e:Sender</e:Value></e:Code><e:Reason><e:Text>Bad date</e:Text>"
        "</e:Reason></e:Fault></e:Body></e:Envelope>"
    )
    assert soap_fault(fault12) == "e:Sender: Bad date"
    assert soap_fault("<ok/>") is None and soap_fault("not xml") is None
    step = SoapStep(
        name="s",
        soap_action="urn:add",
        request={"url": "https://ws/x", "content": "<e/>"},  # type: ignore[arg-type]
    )
    req = prepare_request(step, ctx)
    assert req.headers == {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:add"'}
    record = {"status_code": 200, "text": fault11, "raw": [], "headers": {}}
    _, outcome = apply_response(step, ctx, record)
    assert outcome.status == "error" and "SOAP fault s:Client: Invalid vendor" in outcome.message


def test_example_chain_loads_and_its_code_step_answers(ctx: ExportContext) -> None:
    from pathlib import Path

    from rossflow.export.code_step import run_code_step

    example = Path(__file__).parents[2] / "examples" / "v1-chain-with-code-step.json"
    cfg = load_pipeline(example)
    assert cfg.warnings == []
    step = cfg.step("Handle ERP Responses")
    assert isinstance(step, CodeStep)
    reply = '{"errors": {"invoice-number": ["has already been taken"]}}'
    failed = ctx.with_reference("create_draft_reply_payload", reply)
    failed = failed.with_values({"api1_status_code": "422"})
    _, outcome = run_code_step(step, failed)
    assert outcome.errors == ["<b>invoice-number</b>: has already been taken"]
    ok = ctx.with_reference("create_draft_reply_payload", '{"id": 5}')
    _, outcome = run_code_step(
        step, ok.with_values({"api1_status_code": "201", "erp_document_id": "5"})
    )
    assert outcome.errors == [] and outcome.info == ["ERP document 5 created"]


def test_run_summary_shows_the_pipeline_warnings() -> None:
    from rossflow.export.report import markdown_summary

    text = markdown_summary(
        "p", [1], [], warnings=["hook 'Handle' is left out on purpose; it will NOT run"]
    )
    assert "## Pipeline warnings" in text and "it will NOT run" in text
