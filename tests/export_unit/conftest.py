"""Fixtures for the export domain-logic tests (pure: no servers, no network)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rossflow.export.context import ExportContext, build_context

DATA = Path(__file__).parent / "data"
PDF_BYTES = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def load_json(name: str) -> Any:
    """Load a JSON fixture from ``tests/export_unit/data``."""
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture
def export_item() -> dict[str, Any]:
    """One annotation of Rossum's export JSON (an invoice with three line items)."""
    return copy.deepcopy(load_json("export_item.json"))


@pytest.fixture
def v1_settings() -> dict[str, Any]:
    """Rossum v1 settings copied verbatim from the anchors (§3.2-3.6) and Rossum docs."""
    return copy.deepcopy(load_json("rossum_v1_settings.json"))


@pytest.fixture
def pdf_loader() -> Callable[[], bytes]:
    """A loader that counts calls, standing in for the original-file download."""
    calls: list[int] = []

    def load() -> bytes:
        calls.append(1)
        return PDF_BYTES

    load.calls = calls  # type: ignore[attr-defined]
    return load


@pytest.fixture
def ctx(export_item: dict[str, Any], pdf_loader: Callable[[], bytes]) -> ExportContext:
    """Context of the fixture invoice with a lazy original file."""
    return build_context(export_item, original_file=pdf_loader)
