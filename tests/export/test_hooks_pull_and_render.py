"""``rossflow hooks pull`` against the sandbox, the pulled file run as it is, and ``render``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from rossflow.cli import main
from tests.export.conftest import datapoint

SECRET = "pulled-secret-value-123"


def _create(client: httpx.Client, hook: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/hooks", json=hook)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _seed_hooks(sandbox_client: httpx.Client, api_url: str, erp_url: str) -> dict[str, Any]:
    queue = f"{api_url}/v1/queues/1"
    ext = {"url": "https://elis.rest-api-export.rossum-ext.app/"}
    render = _create(
        sandbox_client,
        {
            "name": "Render JSON",
            "events": ["annotation_content.export"],
            "queues": [queue],
            "config": ext,
            "settings": {
                "export_configs": [
                    {
                        "export_reference_key": "inv",
                        "file_content_template": '{"number": "{{ field.invoice_id }}"}',
                    }
                ]
            },
        },
    )
    send = _create(
        sandbox_client,
        {
            "name": "Send to ERP",
            "events": ["annotation_content.export"],
            "queues": [queue],
            "run_after": [render["url"]],
            "config": ext,
            "settings": {
                "export_reference_key": "inv",
                "request": {
                    "url": f"{erp_url}/api/invoices",
                    "method": "POST",
                    "headers": {
                        "Content-Type": "application/json",
                        "X-Api-Key": "{secret.erp_key}",
                    },
                    "data": "#{file_content}",
                },
                "response_payload_reference_key": "erp_reply",
            },
            "secrets": {"erp_key": SECRET},
        },
    )
    _create(
        sandbox_client,
        {
            "name": "Check vendor",
            "type": "function",
            "events": ["annotation_content.export"],
            "queues": [queue],
            "run_after": [send["url"]],
            "config": {"runtime": "python3.12", "code": "def rossum_hook_request_handler(p): ..."},
            "settings": {"vendor_list": "a,b"},
        },
    )
    _create(
        sandbox_client,
        {
            "name": "Validation on update",
            "events": ["annotation_content.updated"],
            "queues": [queue],
            "config": ext,
            "settings": {},
        },
    )
    return send


def test_pull_writes_a_file_that_renders_and_runs(
    sandbox, sandbox_client, erp_server, tmp_path: Path, capsys
) -> None:
    _seed_hooks(sandbox_client, sandbox.api_url, erp_server.url)
    out = tmp_path / "queue-1.hooks.json"
    code = main(
        [
            "hooks",
            "pull",
            "--queue",
            "1",
            "--out",
            str(out),
            "--rossum-url",
            sandbox.api_url,
            "--username",
            sandbox.username,
            "--password",
            sandbox.password,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    text = out.read_text()
    assert SECRET not in text
    data = json.loads(text)
    assert [h["name"] for h in data["hooks"]] == ["Render JSON", "Send to ERP", "Check vendor"]
    assert data["pipeline_secrets"] == ["erp_key"]
    assert data["code_steps"] == {"Check vendor": None}
    assert "Validation on update" in err and "erp_key" in err

    # render the pulled file as it is, with the secret from a file
    item = {
        "url": f"{sandbox.api_url}/v1/annotations/5",
        "document": {"url": f"{sandbox.api_url}/v1/documents/5", "file_name": "a.pdf"},
        "content": [
            {
                "category": "section",
                "schema_id": "s",
                "children": [
                    {"category": "datapoint", "schema_id": "invoice_id", "value": "INV-5"}
                ],
            }
        ],
    }
    saved = tmp_path / "item.json"
    saved.write_text(json.dumps(item))
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"erp_key={SECRET}\n")
    code = main(["render", str(out), "--from-json", str(saved), "--secrets", str(secrets)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "WARNING: hook 'Check vendor': serverless function left out on purpose" in captured.out
    assert f"-- request: POST {erp_server.url}/api/invoices" in captured.out
    assert "X-Api-Key: ***" in captured.out and SECRET not in captured.out
    assert '{"number": "INV-5"}' in captured.out


async def test_pulled_file_runs_in_the_engine(rig, sandbox_client, tmp_path: Path, capsys) -> None:
    _seed_hooks(sandbox_client, rig.sandbox.api_url, rig.erp.url)
    out = tmp_path / "pulled.json"
    assert (
        await asyncio.to_thread(
            main,
            [
                "hooks",
                "pull",
                "--queue",
                "1",
                "--out",
                str(out),
                "--rossum-url",
                rig.sandbox.api_url,
                "--username",
                rig.sandbox.username,
                "--password",
                rig.sandbox.password,
            ],
        )
        == 0
    )
    rig.erp.configure({"require_auth": {"type": "api_key", "header": "X-Api-Key", "value": SECRET}})
    (ann_id,) = rig.sandbox.seed(queue=1, count=1, status="confirmed")
    (report,) = await rig.run(json.loads(out.read_text()), [ann_id], secrets={"erp_key": SECRET})
    assert report.outcome == "exported", report.message
    (received,) = rig.erp.received()
    number = datapoint(await rig.content(ann_id), "invoice_id")["content"]["value"]
    assert json.loads(received["body"]) == {"number": number}


def test_render_refuses_a_bad_config_in_one_line(tmp_path: Path, capsys) -> None:
    hooks = [
        {
            "id": 1,
            "url": "https://acme.rossum.app/api/v1/hooks/1",
            "name": "Render",
            "events": ["annotation_content.export"],
            "settings": {"export_configs": [{"export_id": "", "file_content_template": "x"}]},
        },
        {
            "id": 2,
            "name": "Handle",
            "type": "function",
            "events": ["annotation_content.export"],
            "settings": {},
            "config": {"runtime": "python3.12"},
        },
    ]
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps(hooks))
    code = main(["render", str(path), "--from-json", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert "hook 'Render': settings.export_configs[0].export_id" in line
    assert "hook 'Handle' is a Rossum serverless function" in line


def test_render_previews_auth_chained_requests_and_uploads(tmp_path: Path, capsys) -> None:
    api = "https://acme.rossum.app/api/v1"
    auth = {
        "url": "@{token_url}",
        "data": {"grant_type": "client_credentials", "client_secret": "{secret.client_secret}"},
    }
    hooks = [
        {
            "id": 1,
            "url": f"{api}/hooks/1",
            "name": "Render",
            "settings": {
                "export_configs": [
                    {
                        "export_reference_key": "inv",
                        "file_content_template": "{{ field.invoice_id }}",
                    }
                ]
            },
        },
        {
            "id": 2,
            "url": f"{api}/hooks/2",
            "name": "Create",
            "run_after": [f"{api}/hooks/1"],
            "settings": {
                "export_reference_key": "inv",
                "auth": auth,
                "request": {"url": "https://erp.example/api", "data": "#{file_content}"},
                "response_payload_reference_key": "reply",
            },
        },
        {
            "id": 3,
            "url": f"{api}/hooks/3",
            "name": "Parse",
            "run_after": [f"{api}/hooks/2"],
            "settings": {
                "extract": [
                    {
                        "source_reference_key": "reply",
                        "extract_rules": [{"value_path": "id", "target_schema_id": "erp_id"}],
                    }
                ]
            },
        },
        {
            "id": 4,
            "url": f"{api}/hooks/4",
            "name": "Submit",
            "run_after": [f"{api}/hooks/3"],
            "settings": {
                "auth": auth,
                "request": {"url": "https://erp.example/api/@{erp_id}/submit", "method": "PUT"},
            },
        },
        {
            "id": 5,
            "url": f"{api}/hooks/5",
            "name": "Archive",
            "run_after": [f"{api}/hooks/1"],
            "settings": {
                "credentials": {"type": "sftp", "host": "sftp.example", "username": "u"},
                "export_rules": [
                    {
                        "path_to_directory": "/out",
                        "export_object_configurations": [
                            {
                                "type": "custom_format",
                                "export_reference_key": "inv",
                                "filename_template": "{annotation.id}.txt",
                            }
                        ],
                    }
                ],
            },
        },
    ]
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps(hooks))
    item = {
        "url": f"{api}/annotations/42",
        "document": {"url": f"{api}/documents/42", "file_name": "a.pdf"},
        "content": [
            {
                "category": "section",
                "schema_id": "s",
                "children": [
                    {"category": "datapoint", "schema_id": "invoice_id", "value": "INV-42"},
                    {"category": "datapoint", "schema_id": "token_url", "value": "https://idp/t"},
                ],
            }
        ],
    }
    saved = tmp_path / "item.json"
    saved.write_text(json.dumps(item))
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"client_secret": "very-secret-1"}))
    code = main(["render", str(path), "--from-json", str(saved), "--secrets", str(secrets)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "WARNING: hook 'Create': non-2xx replies now fail the export" in out
    assert "-- auth token request: POST https://idp/t" in out
    assert "grant_type=client_credentials&client_secret=***" in out
    assert "very-secret-1" not in out
    assert "Authorization: Bearer <token from https://idp/t>" in out
    assert "-- request: PUT https://erp.example/api/<unresolved erp_id: from the reply of" in out
    assert "-- upload custom_format to sftp://u@sftp.example:22/out/42.txt" in out
