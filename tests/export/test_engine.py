"""The export engine against real servers: sandbox (Rossum), ERP, SFTP and moto S3."""

from __future__ import annotations

import json

from tests.export.conftest import datapoint, stored_artifacts

ERP_PIPELINE = """
name: erp-json
steps:
  - name: render
    type: template
    outputs:
      - key: invoice_json
        format: json
        template: >-
          {"number": {{ field.invoice_id | tojson }}, "total": {{ field.amount_total | tojson }},
           "vendor": {{ field.sender_name | tojson }},
           "lines": [{% for li in field.line_items %}{"text": {{ li.item_description | tojson }}}
           {%- if not loop.last %},{% endif %}{% endfor %}]}
  - name: post_invoice
    type: rest
    after: [render]
    target: erp
    export_reference_key: invoice_json
    request: {url: /api/invoices, method: POST, content: "#{file_content}"}
    response_payload_reference_key: erp_reply
  - name: keep_erp_id
    type: extract
    after: [post_invoice]
    sources:
      - source_step: post_invoice
        rules:
          - {value_path: body.id, target_schema_id: erp_document_id}
          - {value_path: status_code, target_schema_id: api1_status_code}
  - name: check
    type: evaluate
    after: [keep_erp_id]
    condition: "r.field.api1_status_code != '201'"
    message: "ERP did not create the invoice (HTTP {{ responses.post_invoice.status_code }})"
"""


async def test_all_succeed_and_values_are_written_back(rig):
    ids = rig.sandbox.seed(queue=1, count=12, status="confirmed")
    rig.sandbox.reset_stats()
    reports = await rig.run(ERP_PIPELINE, ids)
    assert {r.outcome for r in reports} == {"exported"}
    assert set((await rig.statuses(ids)).values()) == {"exported"}
    stats = rig.erp.stats()
    assert stats["documents"] == 12 and stats["duplicates"] == 0
    received = rig.erp.received()
    body = json.loads(received[0]["body"])
    assert body["number"].startswith("INV-") and isinstance(body["lines"], list)
    assert all(r["idempotency_key"] for r in received)
    content = await rig.content(ids[0])
    assert datapoint(content, "erp_document_id")["content"]["value"].startswith("ERP-")
    assert datapoint(content, "api1_status_code")["content"]["value"] == "201"
    # one to_status call for the whole batch, never a PATCH confirmed -> exported
    rossum = rig.sandbox.stats()
    by_route = json.dumps(rossum)
    assert "PATCH" not in by_route
    # the rendered file and the reply were stored for operators
    stored = stored_artifacts(rig.state / "artifacts")
    names = {ref.rsplit("/", 1)[1] for ref in stored if ref.startswith(f"{ids[0]}/")}
    assert {"invoice_json.json", "request.body", "response.body"} <= names


async def test_erp_4xx_fails_only_that_annotation_with_the_reply_in_the_message(rig):
    ids = rig.sandbox.seed(queue=1, count=4, status="confirmed")
    items = await _export(rig, ids)
    bad_number = _value(items[1], "invoice_id")
    rig.erp.configure(
        {
            "fail_when_body_contains": {
                bad_number: {"status": 422, "body": {"errors": ["Vendor VAT id is not registered"]}}
            }
        },
        merge=True,
    )
    reports = {r.annotation_id: r for r in await rig.run(ERP_PIPELINE, ids)}
    failed = reports[ids[1]]
    assert failed.outcome == "failed_export"
    assert failed.http_status == 422
    assert "[post_invoice]" in failed.message and "HTTP 422" in failed.message
    assert "Vendor VAT id is not registered" in failed.message
    ann = await rig.annotation(ids[1])
    assert ann["status"] == "failed_export"
    assert "Vendor VAT id is not registered" in ann["messages"][0]["content"]
    others = [reports[i].outcome for i in ids if i != ids[1]]
    assert others == ["exported"] * 3


async def test_erp_5xx_is_retried_then_succeeds(rig):
    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    rig.erp.configure({"script": [{"status": 503, "times": 2}]}, merge=True)
    reports = await rig.run(ERP_PIPELINE, ids, concurrency=1)
    assert [r.outcome for r in reports] == ["exported"] * 3
    stats = rig.erp.stats()
    assert stats["documents"] == 3
    assert stats["requests"] == 5  # two 503s were retried with the same Idempotency-Key


async def test_timeout_fails_with_a_clear_message_or_stays_confirmed(rig):
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    rig.erp.configure({"latency_s": 2.0}, merge=True)
    pipeline = ERP_PIPELINE.replace(
        "    target: erp\n", "    target: erp\n    timeout_s: 0.3\n    retries: 0\n", 1
    ).replace("request: {url: /api/invoices", "request: {url: " + rig.erp.url + "/api/invoices")
    pipeline = pipeline.replace("    target: erp\n", "", 1)
    reports = await rig.run(pipeline, ids[:1])
    # a POST that timed out may have been booked: failed, counted apart (issue 16)
    assert reports[0].outcome == "failed_uncertain"
    assert reports[0].status == "failed_export"
    assert "could not deliver" in reports[0].message
    assert "ReadTimeout" in reports[0].message or "timed out" in reports[0].message.lower()
    kept = await rig.run(pipeline, ids[1:], on_failure="keep_confirmed")
    assert kept[0].outcome == "failed_uncertain" and kept[0].status == "confirmed"
    assert (await rig.statuses(ids[1:]))[ids[1]] == "confirmed"


