"""Helpers shared by the sandbox tests (real HTTP against a running SandboxServer)."""

from __future__ import annotations

import time
from typing import Any

import httpx

INVOICE_TEXT = """Invoice number: INV-2024-001
Issue date: 2024-03-01
Due date: 2024-03-31
PO number: PO-7788
Vendor name: ACME s.r.o.
Vendor VAT: CZ12345678
Customer name: Rossum Ltd
Currency: EUR
Total amount: 1210.00
Tax amount: 210.00
Item: Consulting services | 10 | 100.00 | 1000.00
Item: Travel | 2 | 105.00 | 210.00
"""


def upload(
    client: httpx.Client,
    text: str | bytes = INVOICE_TEXT,
    queue: int = 1,
    name: str = "invoice.txt",
    **form: str,
) -> int:
    """Upload through the deprecated queue endpoint (synchronous ids); returns the annotation id."""
    body = text.encode() if isinstance(text, str) else text
    resp = client.post(f"/v1/queues/{queue}/upload", files={"content": (name, body)}, data=form)
    assert resp.status_code == 201, resp.text
    return int(resp.json()["results"][0]["annotation"].rsplit("/", 1)[1])


def wait_status(
    client: httpx.Client, ann_id: int, statuses: str | tuple[str, ...], timeout: float = 10.0
) -> dict[str, Any]:
    wanted = (statuses,) if isinstance(statuses, str) else statuses
    deadline = time.monotonic() + timeout
    while True:
        ann = client.get(f"/v1/annotations/{ann_id}").json()
        if ann["status"] in wanted:
            return ann
        if time.monotonic() > deadline:
            raise AssertionError(f"annotation {ann_id} stuck in {ann['status']}, wanted {wanted}")
        time.sleep(0.02)


def ready(
    client: httpx.Client, text: str | bytes = INVOICE_TEXT, queue: int = 1, **form: str
) -> int:
    """Upload and wait until extraction finished (to_review)."""
    ann_id = upload(client, text, queue, **form)
    wait_status(client, ann_id, "to_review")
    return ann_id


def start_confirm(client: httpx.Client, ann_id: int) -> None:
    assert client.post(f"/v1/annotations/{ann_id}/start").status_code == 200
    resp = client.post(f"/v1/annotations/{ann_id}/confirm")
    assert resp.status_code == 204, resp.text


def datapoints(content: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """schema_id -> first datapoint node (depth first)."""
    out: dict[str, dict[str, Any]] = {}
    stack = list(reversed(content))
    while stack:
        node = stack.pop()
        if node["category"] == "datapoint":
            out.setdefault(node["schema_id"], node)
        stack.extend(reversed(node.get("children") or []))
    return out


def all_nodes(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = list(reversed(content))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children") or []))
    return out


def error(resp: httpx.Response) -> dict[str, Any]:
    return resp.json()  # type: ignore[no-any-return]
