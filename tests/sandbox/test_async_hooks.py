"""Rossum's asynchronous hook framework in the sandbox (export hooks, issue 12).

202 + ``Location`` is polled at the configured interval until 201; 408/429/5xx polls are tolerated;
any other poll failure or exceeding the polling time retries the original call (same body);
``config.max_polling_time_s`` is ignored for ``annotation_content.export`` (Rossum uses 300 s,
the sandbox its ``hook_max_polling_time_s`` setting); the 201 body's operations are applied and
an ``error`` message sends the annotation to ``failed_export``; ``PATCH exporting`` retries.
"""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.server import SandboxServer
from tests.fixtures.sandbox import HookReceiver
from tests.sandbox.helpers import datapoints, ready, start_confirm, wait_status


def export_hook(
    client: httpx.Client, sandbox: SandboxServer, receiver: HookReceiver, **config: Any
) -> dict[str, Any]:
    body = {
        "name": "export",
        "queues": [f"{sandbox.api_url}/v1/queues/2"],
        "events": ["annotation_content.export"],
        "config": {"url": receiver.url + "/hook", "secret": "s", **config},
    }
    resp = client.post("/v1/hooks", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_poll_errors_are_tolerated_then_201_is_the_result(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    export_hook(sandbox_client, sandbox, hook_receiver)
    ann_id = ready(sandbox_client, queue=2)
    erp = datapoints(sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"])[
        "erp_document_id"
    ]
    hook_receiver.reply(202, {}, {"Location": "/jobs/1"})
    hook_receiver.reply(503, {"detail": "busy"})
    hook_receiver.reply(202, {})
    op = {"op": "replace", "id": erp["id"], "value": {"content": {"value": "ERP-1"}}}
    hook_receiver.reply(201, {"messages": [{"type": "info", "content": "ok"}], "operations": [op]})
    start_confirm(sandbox_client, ann_id)
    ann = wait_status(sandbox_client, ann_id, "exported")
    assert ann["messages"][0]["content"] == "ok"
    assert [(r.method, r.path) for r in hook_receiver.requests] == [
        ("POST", "/hook"),
        ("GET", "/jobs/1"),
        ("GET", "/jobs/1"),
        ("GET", "/jobs/1"),
    ]
    after = sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"]
    assert datapoints(after)["erp_document_id"]["content"]["value"] == "ERP-1"
    (record,) = sandbox.hook_deliveries()
    assert record["attempts"][0]["polls"] == 3


def test_poll_failure_retries_the_original_call(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    export_hook(sandbox_client, sandbox, hook_receiver, retry_count=2)
    ann_id = ready(sandbox_client, queue=2)
    hook_receiver.reply(202, {}, {"Location": "/jobs/1"})
    hook_receiver.reply(404, {"detail": "unknown job"})  # a polling failure
    hook_receiver.reply(202, {}, {"Location": "/jobs/2"})
    hook_receiver.reply(201, {"messages": []})
    start_confirm(sandbox_client, ann_id)
    wait_status(sandbox_client, ann_id, "exported")
    posts = [r for r in hook_receiver.requests if r.method == "POST"]
    assert len(posts) == 2
    assert posts[0].body == posts[1].body  # the same call, same request_id
    assert (
        posts[0].headers["x-rossum-signature-sha256"]
        == posts[1].headers["x-rossum-signature-sha256"]
    )


def test_max_polling_time_exceeded_retries_then_fails_export(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    sandbox.settings(hook_max_polling_time_s=0.3)
    # the hook's own max_polling_time_s is ignored for this event (as in Rossum)
    export_hook(sandbox_client, sandbox, hook_receiver, retry_count=1, max_polling_time_s=3600)
    hook_receiver.default = (202, {}, {"Location": "/jobs/forever"})
    ann_id = ready(sandbox_client, queue=2)
    start_confirm(sandbox_client, ann_id)
    ann = wait_status(sandbox_client, ann_id, "failed_export", timeout=15)
    assert ann["messages"][0]["type"] == "error"
    assert "408" in ann["messages"][0]["content"]
    assert len([r for r in hook_receiver.requests if r.method == "POST"]) == 2
    (record,) = sandbox.hook_deliveries()
    assert [a["error"] for a in record["attempts"]] == ["max_polling_time_s exceeded"] * 2
    assert record["attempts"][0]["max_polling_time_s"] == 0.3


def test_error_message_fails_export_and_patch_exporting_retries(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    export_hook(sandbox_client, sandbox, hook_receiver)
    ann_id = ready(sandbox_client, queue=2)
    hook_receiver.reply(202, {}, {"Location": "/jobs/1"})
    hook_receiver.reply(201, {"messages": [{"type": "error", "content": "ERP said 422"}]})
    start_confirm(sandbox_client, ann_id)
    ann = wait_status(sandbox_client, ann_id, "failed_export")
    assert ann["messages"][0]["content"] == "ERP said 422"
    hook_receiver.reply(202, {}, {"Location": "/jobs/2"})
    hook_receiver.reply(201, {"messages": [{"type": "info", "content": "ERP document 7"}]})
    resp = sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": "exporting"})
    assert resp.status_code == 200, resp.text
    ann = wait_status(sandbox_client, ann_id, "exported")
    assert ann["messages"][0]["content"] == "ERP document 7"
    posts = [r.json() for r in hook_receiver.requests if r.method == "POST"]
    assert len(posts) == 2 and posts[0]["request_id"] != posts[1]["request_id"]
    assert posts[1]["annotation"]["status"] == "exporting"
