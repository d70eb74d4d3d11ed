"""Request Processor (v2 ``stages``) hooks run through the export engine against real servers:
the sandbox (Rossum, incl. document relations), the ERP stand-in (OAuth2 token endpoint,
OAuth1 signature check) and the local SFTP server."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from tests.export.conftest import ExportRig, datapoint, stored_artifacts

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
    stored = stored_artifacts(rig.state / "artifacts")
    assert stored and not [ref for ref, data in stored.items() if b"client_secret=secret" in data]


def datapoint_rows(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for node in content:
        if node.get("schema_id") == "line_items":
            return list(node.get("children") or [])
        found = datapoint_rows(node.get("children") or [])
        if found:
            return found
    return []


# ------------------------------------------------------------------ one-call pipelines


def one_call(request: dict[str, Any], **call: Any) -> dict[str, Any]:
    return {
        "name": "RP",
        "type": "function",
        "events": ["annotation_content.export"],
        "settings": {"stages": [{"call_api": [{"name": "c", "request": request, **call}]}]},
    }


STATUS_HANDLER = {
    "value": {"response": {"$jmespath": "status_code"}},
    "target_key": "api1_status_code",
    "target_type": "schema_id",
}


async def test_oauth1_signed_per_request_and_xml_reply(rig: ExportRig) -> None:
    creds = {"consumer_key": "ck", "consumer_secret": "cs", "token_key": "tk", "token_secret": "ts"}
    rig.erp.configure(
        {
            "require_auth": {"type": "oauth1", **creds},
            "routes": {
                "GET /api/record": {
                    "status": 200,
                    "body": "<r><rec><status>OPEN</status></rec></r>",
                    "content_type": "application/xml",
                }
            },
        },
        merge=True,
    )
    ids = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    auth = {
        "type": "oauth1",
        "consumer_key": "{secret.ck}",
        "consumer_secret": "{secret.cs}",
        "token_key": "{secret.tk}",
        "token_secret": "{secret.ts}",
        "realm": "123_SB1",
        "signature_method": "HMAC-SHA256",
    }
    hook = one_call(
        {
            "url": rig.erp.url + "/api/record",
            "method": "GET",
            "params": {"q": "{field.invoice_id.value}"},
        },
        auth=auth,
        response_handlers=[
            {
                "value": {"response.body": {"$xmlpath": ".//rec/status"}},
                "target_key": "cost_center",
                "target_type": "schema_id",
            }
        ],
    )
    secrets = {"ck": "ck", "cs": "cs", "tk": "tk", "ts": "ts"}
    reports = await rig.run(hook, ids, secrets=secrets)
    assert reports[0].outcome == "exported", reports[0].message
    content = await rig.content(ids[0])
    assert datapoint(content, "cost_center")["content"]["value"] == "OPEN"
    sent = rig.erp.received()
    assert sent[0]["status"] == 200

    # a wrong secret: the ERP rejects the signature; OAuth1 is not retried; non-2xx fails
    ids2 = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    rig.erp.reset()
    reports = await rig.run(hook, ids2, secrets={**secrets, "ts": "wrong"})
    assert reports[0].outcome == "failed_export"
    assert "HTTP 401" in reports[0].message and "compat.non_2xx" in reports[0].message
    assert len(rig.erp.received()) == 1


async def test_oauth2_private_certificate_jwt_assertion(rig: ExportRig) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    rig.erp.configure(
        {"require_auth": {"type": "oauth2"}, "oauth": {"jwt_public_key": public_pem}}, merge=True
    )
    ids = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    hook = one_call(
        {
            "url": rig.erp.url + "/api/invoices",
            "method": "POST",
            "content_type": "json",
            "content": {"n": "{field.invoice_id.value}"},
            "headers": {"Authorization": "Bearer {token}"},
        },
        auth={
            "type": "oauth2_private_certificate",
            "url": rig.erp.url + "/oauth/token",
            "client_id": "rossflow",
            "certificate_id": "cert-1",
            "private_certificate": "{payload.secrets.private_key}",
            "signature_algorithm": "PS256",
        },
        response_handlers=[STATUS_HANDLER],
    )
    reports = await rig.run(hook, ids, secrets={"private_key": private_pem})
    assert reports[0].outcome == "exported", reports[0].message
    assertion = rig.erp.state.last_assertion
    assert assertion["header"]["alg"] == "PS256" and assertion["header"]["kid"] == "cert-1"
    assert assertion["claims"]["scope"] == ["rest_webservices"]
    assert assertion["claims"]["aud"] == rig.erp.url + "/oauth/token"


async def test_bearer_401_drops_the_token_and_retries_once(rig: ExportRig) -> None:
    rig.erp.configure({"require_auth": {"type": "oauth2"}}, merge=True)
    ids = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    hook = one_call(
        {
            "url": rig.erp.url + "/api/invoices",
            "method": "POST",
            "content_type": "form",
            "content": {"attachment[url]": "{payload.annotation.url}"},
            "headers": {"Authorization": "Bearer {token}"},
        },
        auth=bearer_auth(rig.erp.url),
        response_handlers=[STATUS_HANDLER],
    )
    rig.erp.configure(
        {"script": [{"status": 401, "times": 1, "path": "/api/invoices"}]}, merge=True
    )
    reports = await rig.run(hook, ids, secrets=SECRETS)
    assert reports[0].outcome == "exported", reports[0].message
    assert rig.erp.stats()["token_requests"] == 2
    statuses = [r["status"] for r in rig.erp.received()]
    assert statuses == [401, 201]
    assert rig.erp.received()[1]["content_type"] == "application/x-www-form-urlencoded"


async def test_non_2xx_fails_after_handlers_ran_unless_compat_record(rig: ExportRig) -> None:
    rig.erp.configure(
        {"routes": {"/api/invoices": {"status": 422, "body": {"error": "VAT id unknown"}}}},
        merge=True,
    )
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    hook = one_call(
        {"url": rig.erp.url + "/api/invoices", "method": "POST", "content": "raw text"},
        response_handlers=[STATUS_HANDLER],
    )
    reports = await rig.run(hook, ids[:1])
    assert reports[0].outcome == "failed_export"
    assert "HTTP 422" in reports[0].message and "VAT id unknown" in reports[0].message
    assert "[RP/stage-1/call_api:c]" in reports[0].message
    content = await rig.content(ids[0])
    assert datapoint(content, "api1_status_code")["content"]["value"] == "422"
    assert rig.erp.received()[0]["body"] == "raw text"

    reports = await rig.run({"hooks": [hook], "compat": {"non_2xx": "record"}}, ids[1:])
    assert reports[0].outcome == "exported"
    assert "HTTP 422 recorded" in reports[0].warnings


async def test_unresolved_placeholder_fails_naming_it_or_is_skipped_by_compat(
    rig: ExportRig,
) -> None:
    ids = rig.sandbox.seed(queue=1, count=3, status="confirmed")
    hook = one_call(
        {
            "url": rig.erp.url + "/api/invoices",
            "method": "POST",
            "headers": {"X-Key": "{payload.secrets.api_key}"},
        }
    )
    reports = await rig.run(hook, ids[:1])
    assert reports[0].outcome == "failed_export"
    assert "{payload.secrets.api_key}" in reports[0].message
    assert "settings.stages[0].call_api[0].request" in reports[0].message
    assert rig.erp.received() == []

    reports = await rig.run(
        {"hooks": [hook], "compat": {"unresolved_placeholder": "skip_call"}}, ids[1:2]
    )
    assert reports[0].outcome == "exported"
    assert "call abandoned (compat skip_call)" in reports[0].warnings
    assert rig.erp.received() == []

    reports = await rig.run({"hooks": [hook], "compat": {"single_generic_message": True}}, ids[2:])
    assert reports[0].message.startswith(
        "[RP/stage-1/call_api:c] Some exception occurred during during export pipeline"
    )


async def test_timeout_default_fails_and_ignore_timeout_skips(rig: ExportRig) -> None:
    rig.erp.configure({"latency_s": 1.5}, merge=True)
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    request = {"url": rig.erp.url + "/api/slow", "method": "POST", "timeout": 0.3}
    reports = await rig.run(one_call(request), ids[:1])
    assert reports[0].outcome == "failed_uncertain"  # annotation status: failed_export
    assert (await rig.statuses(ids[:1])) == {ids[0]: "failed_export"}
    assert "timed out after 0.3 s" in reports[0].message
    # the POST reached the ERP: it may have booked it (issue 14: say so)
    assert "outcome unknown" in reports[0].message
    assert f"whether annotation {ids[0]} was processed" in reports[0].message
    reports = await rig.run(one_call({**request, "ignore_timeout": True}), ids[1:])
    assert reports[0].outcome == "exported"
    assert "timed out" in reports[0].warnings and "ignore_timeout" in reports[0].warnings


async def test_a_5xx_says_outcome_unknown_and_a_4xx_not_delivered(rig: ExportRig) -> None:
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    request = {"url": rig.erp.url + "/api/invoices", "method": "POST"}
    rig.erp.configure({"default": {"status": 503, "body": {"error": "busy"}, "books": True}})
    reports = await rig.run(one_call(request), ids[:1])
    assert reports[0].outcome == "failed_uncertain", reports[0].message
    assert "outcome unknown" in reports[0].message and "HTTP 503" in reports[0].message
    rig.erp.configure({"default": {"status": 422, "body": {"error": "bad VAT"}}})
    reports = await rig.run(one_call(request), ids[1:])
    assert reports[0].outcome == "failed_export"
    assert "not delivered" in reports[0].message and "outcome unknown" not in reports[0].message


async def test_parent_relation_content_iterated_as_multipart_with_priority_handlers(
    rig: ExportRig,
) -> None:
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    parent, child = ids
    with _api(rig) as api:
        api.post(
            "/v1/relations",
            json={
                "type": "attachment",
                "parent": f"{rig.sandbox.api_url}/v1/annotations/{parent}",
                "annotations": [f"{rig.sandbox.api_url}/v1/annotations/{child}"],
            },
        ).raise_for_status()
        child_doc = api.get(f"/v1/annotations/{child}").json()["document"]
        child_bytes = api.get(child_doc + "/content").content
    hook = {
        "name": "RP",
        "settings": {
            "stages": [
                {
                    "get_content": [
                        {"name": "attachments", "source": "parent_relation_content", "query": {}},
                        {
                            "name": "meta",
                            "source": "explicit",
                            "query": ["{payload.annotation.id}", "{field.invoice_id.value}"],
                        },
                    ],
                    "call_api": [
                        {
                            "name": "upload",
                            "request": {
                                "url": rig.erp.url + "/api/attachments/{property.meta[0]}",
                                "method": "POST",
                                "iterate_over": "property.attachments",
                                "content_type": "multipart",
                                "content": {
                                    "attachment[file]": [
                                        "{item.document.original_file_name}",
                                        "{item.content.@}",
                                    ],
                                    "attachment[intent]": "Supplier",
                                },
                            },
                            "priority_response_handlers": [
                                {
                                    "condition": {"response.status_code": {"$eq": 500}},
                                    "target_type": "schema_id",
                                    "target_key": "cost_center",
                                    "value": {"response": {"$jmespath": "'server error'"}},
                                },
                                {
                                    "condition": {"found_value": {"$exists": True, "$ne": ""}},
                                    "target_type": "schema_id",
                                    "target_key": "cost_center",
                                    "value": {"response.body": {"$jmespath": "id"}},
                                },
                                {
                                    "target_type": "schema_id",
                                    "target_key": "api1_status_code",
                                    "value": {"response": {"$jmespath": "'never'"}},
                                },
                            ],
                        }
                    ],
                }
            ]
        },
    }
    reports = await rig.run(hook, [parent])
    assert reports[0].outcome == "exported", reports[0].message
    sent = rig.erp.received()
    assert len(sent) == 1 and sent[0]["path"] == f"/api/attachments/{parent}"
    assert sent[0]["content_type"].startswith("multipart/form-data")
    content = await rig.content(parent)
    assert datapoint(content, "cost_center")["content"]["value"].startswith("ERP-")
    # the first matching priority handler stopped the chain
    assert datapoint(content, "api1_status_code")["content"]["value"] != "never"
    # the child's document was fetched through .@ and uploaded under its own name
    parts = {p["name"]: p for p in sent[0]["parts"]}
    upload = parts["attachment[file]"]
    assert upload["sha256_prefix"] == hashlib.sha256(child_bytes).hexdigest()[:16]
    assert upload["filename"] and upload["size"] == len(child_bytes)
    assert parts["attachment[intent]"]["value"] == "Supplier"


def direct_export_hook(credentials: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    return one_call(
        {
            "url": "{payload.base_url}/svc/file-storage-export/api/v1/direct_export",
            "method": "POST",
            "headers": {"Authorization": "Bearer {payload.rossum_authorization_token}"},
            "content_type": "json",
            "content": {
                "request_id": "{payload.request_id}",
                "settings": {
                    "credentials": credentials,
                    "export_rule": {
                        "path_to_directory": "/in",
                        "filename_collision": {"replace": True},
                    },
                },
                "secrets": secrets,
                "payload": "{base64(payload)}",
                "filename": "doc_{payload.annotation.id}",
            },
        },
        response_handlers=[STATUS_HANDLER],
    )


async def test_direct_export_to_s3(rig: ExportRig, s3_server: Any, s3_bucket: Any) -> None:
    ids = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    hook = direct_export_hook(
        {
            "type": "s3",
            "bucket_name": s3_bucket.bucket_name,
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
        },
        {"access_key_id": "{secret.key_id}", "secret_access_key": "{secret.key}"},
    )
    secrets = {"key_id": s3_server.access_key_id, "key": s3_server.secret_access_key}
    reports = await rig.run(hook, ids, secrets=secrets)
    assert reports[0].outcome == "exported", reports[0].message
    with _api(rig) as api:
        doc_url = api.get(f"/v1/annotations/{ids[0]}").json()["document"]
        original = api.get(doc_url + "/content").content
    obj = s3_server.boto3_client().get_object(
        Bucket=s3_bucket.bucket_name, Key=f"in/doc_{ids[0]}.txt"
    )
    assert obj["Body"].read() == original
    content = await rig.content(ids[0])
    assert datapoint(content, "api1_status_code")["content"]["value"] == "200"


async def test_a_rerun_reuses_recorded_replies_and_sends_nothing_twice(rig: ExportRig) -> None:
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    hook = one_call(
        {
            "url": rig.erp.url + "/api/invoices",
            "method": "POST",
            "content_type": "json",
            "content": {"number": "{field.invoice_id.value}"},
        },
        response_handlers=[
            STATUS_HANDLER,
            {
                "value": {"response.body": {"$jmespath": "id"}},
                "target_key": "erp_document_id",
                "target_type": "schema_id",
            },
        ],
    )
    first = await rig.run(hook, ids)
    assert [r.outcome for r in first] == ["exported"] * 2
    assert rig.erp.stats()["requests"] == 2
    erp_ids = [datapoint(await rig.content(i), "erp_document_id")["content"]["value"] for i in ids]
    # the same annotations again (e.g. a Prefect retry of the step after a crash)
    for ann_id in ids:
        rig.sandbox.force_status(ann_id, "confirmed")
    again = await rig.run(hook, ids)
    assert [r.outcome for r in again] == ["exported"] * 2
    assert rig.erp.stats()["requests"] == 2  # nothing sent twice
    assert [
        datapoint(await rig.content(i), "erp_document_id")["content"]["value"] for i in ids
    ] == erp_ids


async def test_several_writes_to_one_field_collapse_like_rossum_with_a_warning(
    rig: ExportRig,
) -> None:
    ids = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    hook = {
        "name": "RP",
        "settings": {
            "stages": [
                {
                    "get_content": [
                        {"name": "parts", "source": "explicit", "query": ["a", "b"]},
                    ],
                    "call_api": [
                        {
                            "name": "each",
                            "request": {
                                "url": rig.erp.url + "/api/parts/{part}",
                                "method": "POST",
                                "iterate_over": "property.parts",
                                "iteration_item_name": "part",
                                "content_type": "json",
                                "content": {"part": "{part}", "n": "{sequence}"},
                            },
                            "response_handlers": [
                                {
                                    "value": {"response.body": {"$jmespath": "id"}},
                                    "target_key": "erp_document_id",
                                    "target_type": "schema_id",
                                }
                            ],
                        }
                    ],
                }
            ]
        },
    }
    reports = await rig.run(hook, ids)
    assert reports[0].outcome == "exported", reports[0].message
    sent = rig.erp.received()
    assert [(r["path"], r["json"]) for r in sent] == [
        ("/api/parts/a", {"part": "a", "n": 0}),
        ("/api/parts/b", {"part": "b", "n": 1}),
    ]
    stored = datapoint(await rig.content(ids[0]), "erp_document_id")["content"]["value"]
    assert stored == str([r["document_id"] for r in sent])
    assert "2 writes to 'erp_document_id'" in reports[0].warnings


async def test_relation_sources_regex_queries_and_explicit(rig: ExportRig) -> None:
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    ann, other = ids
    for key, body in (
        ("attachment_email_attachments_12345678", b"first"),
        ("attachment_email_attachments_12345678_1", b"second"),
        ("unrelated", b"nope"),
    ):
        add_relation(rig, ann, key, f"{key}.txt", body, "text/plain")
    with _api(rig) as api:
        api.post(
            "/v1/relations",
            json={
                "type": "duplicate",
                "annotations": [
                    f"{rig.sandbox.api_url}/v1/annotations/{ann}",
                    f"{rig.sandbox.api_url}/v1/annotations/{other}",
                ],
            },
        ).raise_for_status()
    hook = {
        "name": "RP",
        "settings": {
            "stages": [
                {
                    "get_content": [
                        {
                            "name": "attachments",
                            "source": "document_relation_content",
                            "query": {
                                "key": {
                                    "$regex": "^attachment_email_attachments_\\d{8,10}(?:_\\d+)?$"
                                }
                            },
                        },
                        {
                            "name": "rel",
                            "source": "document_relation",
                            "query": {"key": {"$eq": "unrelated"}},
                        },
                        {
                            "name": "dups",
                            "source": "relation_content",
                            "query": {"type": "duplicate"},
                        },
                        {"name": "none", "source": "parent_relation", "query": {}},
                    ],
                    "call_api": [
                        {
                            "name": "upload",
                            "request": {
                                "url": rig.erp.url + "/api/att",
                                "method": "POST",
                                "iterate_over": "property.attachments",
                                "content_type": "files",
                                "content": {
                                    "file": ["{item.original_file_name}", "{item.content.@}"]
                                },
                                "headers": {
                                    "X-Rel": "{property.rel.key}",
                                    "X-Dups": "{property.dups[1].document.original_file_name}",
                                    "X-None": "{property.none}",
                                },
                            },
                        }
                    ],
                }
            ]
        },
    }
    reports = await rig.run(hook, [ann])
    assert reports[0].outcome == "exported", reports[0].message
    sent = rig.erp.received()
    names = sorted(p["filename"] for r in sent for p in r["parts"])
    assert names == [
        "attachment_email_attachments_12345678.txt",
        "attachment_email_attachments_12345678_1.txt",
    ]
    assert {r["parts"][0]["size"] for r in sent} == {len(b"first"), len(b"second")}
    headers = sent[0]["headers"]
    assert headers["x-rel"] == "unrelated"
    assert headers["x-dups"] == "invoice_2.txt"
    assert headers["x-none"] == "[]"  # no match gives [] (Rossum's shape rule)