async def test_template_error_fails_only_that_annotation_naming_template_and_line(rig):
    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    items = await _export(rig, ids)
    bad = _value(items[2], "invoice_id")
    pipeline = f"""
name: broken-template
steps:
  - name: render
    type: template
    outputs:
      - key: invoice_txt
        format: text
        template_multiline:
          - "number {{{{ field.invoice_id }}}}"
          - "{{% if field.invoice_id == '{bad}' %}}{{{{ field.no_such_field.deeper }}}}{{% endif %}}"
"""
    reports = {r.annotation_id: r for r in await rig.run(pipeline, ids)}
    assert reports[ids[2]].outcome == "failed_export"
    message = reports[ids[2]].message
    assert "invoice_txt" in message and "line 2" in message
    assert [reports[i].outcome for i in ids[:2]] == ["exported", "exported"]


async def test_condition_skipped_step_and_chained_rest_call_with_extracted_id(rig):
    ids = rig.sandbox.seed(queue=1, count=4, status="confirmed")
    items = await _export(rig, ids)
    currencies = {i: _value(item, "currency") for i, item in zip(ids, items, strict=True)}
    pipeline = (
        ERP_PIPELINE
        + f"""
  - name: attach_original
    type: rest
    after: [check]
    when: "r.field.currency != '{currencies[ids[0]]}'"
    request:
      url: "{rig.erp.url}/api/invoices/@{{erp_document_id}}/attachments"
      method: POST
      body: multipart
      file_key: document
      request_data: {{kind: original}}
"""
    )
    reports = await rig.run(pipeline, ids)
    assert {r.outcome for r in reports} == {"exported"}
    received = rig.erp.received()
    attachments = [r for r in received if r["path"].endswith("/attachments")]
    expected = [i for i in ids if currencies[i] != currencies[ids[0]]]
    assert len(attachments) == len(expected)
    created = {json.loads(r["body"])["number"]: r for r in received if r["path"] == "/api/invoices"}
    assert len(created) == 4
    for att in attachments:
        assert att["path"].startswith("/api/invoices/ERP-")
        assert "document" in json.dumps(att)  # the multipart field name


async def test_rerun_delivers_nothing_twice(rig):
    ids = rig.sandbox.seed(queue=1, count=5, status="confirmed")
    reports = await rig.run(ERP_PIPELINE, ids, on_failure="keep_confirmed")
    assert {r.outcome for r in reports} == {"exported"}
    # Pretend the status move was lost: the annotations are confirmed again, the ledger remains.
    for ann_id in ids:
        rig.sandbox.force_status(ann_id, "confirmed")
    again = await rig.run(ERP_PIPELINE, ids)
    assert {r.outcome for r in again} == {"exported"}
    assert all("(reused)" in r.message for r in again)
    assert rig.erp.stats()["requests"] == 5


async def test_dry_run_delivers_nothing_and_changes_no_status(rig):
    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    reports = await rig.run(ERP_PIPELINE, ids, dry_run=True)
    assert {r.outcome for r in reports} == {"dry_run"}
    assert rig.erp.stats()["requests"] == 0
    assert set((await rig.statuses(ids)).values()) == {"confirmed"}
    rendered = stored_artifacts(rig.state / "artifacts")[f"{ids[0]}/render/invoice_json.json"]
    assert json.loads(rendered)["number"].startswith("INV-")


async def test_sftp_and_s3_delivery_with_filename_templates(full_rig):
    rig = full_rig
    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    pipeline = """
name: files
steps:
  - name: render
    type: template
    outputs:
      - {key: invoice_xml, format: xml, template: "<Invoice><Number>{{ field.invoice_id }}</Number><Vendor>{{ field.sender_name }}</Vendor></Invoice>"}
  - name: archive
    type: sftp
    after: [render]
    target: archive
    sequences: {seq_1: {digits: 4, start: 1}}
    export_rules:
      - path_to_directory: "/outbound/{currency}"
        export_object_configurations:
          - {type: custom_format, export_reference_key: invoice_xml, filename_template: "{invoice_id}-{seq_1}.xml"}
          - {type: document, filename_template: "{annotation.id}-original"}
          - {type: annotation_content, format: csv, filename_template: "{annotation.id}.csv"}
  - name: lake
    type: s3
    after: [render]
    target: bucket
    export_rules:
      - path_to_directory: "rossum/{year}/{month}"
        export_object_configurations:
          - {type: annotation_content, format: json, filename_template: "{annotation.id}.json"}
"""
    reports = await rig.run(pipeline, ids)
    assert {r.outcome for r in reports} == {"exported"}, [r.message for r in reports]
    files = sorted(p for p in rig.sftp.root.rglob("*") if p.is_file())
    assert len(files) == 9
    xml = [p for p in files if p.suffix == ".xml"]
    assert len(xml) == 3 and all(p.parent.parent.name == "outbound" for p in xml)
    assert sorted(p.stem.rsplit("-", 1)[1] for p in xml) == ["0001", "0002", "0003"]
    assert all(b"<Number>INV-" in p.read_bytes() for p in xml)
    originals = [p for p in files if "-original" in p.name]
    assert originals[0].suffix == ".txt" and originals[0].read_bytes()
    from rossflow.delivery.s3 import list_objects

    keys = [o.key for o in list_objects(rig.s3_bucket, "rossum/")]
    assert len(keys) == 3 and all(k.endswith(".json") for k in keys)
    # a rerun writes nothing new (ledger) and keeps the same sequence numbers
    for ann_id in ids:
        rig.sandbox.force_status(ann_id, "confirmed")
    await rig.run(pipeline, ids)
    assert sorted(p for p in rig.sftp.root.rglob("*") if p.is_file()) == files


