"""Checklist 12-13: simulated extraction, automation, annotation object."""

from __future__ import annotations

import io

import httpx
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from sandbox.server import SandboxServer
from tests.sandbox.helpers import INVOICE_TEXT, all_nodes, datapoints, upload, wait_status

ANNOTATION_FIELDS = (
    "document",
    "id",
    "queue",
    "schema",
    "relations",
    "pages",
    "creator",
    "modifier",
    "modified_by",
    "assigned_at",
    "created_at",
    "confirmed_at",
    "deleted_at",
    "exported_at",
    "export_failed_at",
    "modified_at",
    "purged_at",
    "rejected_at",
    "confirmed_by",
    "deleted_by",
    "exported_by",
    "purged_by",
    "rejected_by",
    "status",
    "rir_poll_id",
    "messages",
    "url",
    "content",
    "time_spent",
    "metadata",
    "related_emails",
    "email",
    "automation_blocker",
    "email_thread",
    "has_email_thread_with_replies",
    "has_email_thread_with_new_replies",
    "organization",
    "prediction",
    "assignees",
    "labels",
    "automated",
    "suggested_edit",
    "automatically_rejected",
    "restricted_access",
    "training_enabled",
)


def make_pdf(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4)
    y = 800
    for line in lines:
        pdf.drawString(50, y, line)
        y -= 16
    pdf.save()
    return buf.getvalue()


def test_importing_then_to_review_with_values(sandbox_client: httpx.Client) -> None:
    ann_id = upload(sandbox_client, INVOICE_TEXT)
    first = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert first["status"] == "importing"
    ann = wait_status(sandbox_client, ann_id, "to_review")
    assert ann["modified_at"] is not None
    body = sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()
    assert set(body) == {"content", "results"} and body["content"] == body["results"]
    dps = datapoints(body["content"])
    assert dps["invoice_id"]["content"]["value"] == "INV-2024-001"
    assert dps["date_issue"]["content"]["normalized_value"] == "2024-03-01"
    assert dps["amount_total"]["content"]["normalized_value"] == "1210.00"
    assert dps["currency"]["content"]["value"] == "eur"
    assert dps["sender_name"]["content"]["value"] == "ACME s.r.o."
    inv = dps["invoice_id"]
    assert 0.9 <= inv["content"]["rir_confidence"] < 1
    assert inv["validation_sources"] == ["score"]
    assert inv["url"].endswith(f"/v1/annotations/{ann_id}/content/{inv['id']}")
    for key in ("time_spent", "time_spent_overall", "hidden", "schema_id", "category"):
        assert key in inv
    rows = [n for n in all_nodes(body["content"]) if n["category"] == "tuple"]
    assert len(rows) == 2
    cells = {c["schema_id"]: c["content"]["value"] for c in rows[0]["children"]}
    assert cells == {
        "item_description": "Consulting services",
        "item_quantity": "10",
        "item_amount_base": "100.00",
        "item_amount_total": "1000.00",
    }
    ids = [n["id"] for n in all_nodes(body["content"])]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))


