"""Shared helpers for the ingest tests: sample files, sources, options and sandbox look-ups."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from rossflow.ingest import IngestOptions, SftpSource, SourceLayout
from rossflow.rossum import RossumClient
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
TIFF_HEAD = b"II*\x00\x08\x00\x00\x00"
OLE2_HEAD = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 24
DOCX_HEAD = b"PK\x03\x04\x14\x00\x06\x00" + b"[Content_Types].xml" + b"word/document.xml"
XLSX_HEAD = b"PK\x03\x04\x14\x00\x06\x00" + b"[Content_Types].xml" + b"xl/workbook.xml"


def pdf(tag: str | int, size: int = 600) -> bytes:
    """A small (not necessarily renderable) PDF whose content is unique per ``tag``."""
    body = f"%PDF-1.4\n% rossflow test {tag}\n".encode()
    return body + b"x" * max(0, size - len(body) - 6) + b"\n%%EOF"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> list[str]:
    """Every file below ``root`` (relative, sorted), owner files of claims excluded."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )


def options(tmp_path: Path, **overrides: Any) -> IngestOptions:
    values: dict[str, Any] = {
        "ledger_path": str(tmp_path / "ingest.db"),
        "min_age_s": 0,
        "reconcile_delay_s": 0.05,
        "task_deadline_s": 20,
    }
    values.update(overrides)
    return IngestOptions(**values)


def sftp_source(server: SftpServerInfo, directory: str = "/inbox", **layout: Any) -> SftpSource:
    return SftpSource(server.connection_info(), SourceLayout(directory=directory, **layout))


def client_factory(sandbox: SandboxServer):  # type: ignore[no-untyped-def]
    def make() -> RossumClient:
        return RossumClient(
            sandbox.api_url,
            username=sandbox.username,
            password=sandbox.password,
            rate_limit_per_s=None,
        )

    return make


def sandbox_annotations(client: httpx.Client) -> list[dict[str, Any]]:
    """Every annotation in the sandbox (any status)."""
    out: list[dict[str, Any]] = []
    url: str | None = "/v1/annotations"
    params: dict[str, Any] | None = {"page_size": 100}
    while url:
        body = client.get(url, params=params).json()
        out.extend(body["results"])
        url, params = body["pagination"].get("next"), None
    return out


def uploads_by_sha(client: httpx.Client) -> dict[str, int]:
    """How many annotations exist per content hash (from the metadata the ingest sets)."""
    counts: dict[str, int] = {}
    for ann in sandbox_annotations(client):
        key = file_meta(client, ann).get("sha256", "?")
        counts[key] = counts.get(key, 0) + 1
    return counts


def file_meta(client: httpx.Client, ann: dict[str, Any]) -> dict[str, Any]:
    """The ingest's identification of the file behind ``ann`` (uploaded alone or with
    others: then its entry in ``metadata.files``, picked by its document's name)."""
    from rossflow.ingest.upload_groups import file_metadata

    meta = ann.get("metadata") or {}
    if "files" not in meta:
        return file_metadata(meta, "")
    name = client.get(ann["document"]).json()["original_file_name"]
    return file_metadata(meta, name)
