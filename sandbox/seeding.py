"""Seeding: the initial objects of a fresh sandbox, and bulk annotations for tests and benchmarks.

``seed_initial`` creates the organization, workspace, admin user, invoice schema and the two
queues; ``seed_annotations`` (``POST /_sandbox/seed``) inserts many annotations at once, with
varied invoices from ``sample_invoice``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from sandbox import content as ct
from sandbox.config import DEFAULT_PASSWORD, DEFAULT_USERNAME
from sandbox.extraction import confidence
from sandbox.lifecycle import STAMPS
from sandbox.store import Store
from sandbox.util import PH, now_iso, ref, ref_id

if TYPE_CHECKING:
    from sandbox.core import Sandbox

ORG_ID = 1
WORKSPACE_ID = 1
ADMIN_ID = 1
SCHEMA_ID = 1
QUEUE_CONFIRMED_ID = 1
QUEUE_AUTO_EXPORT_ID = 2


def load_invoice_schema() -> dict[str, Any]:
    """The seeded invoice schema (``sandbox/schema_invoice.json``)."""
    text = resources.files("sandbox").joinpath("schema_invoice.json").read_text("utf-8")
    return json.loads(text)


def seed_initial(store: Store) -> None:
    """Organization, workspace, admin user, invoice schema and the two queues."""
    now = now_iso()
    admin = ref("users", ADMIN_ID)
    schema_def = load_invoice_schema()
    with store.tx():
        for kind in ("organizations", "workspaces", "users", "schemas", "queues"):
            store.next_id(kind)
        store.next_id("queues")
        store.put(
            "organizations",
            {
                "id": ORG_ID,
                "url": ref("organizations", ORG_ID),
                "name": "Rossflow Sandbox",
                "workspaces": [ref("workspaces", WORKSPACE_ID)],
                "users": [admin],
                "organization_group": f"{PH}/v1/organization_groups/1",
                "ui_settings": {},
                "metadata": {},
                "created_at": now,
                "trial_expires_at": None,
                "is_trial": False,
                "oidc_provider": None,
                "creator": admin,
                "modified_by": admin,
                "modified_at": now,
            },
        )
        store.put(
            "workspaces",
            {
                "id": WORKSPACE_ID,
                "name": "Rossflow",
                "url": ref("workspaces", WORKSPACE_ID),
                "autopilot": False,
                "organization": ref("organizations", ORG_ID),
                "queues": [
                    ref("queues", QUEUE_CONFIRMED_ID),
                    ref("queues", QUEUE_AUTO_EXPORT_ID),
                ],
                "metadata": {},
            },
        )
        store.put(
            "users",
            new_user(
                ADMIN_ID,
                DEFAULT_USERNAME,
                DEFAULT_PASSWORD,
                "Sandbox",
                "Admin",
                [QUEUE_CONFIRMED_ID, QUEUE_AUTO_EXPORT_ID],
            ),
        )
        store.put(
            "schemas",
            {
                "id": SCHEMA_ID,
                "name": schema_def["name"],
                "queues": [
                    ref("queues", QUEUE_CONFIRMED_ID),
                    ref("queues", QUEUE_AUTO_EXPORT_ID),
                ],
                "url": ref("schemas", SCHEMA_ID),
                "content": schema_def["content"],
                "metadata": {},
                "modified_by": admin,
                "modified_at": now,
            },
        )
        store.put(
            "queues",
            new_queue(
                QUEUE_CONFIRMED_ID,
                "Invoices",
                SCHEMA_ID,
                WORKSPACE_ID,
                use_confirmed_state=True,
            ),
        )
        store.put(
            "queues",
            new_queue(
                QUEUE_AUTO_EXPORT_ID,
                "Invoices (auto-export)",
                SCHEMA_ID,
                WORKSPACE_ID,
                use_confirmed_state=False,
            ),
        )
        store.set_meta("seeded", now)


def new_user(
    uid: int,
    username: str,
    password: str,
    first: str = "",
    last: str = "",
    queues: list[int] | None = None,
) -> dict[str, Any]:
    now = now_iso()
    return {
        "id": uid,
        "url": ref("users", uid),
        "first_name": first,
        "last_name": last,
        "email": username,
        "phone_number": None,
        "date_joined": now,
        "username": username,
        "groups": [],
        "organization": ref("organizations", ORG_ID),
        "queues": [ref("queues", q) for q in queues or []],
        "is_active": True,
        "last_login": None,
        "ui_settings": {},
        "metadata": {},
        "oidc_id": None,
        "deleted": False,
        "auth_type": "password",
        "_password_sha256": hashlib.sha256(password.encode()).hexdigest(),
    }


def new_queue(
    qid: int, name: str, schema_id: int, workspace_id: int | None, **fields: Any
) -> dict[str, Any]:
    now = now_iso()
    queue: dict[str, Any] = {
        "id": qid,
        "name": name,
        "url": ref("queues", qid),
        "workspace": ref("workspaces", workspace_id),
        "connector": None,
        "webhooks": [],
        "hooks": [],
        "schema": ref("schemas", schema_id),
        "inbox": None,
        "users": [ref("users", ADMIN_ID)],
        "session_timeout": "01:00:00",
        "rir_url": None,
        "rir_params": None,
        "dedicated_engine": None,
        "generic_engine": None,
        "engine": None,
        "counts": {},
        "default_score_threshold": 0.8,
        "automation_enabled": False,
        "automation_level": "never",
        "locale": "en_GB",
        "metadata": {},
        "use_confirmed_state": False,
        "document_lifetime": None,
        "delete_after": None,
        "status": "active",
        "modified_by": ref("users", ADMIN_ID),
        "modified_at": now,
        "settings": {},
        "workflows": [],
    }
    queue.update(fields)
    return queue


def seed_annotations(box: Sandbox, queue_id: int, count: int, status: str) -> list[int]:
    """Create ``count`` annotations with documents and varied content in one transaction.

    Content trees are rendered from per-shape JSON templates (see ``TreeTemplate``) and
    inserted with ``executemany``, so 10,000 annotations take a few seconds.
    """
    queue = box.get_or_404("queues", queue_id)
    schema_id = ref_id(queue["schema"]) or SCHEMA_ID
    schema = box.store.get("schemas", schema_id) or {"content": []}
    now = now_iso()
    user = ref("users", ADMIN_ID)
    rng = random.Random(count * 7919 + queue_id)
    templates: dict[tuple[Any, ...], ct.TreeTemplate] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with box.store.tx():
            first_doc = box.store.next_id("documents", count)
            first_ann = box.store.next_id("annotations", count)
            samples = []
            nodes_needed = 0
            for i in range(count):
                text, header, rows = sample_invoice(first_ann + i, rng)
                key = (tuple(header), len(rows), tuple(rows[0]) if rows else ())
                tpl = templates.get(key)
                if tpl is None:
                    tpl = templates[key] = ct.TreeTemplate(
                        schema["content"], list(header), len(rows), list(key[2])
                    )
                samples.append((text, header, rows, tpl))
                nodes_needed += tpl.node_count
            node = box.store.next_id("nodes", max(1, nodes_needed))
            docs: list[tuple[dict[str, Any], bytes, str]] = []
            anns: list[tuple[dict[str, Any], str]] = []
            for i, (text, header, rows, tpl) in enumerate(samples):
                doc_id, ann_id = first_doc + i, first_ann + i
                body = text.encode()
                doc = box.new_document(
                    doc_id, f"invoice_{ann_id}.txt", "text/plain", ADMIN_ID, now, [ann_id]
                )
                docs.append((doc, body, hashlib.sha256(body).hexdigest()))
                tree_json = tpl.render(ann_id, node, header, rows)
                node += tpl.node_count
                ann = box.new_annotation(ann_id, doc, queue, schema_id, ADMIN_ID, now, status)
                if status not in ("importing", "to_review", "failed_import"):
                    ann["modified_at"] = now
                    ann["modifier"] = ann["modified_by"] = user
                if status in ("confirmed", "exported", "exporting", "failed_export"):
                    ann["confirmed_at"], ann["confirmed_by"] = now, user
                stamp = STAMPS.get(status)
                if stamp is not None:
                    ann[stamp[0]] = now
                    if stamp[1] is not None:
                        ann[stamp[1]] = user
                anns.append((ann, tree_json))
            box.store.insert_documents(docs)
            box.store.insert_annotations(anns)
    finally:
        if gc_was_enabled:
            gc.enable()
    ids = [first_ann + i for i in range(count)]
    if status == "importing":
        box.enqueue_extraction(ids)
    return ids


VENDORS = (
    ("ACME s.r.o.", "CZ12345678"),
    ("Globex GmbH", "DE811234567"),
    ("Initech Ltd", "GB123456789"),
    ("Umbrella Corp", "US-98-7654321"),
    ("Stark Industries", "US-12-3456789"),
    ("Wayne Enterprises", "US-55-1234567"),
    ("Hooli Europe B.V.", "NL123456789B01"),
    ("Soylent a.s.", "CZ87654321"),
    ("Vandelay Industries", "US-77-1112223"),
    ("Tyrell SARL", "FR12345678901"),
)
ITEMS = (
    "Consulting services",
    "Software licence",
    "Support hours",
    "Hardware",
    "Travel expenses",
    "Training",
    "Cloud hosting",
    "Office supplies",
    "Maintenance",
    "Design work",
)
CURRENCIES = ("EUR", "USD", "CZK", "GBP")


Cell = tuple[str, str, float]


def sample_invoice(
    n: int, rng: random.Random | None = None
) -> tuple[str, dict[str, Cell], list[dict[str, Cell]]]:
    """Deterministic, varied invoice number ``n``: its text (extraction convention) and the
    values extraction would produce, as (value, normalized_value, rir_confidence) per schema id.
    Used by bulk seeding, which skips parsing for speed."""
    rng = rng or random.Random(n)
    vendor, vat = VENDORS[rng.randrange(len(VENDORS))]
    issued = datetime(2024, 1, 1) + timedelta(days=rng.randrange(365))
    rows: list[dict[str, Cell]] = []
    lines = []
    net = 0
    for _ in range(rng.randint(1, 5)):
        qty = rng.randint(1, 20)
        price = rng.randint(500, 50000)  # cents
        total = qty * price
        net += total
        desc = ITEMS[rng.randrange(len(ITEMS))]
        cells = {
            "item_description": desc,
            "item_quantity": str(qty),
            "item_amount_base": f"{price / 100:.2f}",
            "item_amount_total": f"{total / 100:.2f}",
        }
        lines.append("Item: " + " | ".join(cells.values()))
        rows.append({k: (v, v, confidence(k, v)) for k, v in cells.items()})
    tax = net * 21 // 100
    currency = CURRENCIES[rng.randrange(len(CURRENCIES))]
    values = {
        "invoice_id": f"INV-{issued.year}-{n:06d}",
        "date_issue": issued.date().isoformat(),
        "date_due": (issued + timedelta(days=30)).date().isoformat(),
        "order_id": f"PO-{rng.randint(1000, 9999)}",
        "document_type": "tax_invoice",
        "sender_name": vendor,
        "sender_vat_id": vat,
        "recipient_name": "Rossum Ltd",
        "currency": currency,
        "amount_total": f"{(net + tax) / 100:.2f}",
        "amount_total_tax": f"{tax / 100:.2f}",
    }
    labels = {
        "invoice_id": "Invoice number",
        "date_issue": "Issue date",
        "date_due": "Due date",
        "order_id": "PO number",
        "document_type": "Document type",
        "sender_name": "Vendor name",
        "sender_vat_id": "Vendor VAT",
        "recipient_name": "Customer name",
        "currency": "Currency",
        "amount_total": "Total amount",
        "amount_total_tax": "Tax amount",
    }
    text = "\n".join([f"{labels[k]}: {v}" for k, v in values.items()] + lines) + "\n"
    header = {
        k: (
            v.lower() if k == "currency" else v,
            v.lower() if k == "currency" else v,
            confidence(k, v),
        )
        for k, v in values.items()
    }
    return text, header, rows
