"""Checklist 14-17: start/confirm/cancel/postpone/delete/reject and PATCH transitions."""

from __future__ import annotations

import httpx

from sandbox.server import SandboxServer
from tests.sandbox.helpers import ready, start_confirm, wait_status

CONFLICT = {"detail": "Conflict.", "code": "conflict_status"}


def test_start_returns_annotation_and_session_timeout(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ann_id = ready(sandbox_client)
    resp = sandbox_client.post(f"/v1/annotations/{ann_id}/start")
    assert resp.status_code == 200
    assert resp.json() == {
        "annotation": f"{sandbox.api_url}/v1/annotations/{ann_id}",
        "session_timeout": "01:00:00",
    }
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["status"] == "reviewing"
    assert ann["modifier"] == f"{sandbox.api_url}/v1/users/1"
    assert ann["assigned_at"] is not None


def test_start_conflict(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = sandbox.seed(queue=1, count=1, status="exported")[0]
    resp = sandbox_client.post(f"/v1/annotations/{ann_id}/start")
    assert resp.status_code == 409 and resp.json() == CONFLICT
    resp = sandbox_client.post(f"/v1/annotations/{ann_id}/start", json={"statuses": ["exported"]})
    assert resp.status_code == 200
    ready_id = ready(sandbox_client)
    narrowed = sandbox_client.post(
        f"/v1/annotations/{ready_id}/start", json={"statuses": ["postponed"]}
    )
    assert narrowed.status_code == 409


def test_confirm_with_confirmed_state(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client, queue=1)
    start_confirm(sandbox_client, ann_id)
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["status"] == "confirmed"
    assert ann["confirmed_by"] == f"{sandbox.api_url}/v1/users/1"
    assert ann["confirmed_at"] is not None and ann["exported_at"] is None


def test_confirm_without_confirmed_state_exports(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ann_id = ready(sandbox_client, queue=2)
    start_confirm(sandbox_client, ann_id)
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["status"] == "exported"
    assert ann["exported_by"] == f"{sandbox.api_url}/v1/users/1"
    assert ann["exported_at"] is not None


def test_confirm_requires_start_by_caller(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ann_id = ready(sandbox_client)
    resp = sandbox_client.post(f"/v1/annotations/{ann_id}/confirm")
    assert resp.status_code == 409 and resp.json() == CONFLICT
    other = sandbox_client.post("/v1/users", json={"username": "op@x", "password": "pw"})
    assert other.status_code == 201
    login = httpx.post(
        f"{sandbox.api_url}/v1/auth/login", json={"username": "op@x", "password": "pw"}
    ).json()["key"]
    op = httpx.Client(base_url=sandbox.api_url, headers={"Authorization": f"Bearer {login}"})
    assert op.post(f"/v1/annotations/{ann_id}/start").status_code == 200
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/confirm").status_code == 409
    assert op.post(f"/v1/annotations/{ann_id}/confirm").status_code == 204
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["confirmed_by"].endswith(f"/v1/users/{other.json()['id']}")


def test_cancel_postpone_delete(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/cancel").status_code == 409
    sandbox_client.post(f"/v1/annotations/{ann_id}/start")
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/cancel").status_code == 204
    assert sandbox_client.get(f"/v1/annotations/{ann_id}").json()["status"] == "to_review"
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/postpone").status_code == 204
    assert sandbox_client.get(f"/v1/annotations/{ann_id}").json()["status"] == "postponed"
    sandbox_client.post(f"/v1/annotations/{ann_id}/start")
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/cancel").status_code == 204
    assert sandbox_client.get(f"/v1/annotations/{ann_id}").json()["status"] == "postponed"
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/delete").status_code == 204
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["status"] == "deleted" and ann["deleted_at"] and ann["deleted_by"]
    assert sandbox_client.post(f"/v1/annotations/{ann_id}/postpone").status_code == 409


def test_reject(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    resp = sandbox_client.post(
        f"/v1/annotations/{ann_id}/reject", json={"note_content": "wrong vendor"}
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "rejected"
    assert body["note"].startswith(f"{sandbox.api_url}/v1/notes/")
    assert sandbox_client.get(body["note"]).json()["value"] == "wrong vendor"
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["rejected_at"] and ann["rejected_by"]
    exported = sandbox.seed(queue=1, count=1, status="exported")[0]
    assert sandbox_client.post(f"/v1/annotations/{exported}/reject").status_code == 409


def test_patch_status_transitions(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = sandbox.seed(queue=1, count=1, status="confirmed")[0]
    resp = sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": "failed_export"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "failed_export" and body["export_failed_at"] is not None
    assert "document" in body and "queue" in body  # full object
    back = sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": "to_review"})
    assert back.json()["status"] == "to_review"
    for target in ("postponed", "deleted"):
        assert (
            sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": target}).json()[
                "status"
            ]
            == target
        )
    importing = sandbox.seed(queue=1, count=1, status="importing")[0]
    bad = sandbox_client.patch(f"/v1/annotations/{importing}", json={"status": "exported"})
    assert bad.status_code == 409 and bad.json() == CONFLICT
    invalid = sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": "flying"})
    assert invalid.status_code == 400
    purged = sandbox.seed(queue=1, count=1, status="purged")[0]
    for data in ({"status": "to_review"}, {"metadata": {"a": 1}}):
        resp = sandbox_client.patch(f"/v1/annotations/{purged}", json=data)
        assert resp.status_code == 400


def test_patch_exporting_retries_export(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ann_id = sandbox.seed(queue=2, count=1, status="failed_export")[0]
    resp = sandbox_client.patch(f"/v1/annotations/{ann_id}", json={"status": "exporting"})
    assert resp.status_code == 200 and resp.json()["status"] == "exporting"
    assert wait_status(sandbox_client, ann_id, "exported")["exported_at"] is not None


def test_patch_messages_and_metadata(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = sandbox.seed(queue=1, count=1, status="confirmed")[0]
    msgs = [
        {"type": "error", "content": "ERP rejected the invoice"},
        {"type": "info", "content": "x", "id": 5},
    ]
    resp = sandbox_client.patch(
        f"/v1/annotations/{ann_id}", json={"messages": msgs, "metadata": {"erp": "42"}}
    )
    assert resp.status_code == 200
    assert resp.json()["messages"] == msgs and resp.json()["metadata"] == {"erp": "42"}
    assert resp.json()["modified_at"] is not None
    too_long = sandbox_client.patch(
        f"/v1/annotations/{ann_id}", json={"messages": [{"type": "error", "content": "x" * 4097}]}
    )
    assert too_long.status_code == 400
    assert (
        sandbox_client.patch(
            f"/v1/annotations/{ann_id}", json={"messages": [{"type": "bogus", "content": "x"}]}
        ).status_code
        == 400
    )
    assert (
        sandbox_client.patch(
            f"/v1/annotations/{ann_id}", json={"metadata": {"x": "y" * 5000}}
        ).status_code
        == 400
    )


def test_purge_deleted(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ids = sandbox.seed(queue=1, count=2, status="deleted")
    resp = sandbox_client.post(
        "/v1/annotations/purge_deleted", json={"queue": f"{sandbox.api_url}/v1/queues/1"}
    )
    assert resp.status_code == 202
    ann = sandbox_client.get(f"/v1/annotations/{ids[0]}").json()
    assert ann["status"] == "purged" and ann["purged_at"] is not None
    assert sandbox_client.post(f"/v1/annotations/{ids[0]}/delete").status_code == 400
