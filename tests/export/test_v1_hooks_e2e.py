"""A production-style v1 chain end to end: sandbox (Rossum) -> engine -> ERP stand-in.

The hooks follow the documented formats (REST API export with ``request.data``,
``file_content`` multipart with a hard-coded boundary, form fields, ``@{}`` in ``auth``, the
legacy ``export_id``, hook ``queues``) and a serverless hook replaced by a code step; the
values are our own.
"""

from __future__ import annotations

import json
from typing import Any

from tests.export.conftest import datapoint

API = "https://acme.rossum.app/api/v1"
BOUNDARY = "--------------------------rossflowtest0123456789"
CALLS: list[dict[str, Any]] = []


def handle_responses(payload: dict[str, Any]) -> dict[str, Any]:
    """Stand-in for a serverless "Handle Responses" hook (called by the code step)."""
    CALLS.append(payload)
    content = payload["annotation"]["content"]
    status = datapoint(content, "api1_status_code")
    erp_id = payload["rossflow"]["values"]["erp_document_id"]  # a field the export leaves out
    if status is None or status["content"]["value"] != "201":
        return {"messages": [{"type": "error", "content": "draft invoice not created"}]}
    return {
        "messages": [{"type": "warning", "content": f"ERP draft {erp_id}"}],
        "operations": [],
    }


def hooks(erp_url: str, queue: int) -> list[dict[str, Any]]:
    auth = {
        "url": "@{order_id}",
        "method": "POST",
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        "data": {
            "grant_type": "client_credentials",
            "client_id": "@{recipient_name}",
            "client_secret": "{secret.client_secret}",
        },
    }

    def base(hid: int, name: str, settings: dict[str, Any], after: list[int]) -> dict[str, Any]:
        return {
            "id": hid,
            "url": f"{API}/hooks/{hid}",
            "name": name,
            "type": "webhook",
            "events": ["annotation_content.export"],
            "queues": [f"{API}/queues/{queue}"],
            "run_after": [f"{API}/hooks/{a}" for a in after],
            "settings": settings,
        }

    template = '{"number": "{{ field.invoice_id }}", "total": "{{ field.amount_total }}"}'
    other_queue = base(
        2,
        "Render for another queue",
        {"export_configs": [{"export_id": "draft", "file_content_template": "OTHER"}]},
        [],
    )
    other_queue["queues"] = [f"{API}/queues/{queue + 100}"]
    return [
        base(
            1,
            "Render",
            {"export_configs": [{"export_id": "draft", "file_content_template": template}]},
            [],
        ),
        other_queue,
        base(
            3,
            "Create Draft",
            {
                "export_id": "draft",
                "auth": auth,
                "request": {
                    "url": f"{erp_url}/api/invoices",
                    "method": "POST",
                    "data": "#{file_content}",
                    "headers": {"ACCEPT": "application/json", "Content-Type": "application/json"},
                },
                "response_headers_reference_key": "create_headers",
                "response_payload_reference_key": "create_payload",
            },
            [1, 2],
        ),
        base(
            4,
            "Create Draft - parse",
            {
                "extract": [
                    {
                        "format": "json",
                        "source_reference_key": "create_headers",
                        "extract_rules": [
                            {"value_path": "status_code", "target_schema_id": "api1_status_code"}
                        ],
                    },
                    {
                        "format": "json",
                        "source_reference_key": "create_payload",
                        "extract_rules": [
                            {"value_path": "id", "target_schema_id": "erp_document_id"}
                        ],
                    },
                ]
            },
            [3],
        ),
        base(
            5,
            "Attach Image",
            {
                "auth": auth,
                "request": {
                    "url": f"{erp_url}/api/invoices/@{{erp_document_id}}/image",
                    "method": "PUT",
                    "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                    "file_key": "file",
                    "file_name": "@{invoice_id}.pdf",
                    "file_content": "#{original_file}",
                },
            },
            [4],
        ),
        base(
            6,
            "Attach URL",
            {
                "auth": auth,
                "request": {
                    "url": f"{erp_url}/api/invoices/@{{erp_document_id}}/url",
                    "method": "POST",
                    "headers": {"Content-Type": "multipart/form-data"},
                    "data": {"attachment[url]": "@{invoice_id}"},
                },
            },
            [4],
        ),
        {
            **base(7, "Handle Responses", {}, [5, 6]),
            "type": "function",
            "config": {"runtime": "python3.12", "code": "elided"},
        },
    ]


async def _prepare(rig: Any, ann_id: int) -> dict[str, str]:
    """Hidden fields hold the token URL and client id, as Coupa chains keep them."""
    async with rig.client() as client:
        content = await client.get_annotation_content(ann_id)
        ops = []
        for schema_id, value in (("order_id", rig.erp.token_url), ("recipient_name", "rossflow")):
            node = datapoint(content, schema_id)
            ops.append({"op": "replace", "id": node["id"], "value": {"content": {"value": value}}})
        await client.content_operations(ann_id, ops)
        content = await client.get_annotation_content(ann_id)
    return {"invoice_id": datapoint(content, "invoice_id")["content"]["value"]}


