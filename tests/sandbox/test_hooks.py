"""Checklist 22-24: hook CRUD, payloads, signatures, retries, export hooks, invoke/test."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx

from sandbox.server import SandboxServer
from tests.fixtures.sandbox import HookReceiver
from tests.sandbox.helpers import datapoints, ready, start_confirm, wait_status


def make_hook(
    client: httpx.Client, sandbox: SandboxServer, receiver: HookReceiver, **fields: Any
) -> dict[str, Any]:
    config = {"url": receiver.url + "/hook", **fields.pop("config", {})}
    body = {
        "name": "test hook",
        "queues": [f"{sandbox.api_url}/v1/queues/{fields.pop('queue', 1)}"],
        "events": ["annotation_status"],
        "config": config,
        **fields,
    }
    resp = client.post("/v1/hooks", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_hook_crud(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    hook = make_hook(
        sandbox_client,
        sandbox,
        hook_receiver,
        secrets={"password": "s3cret"},
        settings={"target": "erp"},
        sideload=["queues"],
    )
    for key in (
        "id",
        "url",
        "type",
        "name",
        "queues",
        "run_after",
        "sideload",
        "active",
        "events",
        "config",
        "settings",
        "secrets",
        "token_owner",
        "metadata",
        "modified_at",
    ):
        assert key in hook, key
    assert hook["secrets"] == {}  # write-only
    assert hook["events"] == ["annotation_status.changed"]  # bare event = all its actions
    assert hook["config"]["timeout_s"] == 30 and hook["config"]["retry_count"] == 4
    assert hook["active"] is True and hook["type"] == "webhook"
    url = f"/v1/hooks/{hook['id']}"
    assert sandbox_client.get(f"{url}/secrets_keys").json() == ["password"]
    patched = sandbox_client.patch(url, json={"active": False, "config": {"timeout_s": 5}})
    assert patched.status_code == 200
    assert patched.json()["active"] is False and patched.json()["config"]["timeout_s"] == 5
    assert patched.json()["config"]["url"] == hook["config"]["url"]
    listed = sandbox_client.get("/v1/hooks", params={"queue": 1}).json()
    assert [h["id"] for h in listed["results"]] == [hook["id"]]
    assert sandbox_client.get("/v1/queues/1").json()["hooks"] == [hook["url"]]
    assert sandbox_client.post("/v1/hooks", json={"name": "x", "config": {}}).status_code == 400
    assert sandbox_client.patch(url, json={"config": {"timeout_s": 100}}).status_code == 400
    assert sandbox_client.delete(url).status_code == 204
    assert sandbox_client.get(url).status_code == 404


def test_status_hook_payload_and_signatures(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    secret = "hook-secret"
    hook = make_hook(
        sandbox_client,
        sandbox,
        hook_receiver,
        config={"secret": secret},
        settings={"k": "v"},
        secrets={"pw": "x"},
        token_owner=f"{sandbox.api_url}/v1/users/1",
        sideload=["queues"],
    )
    ann_id = ready(sandbox_client)
    request = hook_receiver.wait_for(1)[0]
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    expected256 = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    expected1 = hmac.new(secret.encode(), request.body, hashlib.sha1).hexdigest()
    assert request.headers["x-rossum-signature-sha256"] == f"sha256={expected256}"
    assert request.headers["x-elis-signature"] == f"sha1={expected1}"
    payload = request.json()
    assert payload["event"] == "annotation_status" and payload["action"] == "changed"
    assert len(payload["request_id"]) == 36
    assert payload["hook"] == hook["url"]
    assert payload["base_url"] == sandbox.url
    assert payload["settings"] == {"k": "v"} and payload["secrets"] == {"pw": "x"}
    ann = payload["annotation"]
    assert ann["id"] == ann_id and ann["status"] == "to_review"
    assert ann["previous_status"] == "importing"
    assert ann["url"] == f"{sandbox.api_url}/v1/annotations/{ann_id}"
    doc = payload["document"]
    assert "annotations" not in doc and doc["original_file_name"] == "invoice.txt"
    assert payload["queues"][0]["id"] == 1
    token = payload["rossum_authorization_token"]
    me = httpx.get(
        f"{sandbox.api_url}/v1/annotations/{ann_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert me.status_code == 200


def test_status_hooks_filtering(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    make_hook(sandbox_client, sandbox, hook_receiver, events=["annotation_status.changed"])
    make_hook(sandbox_client, sandbox, hook_receiver, active=False)
    make_hook(sandbox_client, sandbox, hook_receiver, queue=2)
    make_hook(sandbox_client, sandbox, hook_receiver, events=["upload.created"])
    ann_id = ready(sandbox_client, queue=1)
    hook_receiver.wait_for(1)
    start_confirm(sandbox_client, ann_id)
    received = hook_receiver.wait_for(3)
    time.sleep(0.2)
    statuses = {
        (r.json()["annotation"]["previous_status"], r.json()["annotation"]["status"])
        for r in hook_receiver.requests
    }  # deliveries are concurrent: no order promised
    assert statuses == {
        ("importing", "to_review"),
        ("to_review", "reviewing"),
        ("reviewing", "confirmed"),
    }
    assert len(received) == 3


def test_retries_on_503_then_success(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    make_hook(sandbox_client, sandbox, hook_receiver)
    hook_receiver.reply(503)
    hook_receiver.reply(429)
    ann_id = ready(sandbox_client)
    received = hook_receiver.wait_for(3)
    assert [r.json()["annotation"]["id"] for r in received] == [ann_id] * 3
    sandbox.wait_idle()
    record = sandbox.hook_deliveries()[0]
    assert record["status"] == "completed"
    assert [a["status_code"] for a in record["attempts"]] == [503, 429, 200]


def test_no_retry_on_400_unless_any_non_2xx(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    hook = make_hook(sandbox_client, sandbox, hook_receiver, config={"retry_count": 2})
    hook_receiver.default = (400, {}, {})
    ready(sandbox_client)
    sandbox.wait_idle()
    assert len(hook_receiver.requests) == 1
    sandbox_client.patch(f"/v1/hooks/{hook['id']}", json={"config": {"retry_on_any_non_2xx": True}})
    ready(sandbox_client)
    sandbox.wait_idle()
    assert len(hook_receiver.requests) == 1 + 3
    records = sandbox.hook_deliveries()
    assert records[-1]["status"] == "failed" and len(records[-1]["attempts"]) == 3


def test_transport_error_and_timeout_are_retried(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    sandbox_client.post(
        "/v1/hooks",
        json={
            "name": "dead",
            "queues": [f"{sandbox.api_url}/v1/queues/1"],
            "events": ["annotation_status"],
            "config": {"url": "http://127.0.0.1:9/nothing", "retry_count": 1},
        },
    )
    ready(sandbox_client)
    sandbox.wait_idle()
    record = sandbox.hook_deliveries()[0]
    assert record["status"] == "failed" and len(record["attempts"]) == 2
    assert record["attempts"][0]["error"]


def test_export_hook_success_applies_operations(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    make_hook(sandbox_client, sandbox, hook_receiver, queue=2, events=["annotation_content.export"])
    ann_id = ready(sandbox_client, queue=2)
    content = sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"]
    erp = datapoints(content)["erp_document_id"]
    hook_receiver.reply(
        200,
        {
            "messages": [{"type": "info", "content": "stored"}],
            "operations": [
                {"op": "replace", "id": erp["id"], "value": {"content": {"value": "ERP-77"}}}
            ],
        },
    )
    start_confirm(sandbox_client, ann_id)
    assert sandbox_client.get(f"/v1/annotations/{ann_id}").json()["status"] in (
        "exporting",
        "exported",
    )
    ann = wait_status(sandbox_client, ann_id, "exported")
    assert ann["messages"][0]["content"] == "stored"
    payload = hook_receiver.requests[0].json()
    assert payload["event"] == "annotation_content" and payload["action"] == "export"
    assert payload["updated_datapoints"] == []
    tree = payload["annotation"]["content"]
    assert isinstance(tree, list) and tree[0]["category"] == "section"
    assert datapoints(tree)["amount_total"]["content"]["normalized_value"] == "1210.00"
    after = sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"]
    assert datapoints(after)["erp_document_id"]["content"]["value"] == "ERP-77"


def test_export_hook_failure_and_error_message(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    make_hook(
        sandbox_client,
        sandbox,
        hook_receiver,
        queue=2,
        events=["annotation_content"],
        config={"retry_count": 0},
    )
    first = ready(sandbox_client, queue=2)  # also calls the hook (initialize action)
    hook_receiver.reply(
        200, {"messages": [{"id": "all", "type": "error", "content": "Draft invoice not created."}]}
    )
    start_confirm(sandbox_client, first)
    ann = wait_status(sandbox_client, first, "failed_export")
    assert ann["export_failed_at"] is not None and ann["exported_at"] is None
    assert ann["messages"][0]["content"] == "Draft invoice not created."
    second = ready(sandbox_client, queue=2)
    hook_receiver.reply(500, {"detail": "boom"})
    start_confirm(sandbox_client, second)
    ann = wait_status(sandbox_client, second, "failed_export")
    assert ann["messages"][0]["type"] == "error"
    # retry the export: PATCH to exporting (receiver now answers 200)
    sandbox_client.patch(f"/v1/annotations/{second}", json={"status": "exporting"})
    assert wait_status(sandbox_client, second, "exported")["exported_at"] is not None


def test_run_after_order(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    last = make_hook(
        sandbox_client,
        sandbox,
        hook_receiver,
        queue=2,
        name="last",
        events=["annotation_content.export"],
        config={"url": hook_receiver.url + "/b"},
    )
    first = make_hook(
        sandbox_client,
        sandbox,
        hook_receiver,
        queue=2,
        name="first",
        events=["annotation_content.export"],
        config={"url": hook_receiver.url + "/a"},
    )
    sandbox_client.patch(f"/v1/hooks/{last['id']}", json={"run_after": [first["url"]]})
    ann_id = ready(sandbox_client, queue=2)
    start_confirm(sandbox_client, ann_id)
    wait_status(sandbox_client, ann_id, "exported")
    assert [r.path for r in hook_receiver.requests] == ["/a", "/b"]


def test_async_hook_202_polling(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    make_hook(sandbox_client, sandbox, hook_receiver, queue=2, events=["annotation_content.export"])
    hook_receiver.reply(202, {}, {"Location": "/poll/1"})
    hook_receiver.reply(202, {})
    hook_receiver.reply(201, {"messages": [{"type": "info", "content": "async done"}]})
    ann_id = ready(sandbox_client, queue=2)
    start_confirm(sandbox_client, ann_id)
    ann = wait_status(sandbox_client, ann_id, "exported")
    assert ann["messages"][0]["content"] == "async done"
    assert [(r.method, r.path) for r in hook_receiver.requests] == [
        ("POST", "/hook"),
        ("GET", "/poll/1"),
        ("GET", "/poll/1"),
    ]


def test_hook_test_and_invoke(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    hook = make_hook(sandbox_client, sandbox, hook_receiver, events=["invocation.manual"])
    hook_receiver.reply(200, {"echo": True})
    resp = sandbox_client.post(f"/v1/hooks/{hook['id']}/test", json={"payload": {"x": 1}})
    assert resp.status_code == 200 and resp.json() == {"response": {"echo": True}}
    assert hook_receiver.requests[0].json() == {"x": 1}
    hook_receiver.reply(200, {"result": "ok"})
    inv = sandbox_client.post(f"/v1/hooks/{hook['id']}/invoke", json={"custom": "field"})
    assert inv.status_code == 200 and inv.json() == {"result": "ok"}
    sent = hook_receiver.requests[1].json()
    assert sent["event"] == "invocation" and sent["action"] == "manual"
    assert sent["custom"] == "field"
    other = make_hook(sandbox_client, sandbox, hook_receiver)
    assert sandbox_client.post(f"/v1/hooks/{other['id']}/invoke", json={}).status_code == 400