async def test_rossum_v1_hook_settings_loaded_verbatim(full_rig):
    rig = full_rig
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    info = rig.sftp
    hooks = [
        {
            "name": "1. Custom format templating",
            "url": "https://acme.rossum.app/api/v1/hooks/101",
            "settings": {
                "export_configs": [
                    {
                        "export_reference_key": "erp_xml",
                        "content_encoding": "utf-8",
                        "file_content_template_multiline": [
                            "<Invoice>",
                            "  <Id>{{ field.invoice_id }}</Id>",
                            "  <Total>{{ field.amount_total|default(0,true) }}</Total>",
                            "</Invoice>",
                        ],
                    }
                ]
            },
        },
        {
            "name": "2. REST API export",
            "url": "https://acme.rossum.app/api/v1/hooks/102",
            "run_after": ["https://acme.rossum.app/api/v1/hooks/101"],
            "settings": {
                "export_reference_key": "erp_xml",
                "request": {
                    "url": rig.erp.url + "/api/invoices",
                    "method": "POST",
                    "headers": {"Content-Type": "application/xml", "X-Api-Key": "{secret.api_key}"},
                    "content": "#{file_content}",
                },
                "response_headers_reference_key": "erp_headers",
                "response_payload_reference_key": "erp_payload",
            },
            "secrets": {"api_key": "k-123456"},
        },
        {
            "name": "3. Data value extractor",
            "url": "https://acme.rossum.app/api/v1/hooks/103",
            "run_after": ["https://acme.rossum.app/api/v1/hooks/102"],
            "settings": {
                "extract": [
                    {
                        "format": "json",
                        "source_reference_key": "erp_headers",
                        "extract_rules": [
                            {"value_path": "status_code", "target_schema_id": "api1_status_code"}
                        ],
                    }
                ]
            },
        },
        {
            "name": "4. Export evaluator",
            "url": "https://acme.rossum.app/api/v1/hooks/104",
            "run_after": ["https://acme.rossum.app/api/v1/hooks/103"],
            "settings": {"condition": "r.field.api1_status_code != '201'"},
        },
        {
            "name": "5. SFTP export",
            "url": "https://acme.rossum.app/api/v1/hooks/105",
            "run_after": ["https://acme.rossum.app/api/v1/hooks/104"],
            "settings": {
                "credentials": {
                    "host": info.host,
                    "port": str(info.port),
                    "type": "sftp",
                    "username": info.username,
                    "known_hosts": info.known_hosts,
                },
                "export_rules": [
                    {
                        "path_to_directory": "/export",
                        "export_object_configurations": [
                            {
                                "type": "custom_format",
                                "filename_template": "{annotation.id}.xml",
                                "export_reference_key": "erp_xml",
                            }
                        ],
                    }
                ],
            },
            "secrets": {"type": "sftp", "password": info.password},
        },
    ]
    reports = await rig.run(hooks, ids)
    assert {r.outcome for r in reports} == {"exported"}, [r.message for r in reports]
    assert all(r["headers"].get("x-api-key") == "k-123456" for r in rig.erp.received())
    exported = sorted((info.root / "export").iterdir())
    assert [p.name for p in exported] == sorted(f"{i}.xml" for i in ids)
    content = await rig.content(ids[0])
    assert datapoint(content, "api1_status_code")["content"]["value"] == "201"
    # the secret never lands in stored artefacts
    stored = stored_artifacts(rig.state / "artifacts")
    assert stored and not [ref for ref, data in stored.items() if b"k-123456" in data]


async def _export(rig, ids):
    async with rig.client() as client:
        return await client.export(1, ids=ids)


def _value(item, schema_id):
    node = datapoint(item["content"], schema_id)
    return node.get("value") if node else None


def test_stages_join_local_steps_to_the_step_that_reaches_out():
    from rossflow.export.run import stages

    local = {"render", "check", "clean", "evaluate_2"}.__contains__
    names = ["render", "post", "check", "upload", "evaluate_2", "clean"]
    assert stages(names, local) == (
        [["render", "post"], ["check", "upload"]],
        ["evaluate_2", "clean"],
    )
    assert stages(["post", "upload"], local) == ([["post"], ["upload"]], [])
    assert stages(["render"], local) == ([], ["render"])