async def test_production_v1_chain_runs_end_to_end(rig):
    CALLS.clear()
    (ann_id,) = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    values = await _prepare(rig, ann_id)
    rig.erp.configure(
        {
            "require_auth": {"type": "oauth2"},
            "routes": {
                "POST /api/invoices": {"status": 201, "body": {"id": "{{id}}", "status": "draft"}},
                "PUT /api/invoices/*/image": {"status": 200, "body": {"ok": True}},
                "POST /api/invoices/*/url": {"status": 200, "body": {"ok": True}},
            },
        }
    )
    reports = await rig.run(
        hooks(rig.erp.url, 1),
        [ann_id],
        secrets={"client_secret": "secret"},
        code_steps={"Handle Responses": "tests.export.test_v1_hooks_e2e:handle_responses"},
    )
    (report,) = reports
    assert report.outcome == "exported", report.message
    assert "ERP draft ERP-" in report.warnings
    received = rig.erp.received()
    assert [(r["method"], r["path"].split("/")[-1]) for r in received] == [
        ("POST", "invoices"),
        ("PUT", "image"),
        ("POST", "url"),
    ]
    create, image, link = received
    # request.data "#{file_content}" is the body, byte for byte; the token was placed
    assert json.loads(create["body"])["number"] == values["invoice_id"]
    assert create["body"] != "OTHER"  # the other queue's template did not run
    assert create["content_type"] == "application/json"
    # the ERP demands its OAuth2 token: every call being answered 2xx proves it was placed
    assert set(rig.erp.stats()["by_status"]) <= {"200", "201", 200, 201}
    # multipart with the hard-coded boundary parses on the server: header and body agree
    assert image["content_type"] == f"multipart/form-data; boundary={BOUNDARY}"
    (part,) = image["parts"]
    assert part["name"] == "file" and part["filename"] == f"{values['invoice_id']}.pdf"
    assert part["size"] > 0
    assert link["parts"] == [{"name": "attachment[url]", "value": values["invoice_id"]}]
    # one token for the three calls: @{} in auth resolved to the ERP's token endpoint
    assert rig.erp.stats()["token_requests"] == 1
    # the code step got the serverless payload, with the values extracted before it
    (payload,) = CALLS
    assert payload["action"] == "export" and payload["event"] == "annotation_content"
    assert payload["hook"] == "Handle Responses"
    assert (
        datapoint(payload["annotation"]["content"], "api1_status_code")["content"]["value"] == "201"
    )
    content = await rig.content(ann_id)
    assert datapoint(content, "erp_document_id")["content"]["value"].startswith("ERP-")


async def test_code_step_error_message_fails_the_export(rig):
    (ann_id,) = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    await _prepare(rig, ann_id)
    rig.erp.configure(
        {
            "require_auth": {"type": "oauth2"},
            "routes": {"POST /api/invoices": {"status": 200, "body": {"id": "X-1"}}},
        }
    )
    chain = [h for h in hooks(rig.erp.url, 1) if h["name"] not in ("Attach Image", "Attach URL")]
    chain[-1]["run_after"] = [f"{API}/hooks/4"]
    (report,) = await rig.run(
        chain,
        [ann_id],
        secrets={"client_secret": "secret"},
        code_steps={"Handle Responses": "tests.export.test_v1_hooks_e2e:handle_responses"},
    )
    assert report.outcome == "failed_export"
    assert "Handle Responses" in report.message and "draft invoice not created" in report.message


SOAP_PIPELINE = """
name: soap-erp
steps:
  - name: envelope
    type: template
    key: envelope
    format: xml
    template: >-
      <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
      xmlns:inv="urn:erp:invoices"><soapenv:Body><inv:AddInvoice>
      <inv:Number>{{ field.invoice_id }}</inv:Number><inv:Vendor>{{ field.sender_name }}</inv:Vendor>
      </inv:AddInvoice></soapenv:Body></soapenv:Envelope>
  - name: add_invoice
    type: soap
    after: [envelope]
    target: erp
    soap_action: "urn:erp:invoices/AddInvoice"
    export_reference_key: envelope
    request: {url: /api/soap, content: "#{file_content}"}
  - name: keep_id
    type: extract
    after: [add_invoice]
    sources:
      - source_step: add_invoice
        format: xml
        namespaces: {s: "http://schemas.xmlsoap.org/soap/envelope/", inv: "urn:erp:invoices"}
        rules:
          - {xpath: "string(/s:Envelope/s:Body/inv:AddInvoiceResponse/inv:Id)", target_schema_id: erp_document_id, required: true}
"""

SOAP_OK = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:inv="urn:erp:invoices"><s:Body><inv:AddInvoiceResponse><inv:Id>NS-{{id}}</inv:Id>'
    "</inv:AddInvoiceResponse></s:Body></s:Envelope>"
)
SOAP_FAULT = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
    "<faultcode>s:Client</faultcode><faultstring>Vendor is inactive</faultstring>"
    "</s:Fault></s:Body></s:Envelope>"
)


async def test_soap_envelope_is_posted_and_the_reply_read_with_xpath(rig):
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    bad = datapoint(await rig.content(ids[1]), "invoice_id")["content"]["value"]
    fault = {"status": 500, "body": SOAP_FAULT, "content_type": "text/xml"}
    ok = {"status": 200, "body": SOAP_OK, "content_type": "text/xml"}
    rig.erp.configure(
        {"fail_when_body_contains": {f">{bad}<": fault}, "routes": {"POST /api/soap": ok}}
    )
    reports = await rig.run(SOAP_PIPELINE, ids)
    by_outcome = sorted(r.outcome for r in reports)
    assert by_outcome == ["exported", "failed_export"]
    failed = next(r for r in reports if r.outcome == "failed_export")
    assert failed.annotation_id == ids[1]
    assert "SOAP fault s:Client: Vendor is inactive" in failed.message
    received = rig.erp.received()
    assert {r["content_type"] for r in received} == {"text/xml; charset=utf-8"}
    assert {r["headers"]["soapaction"] for r in received} == {'"urn:erp:invoices/AddInvoice"'}
    assert all("<inv:AddInvoice>" in r["body"] for r in received)
    ok = next(r for r in reports if r.outcome == "exported")
    content = await rig.content(ok.annotation_id)
    assert datapoint(content, "erp_document_id")["content"]["value"].startswith("NS-ERP-")
