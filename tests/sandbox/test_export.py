"""Checklist 18: queue export in JSON/XML/CSV, to_status, pagination, volume."""

from __future__ import annotations

import csv
import io
import time
import xml.etree.ElementTree as ET

import httpx

from sandbox.server import SandboxServer
from tests.fixtures.sandbox import HookReceiver
from tests.sandbox.helpers import ready, start_confirm


def test_json_shape(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    start_confirm(sandbox_client, ann_id)
    body = sandbox_client.get(
        "/v1/queues/1/export", params={"format": "json", "status": "confirmed"}
    ).json()
    assert body["pagination"] == {"total": 1, "total_pages": 1, "next": None, "previous": None}
    item = body["results"][0]
    assert list(item) == [
        "url",
        "status",
        "arrived_at",
        "exported_at",
        "document",
        "modifier",
        "schema",
        "metadata",
        "content",
    ]
    assert item["url"] == f"{sandbox.api_url}/v1/annotations/{ann_id}"
    assert item["status"] == "confirmed"
    assert set(item["document"]) == {"url", "file_name", "file"}
    assert item["document"]["file"] == item["document"]["url"] + "/content"
    assert item["schema"] == {"url": f"{sandbox.api_url}/v1/schemas/1"}
    sections = {s["schema_id"]: s for s in item["content"]}
    assert all(s["category"] == "section" for s in item["content"])
    info = {d["schema_id"]: d for d in sections["invoice_info_section"]["children"]}
    assert info["invoice_id"] == {
        "category": "datapoint",
        "schema_id": "invoice_id",
        "value": "INV-2024-001",
        "type": "string",
        "rir_confidence": info["invoice_id"]["rir_confidence"],
    }
    assert info["date_issue"]["value"] == "2024-03-01" and info["date_issue"]["type"] == "date"
    amounts = {d["schema_id"]: d for d in sections["amounts_section"]["children"]}
    assert amounts["amount_total"]["value"] == "1210.00"
    table = sections["line_items_section"]["children"][0]
    assert table["category"] == "multivalue" and table["schema_id"] == "line_items"
    row = table["children"][0]
    assert row["category"] == "tuple" and row["schema_id"] == "line_item"
    assert [c["schema_id"] for c in row["children"]] == [
        "item_description",
        "item_quantity",
        "item_amount_base",
        "item_amount_total",
    ]
    other = [d["schema_id"] for d in sections["other_section"]["children"]]
    assert "erp_document_id" not in other  # can_export = false
    assert "api1_status_code" in other


def test_xml_and_accept_header(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.seed(queue=1, count=2, status="confirmed")
    resp = sandbox_client.get("/v1/queues/1/export", params={"format": "xml"})
    assert resp.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(resp.content)
    assert root.tag == "export"
    annotations = root.findall("./results/annotation")
    assert len(annotations) == 2
    first = annotations[0]
    assert first.get("url").startswith(f"{sandbox.api_url}/v1/annotations/")
    assert first.findtext("status") == "confirmed"
    assert first.find("document/file_name").text.endswith(".txt")
    dp = first.find("content/section/datapoint[@schema_id='invoice_id']")
    assert dp is not None and dp.get("type") == "string" and dp.text.startswith("INV-")
    assert root.findtext("pagination/total") == "2"
    by_accept = sandbox_client.get("/v1/queues/1/export", headers={"Accept": "text/csv"})
    assert by_accept.headers["content-type"].startswith("text/csv")
    assert sandbox_client.get("/v1/queues/1/export?format=pdf").status_code == 400


def test_csv_columns_and_line_items(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = ready(sandbox_client)
    resp = sandbox_client.get("/v1/queues/1/export", params={"format": "csv", "id": ann_id})
    rows = list(csv.reader(io.StringIO(resp.text)))
    header = rows[0]
    assert header[:3] == ["Invoice number", "Issue date", "Due date"]
    assert "ERP document ID" not in header  # can_export = false
    assert len(rows) == 3  # two line items, header fields repeated
    desc = header.index("Description")
    assert [r[desc] for r in rows[1:]] == ["Consulting services", "Travel"]
    assert rows[1][0] == rows[2][0] == "INV-2024-001"
    picked = sandbox_client.get(
        "/v1/queues/1/export",
        params={
            "format": "csv",
            "id": ann_id,
            "columns": "meta_file_name,invoice_id,amount_total",
            "prepend_columns": "meta_status",
            "append_columns": "meta_url",
        },
    ).text
    rows = list(csv.reader(io.StringIO(picked)))
    assert rows[0] == [
        "meta_status",
        "meta_file_name",
        "Invoice number",
        "Total amount",
        "meta_url",
    ]
    assert rows[1] == [
        "to_review",
        "invoice.txt",
        "INV-2024-001",
        "1210.00",
        f"{sandbox.api_url}/v1/annotations/{ann_id}",
    ]
    assert len(rows) == 2  # no table column selected -> one row per annotation
    semi = sandbox_client.get(
        "/v1/queues/1/export",
        params={
            "format": "csv",
            "id": ann_id,
            "columns": "invoice_id",
            "delimiter": ";",
            "quoting": "quote_all",
        },
    ).text
    assert semi.splitlines()[1] == '"INV-2024-001"'
    bad = sandbox_client.get("/v1/queues/1/export", params={"format": "csv", "columns": "nope"})
    assert bad.status_code == 400


def test_to_status_rules(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.seed(queue=1, count=2, status="confirmed")
    assert (
        sandbox_client.get("/v1/queues/1/export", params={"to_status": "exported"}).status_code
        == 400
    )
    assert (
        sandbox_client.post("/v1/queues/1/export", params={"to_status": "to_review"}).status_code
        == 400
    )


def test_to_status_exported_moves_and_fires_hooks(
    sandbox: SandboxServer, sandbox_client: httpx.Client, hook_receiver: HookReceiver
) -> None:
    hook = sandbox_client.post(
        "/v1/hooks",
        json={
            "name": "status",
            "queues": [f"{sandbox.api_url}/v1/queues/1"],
            "events": ["annotation_status"],
            "config": {"url": hook_receiver.url + "/hook"},
        },
    )
    assert hook.status_code == 201
    confirmed = sandbox.seed(queue=1, count=3, status="confirmed")
    already = sandbox.seed(queue=1, count=1, status="exported")[0]
    before = sandbox_client.get(f"/v1/annotations/{already}").json()
    ids = ",".join(str(i) for i in [*confirmed, already])
    resp = sandbox_client.post(
        "/v1/queues/1/export", params={"format": "json", "id": ids, "to_status": "exported"}
    )
    assert resp.status_code == 200
    assert [r["status"] for r in resp.json()["results"]] == ["exported"] * 4
    ann = sandbox_client.get(f"/v1/annotations/{confirmed[0]}").json()
    assert ann["exported_at"] and ann["exported_by"] == f"{sandbox.api_url}/v1/users/1"
    after = sandbox_client.get(f"/v1/annotations/{already}").json()
    assert after["exported_at"] == before["exported_at"]  # left untouched
    received = hook_receiver.wait_for(3)
    payloads = [r.json() for r in received]
    assert {p["annotation"]["id"] for p in payloads} == set(confirmed)
    assert all(p["annotation"]["previous_status"] == "confirmed" for p in payloads)
    assert all(p["annotation"]["status"] == "exported" for p in payloads)
    time.sleep(0.1)
    assert len(hook_receiver.requests) == 3


def test_to_status_exporting_then_exported(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    ids = sandbox.seed(queue=1, count=2, status="confirmed")
    resp = sandbox_client.post("/v1/queues/1/export?status=confirmed&to_status=exporting")
    assert [r["status"] for r in resp.json()["results"]] == ["exporting", "exporting"]
    sandbox.wait_idle()
    assert sandbox_client.get(f"/v1/annotations/{ids[0]}").json()["status"] == "exported"


def test_export_page_size_limits(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.seed(queue=1, count=1200, status="confirmed")
    js = sandbox_client.get(
        "/v1/queues/1/export", params={"format": "json", "page_size": 500}
    ).json()
    assert len(js["results"]) == 100 and js["pagination"]["total"] == 1200
    assert js["pagination"]["total_pages"] == 12
    csv_text = sandbox_client.get(
        "/v1/queues/1/export", params={"format": "csv", "page_size": 5000, "columns": "invoice_id"}
    ).text
    assert len(csv_text.strip().splitlines()) == 1001
    # without page/page_size, CSV (and XML/XLSX) return every match, as rossum-api expects
    everything = sandbox_client.get(
        "/v1/queues/1/export", params={"format": "csv", "columns": "invoice_id"}
    ).text
    assert len(everything.strip().splitlines()) == 1201
    page2 = sandbox_client.get(
        "/v1/queues/1/export",
        params={"format": "csv", "page_size": 1000, "page": 2, "columns": "invoice_id"},
    ).text
    assert len(page2.strip().splitlines()) == 201


def test_seed_10000_and_export_pages_fast(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    started = time.monotonic()
    ids = sandbox.seed(queue=1, count=10_000, status="confirmed")
    seeded = time.monotonic() - started
    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    assert seeded < 30, seeded  # typically a few seconds
    assert sandbox_client.get("/v1/queues/1").json()["counts"]["confirmed"] == 10_000
    started = time.monotonic()
    seen: set[int] = set()
    for page in (1, 2, 3, 50, 100):
        body = sandbox_client.get(
            "/v1/queues/1/export",
            params={"format": "json", "status": "confirmed", "page_size": 100, "page": page},
        ).json()
        assert body["pagination"]["total"] == 10_000
        assert body["pagination"]["total_pages"] == 100
        seen |= {int(r["url"].rsplit("/", 1)[1]) for r in body["results"]}
    assert body["pagination"]["next"] is None
    assert len(seen) == 500
    assert time.monotonic() - started < 30
    # POST with to_status moves exactly one page; the status filter then shrinks
    moved = sandbox_client.post(
        "/v1/queues/1/export",
        params={"status": "confirmed", "to_status": "exported", "page_size": 100},
    ).json()
    assert moved["pagination"]["total"] == 10_000
    assert sandbox_client.get("/v1/queues/1").json()["counts"]["exported"] == 100


def test_exported_at_filters_and_ordering_on_the_export_endpoint(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    """The filters Rossum documents for ``GET …/export`` (``exported_at_after``/``_before``, and
    ``ordering`` like the annotation list), which the exported-since mode reads with."""
    ids = sandbox.seed(queue=1, count=4, status="confirmed")
    sandbox.seed(queue=1, count=1, status="to_review")
    for ann_id in reversed(ids):  # exported in the opposite order of their ids
        sandbox.force_status(ann_id, "exported")
        time.sleep(0.005)
    stamps = {
        a["id"]: a["exported_at"]
        for a in sandbox_client.get(
            "/v1/annotations", params={"id": ",".join(map(str, ids))}
        ).json()["results"]
    }
    by_time = sorted(ids, key=lambda i: stamps[i])
    assert by_time == list(reversed(ids))

    def export(**params: str) -> list[int]:
        resp = sandbox_client.get(
            "/v1/queues/1/export", params={"format": "json", "status": "exported", **params}
        )
        assert resp.status_code == 200, resp.text
        return [int(r["url"].rsplit("/", 1)[1]) for r in resp.json()["results"]]

    assert export(ordering="exported_at") == by_time
    assert export(ordering="-exported_at") == ids
    # exported_at_after is inclusive; the documented "2019-11-14 12:00:00" form works too.
    third = stamps[by_time[2]]
    assert export(ordering="exported_at", exported_at_after=third) == by_time[2:]
    spaced = third.replace("T", " ").rstrip("Z")
    assert export(ordering="exported_at", exported_at_after=spaced) == by_time[2:]
    assert export(ordering="exported_at", exported_at_before=third)[:2] == by_time[:2]
    # with page/page_size, as the exported-since reader pages
    assert (
        export(
            ordering="exported_at", exported_at_after=stamps[by_time[1]], page="2", page_size="2"
        )
        == by_time[3:]
    )
    bad = sandbox_client.get("/v1/queues/1/export", params={"exported_at_after": "yesterday"})
    assert bad.status_code == 400