def test_pdf_text_extraction(sandbox_client: httpx.Client) -> None:
    pdf = make_pdf(
        [
            "Invoice number: PDF-77",
            "Issue date: 05.02.2024",
            "Total amount: 99.50",
            "Item: Widget | 3 | 10.00 | 30.00",
        ]
    )
    ann_id = upload(sandbox_client, pdf, name="inv.pdf")
    wait_status(sandbox_client, ann_id, "to_review")
    dps = datapoints(sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"])
    assert dps["invoice_id"]["content"]["value"] == "PDF-77"
    assert dps["date_issue"]["content"]["normalized_value"] == "2024-02-05"
    assert dps["amount_total"]["content"]["normalized_value"] == "99.50"
    assert dps["item_description"]["content"]["value"] == "Widget"


def test_unknown_content_gives_empty_values(sandbox_client: httpx.Client) -> None:
    ann_id = upload(sandbox_client, b"\x89PNG\r\n\x1a\n\x00\x00binary", name="scan.png")
    wait_status(sandbox_client, ann_id, "to_review")
    dps = datapoints(sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"])
    assert dps["invoice_id"]["content"]["value"] == ""
    assert dps["amount_total"]["content"]["rir_confidence"] is None


def test_fail_marker_gives_failed_import(sandbox_client: httpx.Client) -> None:
    ann_id = upload(sandbox_client, "Invoice number: X\nSANDBOX_FAIL_IMPORT\n")
    ann = wait_status(sandbox_client, ann_id, "failed_import")
    assert ann["messages"][0]["type"] == "error"
    assert ann["modified_at"] is not None


def test_automation_always(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    for qid in (1, 2):
        assert (
            sandbox_client.patch(
                f"/v1/queues/{qid}", json={"automation_level": "always", "automation_enabled": True}
            ).status_code
            == 200
        )
    confirmed = wait_status(sandbox_client, upload(sandbox_client, queue=1), "confirmed")
    assert confirmed["automated"] is True and confirmed["confirmed_at"] is not None
    exported = wait_status(sandbox_client, upload(sandbox_client, queue=2), "exported")
    assert exported["exported_at"] is not None
    # a required field missing -> stays for review
    missing = upload(sandbox_client, "Vendor name: Nobody\n", queue=1)
    assert wait_status(sandbox_client, missing, "to_review")["automated"] is False


def test_annotation_has_every_field(sandbox_client: httpx.Client) -> None:
    ann_id = upload(sandbox_client)
    ann = wait_status(sandbox_client, ann_id, "to_review")
    for key in ANNOTATION_FIELDS:
        assert key in ann, key
    for key in (
        "confirmed_at",
        "deleted_at",
        "exported_at",
        "export_failed_at",
        "purged_at",
        "rejected_at",
        "confirmed_by",
        "deleted_by",
        "exported_by",
        "purged_by",
        "rejected_by",
        "assigned_at",
        "modifier",
    ):
        assert ann[key] is None, key
    assert not any(k.startswith("_") for k in ann)


def test_annotation_list_filters(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    confirmed = sandbox.seed(queue=1, count=3, status="confirmed")
    exported = sandbox.seed(queue=2, count=2, status="exported")
    body = sandbox_client.get("/v1/annotations", params={"status": "confirmed,exported"}).json()
    assert body["pagination"]["total"] == 5
    assert (
        sandbox_client.get("/v1/annotations", params={"queue": 2}).json()["pagination"]["total"]
        == 2
    )
    ids = f"{confirmed[0]},{exported[1]}"
    got = sandbox_client.get("/v1/annotations", params={"id": ids}).json()["results"]
    assert [a["id"] for a in got] == [confirmed[0], exported[1]]
    doc_id = int(got[0]["document"].rsplit("/", 1)[1])
    by_doc = sandbox_client.get("/v1/annotations", params={"document": doc_id}).json()
    assert [a["id"] for a in by_doc["results"]] == [confirmed[0]]
    desc = sandbox_client.get("/v1/annotations", params={"ordering": "-id"}).json()["results"]
    assert desc[0]["id"] == max(confirmed + exported)
    fields = sandbox_client.get("/v1/annotations", params={"fields": "id,url"}).json()["results"]
    assert set(fields[0]) == {"id", "url"}
    future = sandbox_client.get("/v1/annotations", params={"created_at_after": "2999-01-01"}).json()
    assert future["pagination"]["total"] == 0
    past = sandbox_client.get(
        "/v1/annotations", params={"created_at_before": "2999-01-01 10:00:00"}
    ).json()
    assert past["pagination"]["total"] == 5
    assert (
        sandbox_client.get(
            "/v1/annotations",
            params={"confirmed_at_after": "2000-01-01T00:00:00Z", "status": "confirmed"},
        ).json()["pagination"]["total"]
        == 3
    )
    side = sandbox_client.get(
        "/v1/annotations",
        params={
            "id": confirmed[0],
            "sideload": "documents,content",
            "content.schema_id": "invoice_id",
        },
    ).json()
    assert side["documents"][0]["url"] == side["results"][0]["document"]
    assert [n["schema_id"] for n in side["content"]] == ["invoice_id"]
    assert side["content"][0]["url"].startswith(side["results"][0]["url"] + "/content/")
