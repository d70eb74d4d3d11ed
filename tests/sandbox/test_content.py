"""Checklist 19: annotation content read and updates."""

from __future__ import annotations

import httpx

from sandbox.server import SandboxServer
from tests.sandbox.helpers import all_nodes, datapoints, ready


def _content(client: httpx.Client, ann_id: int) -> list[dict]:
    return client.get(f"/v1/annotations/{ann_id}/content").json()["content"]


def test_patch_single_node(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    node = datapoints(_content(sandbox_client, ann_id))["date_due"]
    resp = sandbox_client.patch(
        f"/v1/annotations/{ann_id}/content/{node['id']}",
        json={"content": {"value": "15.04.2024", "position": [1, 2, 3, 4]}},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["id"] == node["id"]
    assert body["content"]["value"] == "15.04.2024"
    assert body["content"]["normalized_value"] == "2024-04-15"
    assert body["content"]["position"] == [1, 2, 3, 4]
    again = sandbox_client.get(f"/v1/annotations/{ann_id}/content/{node['id']}").json()
    assert again["content"]["normalized_value"] == "2024-04-15"
    assert sandbox_client.get(f"/v1/annotations/{ann_id}/content/999999999").status_code == 404


def test_operations_replace_add_remove(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    content = _content(sandbox_client, ann_id)
    dps = datapoints(content)
    line_items = next(n for n in all_nodes(content) if n["schema_id"] == "line_items")
    first_row = line_items["children"][0]
    ops = [
        {
            "op": "replace",
            "id": str(dps["invoice_id"]["id"]),
            "value": {"content": {"value": "INV-NEW"}, "validation_sources": ["human"]},
        },
        {
            "op": "replace",
            "id": dps["erp_document_id"]["id"],
            "value": {"content": {"value": "ERP-1"}},
        },
        {"op": "remove", "id": str(first_row["id"])},
        {
            "op": "add",
            "id": line_items["id"],
            "value": [
                {"schema_id": "item_description", "content": {"value": "Bottle"}},
                {"schema_id": "item_quantity", "content": {"value": "2"}},
            ],
        },
    ]
    resp = sandbox_client.post(
        f"/v1/annotations/{ann_id}/content/operations", json={"operations": ops}
    )
    assert resp.status_code == 200
    new = resp.json()["content"]
    new_dps = datapoints(new)
    assert new_dps["invoice_id"]["content"]["value"] == "INV-NEW"
    assert new_dps["invoice_id"]["validation_sources"] == ["human"]
    assert new_dps["erp_document_id"]["content"]["value"] == "ERP-1"
    rows = next(n for n in all_nodes(new) if n["schema_id"] == "line_items")["children"]
    assert len(rows) == 2
    assert first_row["id"] not in [r["id"] for r in rows]
    added = {c["schema_id"]: c for c in rows[-1]["children"]}
    assert added["item_description"]["content"]["value"] == "Bottle"
    assert added["item_quantity"]["content"]["normalized_value"] == "2"
    assert set(added) == {
        "item_description",
        "item_quantity",
        "item_amount_base",
        "item_amount_total",
    }
    ids = [n["id"] for n in all_nodes(new)]
    assert len(ids) == len(set(ids))


def test_operations_mismatching_normalized_value_is_ignored(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    node = datapoints(_content(sandbox_client, ann_id))["amount_total"]
    ops = [
        {
            "op": "replace",
            "id": node["id"],
            "value": {"content": {"value": "5", "normalized_value": "6"}},
        }
    ]
    sandbox_client.post(f"/v1/annotations/{ann_id}/content/operations", json={"operations": ops})
    after = datapoints(_content(sandbox_client, ann_id))["amount_total"]
    assert after["content"]["value"] == node["content"]["value"]


def test_invalid_operations_400(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    content = _content(sandbox_client, ann_id)
    section = content[0]
    url = f"/v1/annotations/{ann_id}/content/operations"
    for ops in (
        [{"op": "replace", "id": 123456789, "value": {"content": {"value": "x"}}}],
        [{"op": "remove", "id": datapoints(content)["invoice_id"]["id"]}],
        [{"op": "replace", "id": section["id"], "value": {}}],
        [{"op": "explode", "id": section["id"]}],
        "not a list",
    ):
        resp = sandbox_client.post(url, json={"operations": ops})
        assert resp.status_code == 400, ops
        assert resp.json()["code"] == "bad_request"


def test_patch_content_tree_preserves_missing(sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    tree = [
        {
            "category": "section",
            "schema_id": "invoice_info_section",
            "children": [
                {
                    "category": "datapoint",
                    "schema_id": "order_id",
                    "content": {"value": "PO-1"},
                    "validation_sources": ["human"],
                }
            ],
        }
    ]
    resp = sandbox_client.patch(f"/v1/annotations/{ann_id}/content", json={"content": tree})
    assert resp.status_code == 200
    dps = datapoints(resp.json()["content"])
    assert dps["order_id"]["content"]["value"] == "PO-1"
    assert dps["invoice_id"]["content"]["value"] == "INV-2024-001"


def test_content_changes_rejected_when_purged_or_in_workflow(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ann_id = ready(sandbox_client)
    node = datapoints(_content(sandbox_client, ann_id))["invoice_id"]
    ops = {
        "operations": [{"op": "replace", "id": node["id"], "value": {"content": {"value": "x"}}}]
    }
    sandbox.force_status(ann_id, "in_workflow")
    assert (
        sandbox_client.post(f"/v1/annotations/{ann_id}/content/operations", json=ops).status_code
        == 409
    )
    sandbox.force_status(ann_id, "purged")
    assert (
        sandbox_client.post(f"/v1/annotations/{ann_id}/content/operations", json=ops).status_code
        == 400
    )
    assert (
        sandbox_client.patch(
            f"/v1/annotations/{ann_id}/content/{node['id']}", json={"content": {"value": "x"}}
        ).status_code
        == 400
    )
