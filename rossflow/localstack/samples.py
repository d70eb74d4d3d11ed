"""Sample invoices (real PDFs with real text) in the sandbox's extraction convention.

The sandbox reads ``Label: value`` lines and ``Item: description | qty | unit | total`` rows
(see ``sandbox/extraction.py``), so values typed here flow end to end into the ERP.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import date, timedelta

from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

VENDORS = [
    ("ACME s.r.o.", "CZ12345678"),
    ("Müller & Söhne GmbH", "DE811907980"),
    ("Northwind Traders Ltd", "GB123456789"),
    ("Globex Corporation", "US-99-1234567"),
]
ITEMS = ["Consulting services", "Software licence", "Support hours", "Hardware", "Training day"]


@dataclass(frozen=True)
class SampleInvoice:
    number: str
    lines: list[str]

    @property
    def filename(self) -> str:
        return f"{self.number}.pdf"


def sample_invoice(n: int, *, seed: int = 0) -> SampleInvoice:
    rnd = random.Random(seed * 100_003 + n)
    vendor, vat = VENDORS[n % len(VENDORS)]
    issued = date(2026, 1, 1) + timedelta(days=rnd.randrange(300))
    items = []
    subtotal = 0.0
    for _ in range(rnd.randint(1, 4)):
        qty = rnd.randint(1, 10)
        price = round(rnd.uniform(20, 400), 2)
        total = round(qty * price, 2)
        subtotal += total
        items.append(f"Item: {rnd.choice(ITEMS)} | {qty} | {price:.2f} | {total:.2f}")
    tax = round(subtotal * 0.21, 2)
    number = f"INV-{issued.year}-{n:05d}"
    lines = [
        f"Invoice number: {number}",
        f"Issue date: {issued.isoformat()}",
        f"Due date: {(issued + timedelta(days=30)).isoformat()}",
        f"PO number: PO-{rnd.randint(1000, 9999)}",
        f"Vendor name: {vendor}",
        f"Vendor VAT: {vat}",
        "Customer name: Rossum Demo Ltd",
        f"Currency: {rnd.choice(['EUR', 'USD', 'CZK'])}",
        f"Total amount: {subtotal + tax:.2f}",
        f"Tax amount: {tax:.2f}",
        *items,
    ]
    return SampleInvoice(number, lines)


def invoice_pdf(invoice: SampleInvoice) -> bytes:
    """A one-page PDF whose text layer holds the invoice lines."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4, invariant=True)
    pdf.setTitle(invoice.number)
    y = 800
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(50, y, "INVOICE")
    pdf.setFont("Helvetica", 11)
    for line in invoice.lines:
        y -= 20
        pdf.drawString(50, y, line)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()
