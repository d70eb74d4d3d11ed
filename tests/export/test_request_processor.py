"""Request Processor (v2 ``stages``) hooks run through the export engine against real servers:
the sandbox (Rossum, incl. document relations), the ERP stand-in (OAuth2 token endpoint,
OAuth1 signature check) and the local SFTP server."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.export.conftest import ExportRig, datapoint

SECRETS = {"client_secret": "secret", "sftp_password": "secret"}


def _api(rig: ExportRig) -> httpx.Client:
    return httpx.Client(
        base_url=rig.sandbox.api_url,
        headers={"Authorization": f"Bearer {rig.sandbox.login()}"},
        timeout=30,
    )


def add_relation(rig: ExportRig, ann_id: int, key: str, name: str, body: bytes, mime: str) -> str:
    """Upload a document and attach it to the annotation as document relation ``key``."""
    with _api(rig) as api:
        doc = api.post("/v1/documents", files={"content": (name, body, mime)}).json()
        api.post(
            "/v1/document_relations",
            json={
                "type": "export",
                "key": key,
                "annotation": f"{rig.sandbox.api_url}/v1/annotations/{ann_id}",
                "documents": [doc["url"]],
            },
        ).raise_for_status()
        return str(doc["url"])


def bearer_auth(erp_url: str) -> dict[str, Any]:
    return {
        "url": f"{erp_url}/oauth/token",
        "method": "POST",
        "content": {
            "grant_type": "client_credentials",
            "client_id": "rossflow",
            "client_secret": "{payload.secrets.client_secret}",
        },
        "content_type": "form",
        "credential_key": "access_token",
    }


def rp_hook(rig: ExportRig) -> dict[str, Any]:
    erp = rig.erp.url
    sftp = rig.sftp
    return {
        "name": "Export Pipeline - Request Processor",
        "type": "function",
        "url": "https://example.rossum.app/api/v1/hooks/1",
        "events": ["annotation_content.export"],
        "settings": {
            "stages": [
                {
                    "get_content": [
                        {
                            "name": "create_draft",
                            "source": "document_relation_content",
                            "query": {"key": {"$eq": "create_draft"}},
                        }
                    ],
                    "call_api": [
                        {
                            "name": "create_draft",
                            "auth": bearer_auth(erp),
                            "request": {
                                "url": erp + "/api/invoices",
                                "method": "POST",
                                "content": "{property.create_draft.content.@}",
                                "content_type": "json",
                                "headers": {
                                    "Accept": "application/json",
                                    "Authorization": "Bearer {token}",
                                },
                            },
                            "response_handlers": [
                                {
                                    "value": {"response": {"$jmespath": "status_code"}},
                                    "target_key": "api1_status_code",
                                    "target_type": "schema_id",
                                },
                                {
                                    "value": {"response.body": {"$jmespath": "id"}},
                                    "target_key": "erp_document_id",
                                    "target_type": "schema_id",
                                },
                                {
                                    "value": {"response.body": {"$jmespath": "id"}},
                                    "target_key": "erp_id",
                                    "target_type": "property",
                                },
                                {
                                    "target_key": "draft_response",
                                    "target_type": "document_relation",
                                },
                            ],
                        }
                    ],
                },
                {
                    "evaluate": [
                        {
                            "name": "created",
                            "condition": {"field.api1_status_code": {"$in": ["200", "201"]}},
                        }
                    ],
                    "call_api": [
                        {
                            "name": "lines",
                            "auth": bearer_auth(erp),
                            "request": {
                                "url": erp + "/api/invoices/{property.erp_id}/lines/{sequence}",
                                "method": "PUT",
                                "content_type": "json",
                                "iterate_over": "field.line_items",
                                "iteration_item_name": "line",
                                "content": {
                                    "text": "{line.item_description.value}",
                                    "amount": "{line.item_amount_total}",
                                    "invoice": "{field.invoice_id.value}",
                                },
                                "headers": {"Authorization": "Bearer {token}"},
                            },
                        }
                    ],
                },
                {
                    "evaluate": [
                        {
                            "name": "only_for_credit_notes",
                            "condition": {"field.document_type.value": {"$eq": "credit_note_x"}},
                        }
                    ],
                    "call_api": [
                        {
                            "name": "never",
                            "request": {"url": erp + "/api/never", "method": "POST"},
                        }
                    ],
                },
                {
                    "call_api": [
                        {
                            "name": "push_to_sftp",
                            "request": {
                                "url": "{payload.base_url}/svc/file-storage-export/api/v1/direct_export",
                                "method": "POST",
                                "headers": {
                                    "Authorization": "Bearer {payload.rossum_authorization_token}"
                                },
                                "content": {
                                    "request_id": "{payload.request_id}",
                                    "timestamp": "{payload.timestamp}",
                                    "hook": "{payload.hook}",
                                    "action": "manual",
                                    "event": "invocation",
                                    "base_url": "{payload.base_url}",
                                    "settings": {
                                        "credentials": {
                                            "host": sftp.host,
                                            "port": sftp.port,
                                            "username": sftp.username,
                                            "type": "sftp",
                                            "sftp_version": 3,
                                            "known_hosts": sftp.known_hosts,
                                        },
                                        "export_rule": {
                                            "path_to_directory": "/upload",
                                            "filename_collision": {"replace": True},
                                        },
                                    },
                                    "secrets": {
                                        "password": "{payload.secrets.sftp_password}",
                                        "type": "sftp",
                                    },
                                    "payload": "{base64(payload)}",
                                    "filename": "invoice_{field.invoice_id.value}",
                                },
                                "content_type": "json",
                            },
                            "response_handlers": [
                                {
                                    "value": {"response": {"$jmespath": "body.path"}},
                                    "target_key": "cost_center",
                                    "target_type": "schema_id",
                                }
                            ],
                        }
                    ]
                },
            ]
        },
    }


async def test_multi_stage_request_processor_end_to_end(full_rig: ExportRig) -> None:
    rig = full_rig
    (rig.sftp.root / "upload").mkdir()
    rig.erp.configure({"require_auth": {"type": "oauth2"}}, merge=True)
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    drafts = {}
    for ann_id in ids:
        drafts[ann_id] = {"invoice-number": f"N-{ann_id}", "lines": 2}
        add_relation(
            rig,
            ann_id,
            "create_draft",
            "create_draft.json",
            json.dumps(drafts[ann_id]).encode(),
            "application/json",
        )

    reports = await rig.run(rp_hook(rig), ids, secrets=SECRETS, concurrency=1)

    assert [r.outcome for r in reports] == ["exported", "exported"], [r.message for r in reports]
    # the skipped stage is reported, not silent
    for report in reports:
        assert "stage 3 skipped by condition 'only_for_credit_notes'" in report.warnings
    received = rig.erp.received()
    paths = [r["path"] for r in received]
    assert "/api/never" not in paths
    # one token for the run (form request with the secret from the Pipeline Secrets block)
    assert rig.erp.stats()["token_requests"] == 1
    creates = [r for r in received if r["path"] == "/api/invoices"]
    assert len(creates) == 2
    for ann_id, report in zip(ids, reports, strict=True):
        content = await rig.content(ann_id)
        erp_id = datapoint(content, "erp_document_id")["content"]["value"]
        assert erp_id.startswith("ERP-")
        assert datapoint(content, "api1_status_code")["content"]["value"] == "201"
        lines = [r for r in received if r["path"].startswith(f"/api/invoices/{erp_id}/lines/")]
        rows = [
            n
            for n in datapoint_rows(content)
            if n  # every line item got its own PUT, numbered by {sequence}
        ]
        assert sorted(r["path"].rsplit("/", 1)[1] for r in lines) == [
            str(i) for i in range(len(rows))
        ]
        invoice_id = datapoint(content, "invoice_id")["content"]["value"]
        # direct_export wrote the original document to SFTP and its reply was handled
        stored = datapoint(content, "cost_center")["content"]["value"]
        assert stored == f"/upload/invoice_{invoice_id}.txt"
        assert (rig.sftp.root / "upload" / f"invoice_{invoice_id}.txt").read_bytes()
        assert report.message  # summary names the delivered steps
    # the reply of create_draft was stored as a document relation
    with _api(rig) as api:
        rels = api.get("/v1/document_relations", params={"annotation": ids[0]}).json()["results"]
        keys = {r["key"] for r in rels}
        assert keys == {"create_draft", "draft_response"}
        resp_doc = next(r for r in rels if r["key"] == "draft_response")["documents"][0]
        assert b"ERP-" in api.get(resp_doc + "/content").content
    # the JSON document fetched with .@ went out as the request body
    first_body = json.loads(creates[0]["body"])
    assert first_body in drafts.values()
    # secrets never reach stored artefacts
    for path in (rig.state / "artifacts").rglob("*"):
        if path.is_file():
            assert b"client_secret=secret" not in path.read_bytes()


def datapoint_rows(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for node in content:
        if node.get("schema_id") == "line_items":
            return list(node.get("children") or [])
        found = datapoint_rows(node.get("children") or [])
        if found:
            return found
    return []
