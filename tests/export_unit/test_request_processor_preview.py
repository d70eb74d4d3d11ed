"""``rossflow render`` for Request Processor steps: offline, markers for run-time values."""

from __future__ import annotations

from typing import Any

from rossflow.export.loading import load_pipeline
from rossflow.export.preview import preview

ITEM: dict[str, Any] = {
    "url": "https://acme.rossum.app/api/v1/annotations/7",
    "status": "confirmed",
    "document": {
        "url": "https://acme.rossum.app/api/v1/documents/9",
        "file_name": "scan.pdf",
        "file": "https://acme.rossum.app/api/v1/documents/9/content",
    },
    "content": [
        {
            "category": "section",
            "schema_id": "s",
            "children": [
                {
                    "category": "datapoint",
                    "schema_id": "base",
                    "value": "https://erp.example/",
                    "type": "string",
                },
                {"category": "datapoint", "schema_id": "status", "value": "201", "type": "string"},
            ],
        }
    ],
}

AUTH = {
    "url": "{field.base.value}oauth/token",
    "method": "POST",
    "content": {"grant_type": "client_credentials", "client_secret": "{payload.secrets.cs}"},
    "content_type": "form",
    "credential_key": "access_token",
}


def test_render_shows_token_request_request_with_markers_and_masks_secrets() -> None:
    hook = {
        "name": "RP",
        "settings": {
            "stages": [
                {
                    "get_content": [
                        {
                            "name": "draft",
                            "source": "document_relation_content",
                            "query": {"key": {"$eq": "d"}},
                        }
                    ],
                    "call_api": [
                        {
                            "name": "create",
                            "auth": AUTH,
                            "request": {
                                "url": "{field.base.value}api/invoices",
                                "method": "POST",
                                "content": "{property.draft.content.@}",
                                "content_type": "json",
                                "headers": {"Authorization": "Bearer {token}"},
                            },
                        }
                    ],
                },
                {
                    "evaluate": [
                        {"name": "ok", "condition": {"field.status.value": {"$in": ["201"]}}}
                    ],
                    "call_api": [
                        {
                            "name": "scan",
                            "auth": AUTH,
                            "request": {
                                "url": "{field.base.value}api/invoices/{property.erp_id}/image_scan",
                                "method": "PUT",
                                "content_type": "files",
                                "content": {
                                    "file": [
                                        "{payload.document.original_file_name}",
                                        "{payload.document.content.@}",
                                    ]
                                },
                                "headers": {"Authorization": "Bearer {token}"},
                            },
                        }
                    ],
                },
            ]
        },
    }
    hook["settings"]["stages"][0]["call_api"][0]["response_handlers"] = [
        {
            "target_type": "property",
            "target_key": "erp_id",
            "value": {"response.body": {"$jmespath": "id"}},
        }
    ]
    entries = {
        e["step"]: e for e in preview(load_pipeline(hook), ITEM, secrets={"cs": "TOPSECRET"})
    }
    create = entries["RP/stage-1/call_api:create"]
    assert create["request"].startswith("POST https://erp.example/api/invoices")
    assert "Authorization: Bearer <token from auth>" in create["request"]
    assert "auth: POST https://erp.example/oauth/token" in create["note"]
    assert "client_secret=***" in create["note"] and "TOPSECRET" not in create["note"]
    assert b"property.draft.content" in create["body"]
    assert "true" in entries["RP/stage-2/evaluate"]["note"]
    scan = entries["RP/stage-2/call_api:scan"]
    assert "api/invoices/<property.erp_id>/image_scan" in scan["request"]
    assert b'filename="scan.pdf"' in scan["body"]
    assert b"<content of https://acme.rossum.app/api/v1/documents/9/content>" in scan["body"]
    assert "read from Rossum at run time" in entries["RP/stage-1/get_content"]["note"]
