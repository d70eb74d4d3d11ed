"""What an upload carries and which files share one: the metadata that identifies each file,
Rossum's 4 kB metadata limit, and the packing of files into multi-file uploads."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

from rossflow.ingest import errors as ingest_errors
from rossflow.ingest.model import FileItem
from rossflow.ingest.rules import RoutingRule

MAX_METADATA_BYTES = 4000  # Rossum: 4 kB per object


def build_metadata(
    rule: RoutingRule | None, *, source_uri: str, sha256: str, size: int, name: str, run_id: str
) -> dict[str, Any]:
    """Rule metadata + what identifies the file (the reconcile step relies on ``sha256``)."""
    ours = {
        "source_uri": source_uri,
        "sha256": sha256,
        "size": size,
        "original_file_name": name,
        "ingest_run": run_id,
    }
    metadata = {**(rule.metadata if rule else {}), **ours}
    encoded = len(json.dumps(metadata).encode())
    if encoded > MAX_METADATA_BYTES:
        over = encoded - MAX_METADATA_BYTES
        metadata["source_uri"] = source_uri[: max(32, len(source_uri) - over - 3)] + "…"
        if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
            raise ingest_errors.FileRejected(
                "metadata_too_large",
                "the rule's metadata and the file's identification exceed Rossum's 4 kB limit",
                step="upload",
            )
    return metadata


def file_entry(*, name: str, sha256: str, size: int, source_uri: str) -> dict[str, Any]:
    """What identifies one file of a multi-file upload in the annotations' metadata."""
    return {"original_file_name": name, "sha256": sha256, "size": size, "source_uri": source_uri}


def build_group_metadata(
    rule: RoutingRule | None, entries: Sequence[dict[str, Any]], *, run_id: str
) -> dict[str, Any]:
    """Metadata of a multi-file upload. Rossum sets one metadata object on every annotation of
    an upload, so each file is identified by its entry in ``files`` (its document's
    ``original_file_name`` picks the entry; names are unique within an upload)."""
    return {**(rule.metadata if rule else {}), "ingest_run": run_id, "files": list(entries)}


def metadata_size(metadata: dict[str, Any]) -> int:
    return len(json.dumps(metadata).encode())


def metadata_matches(meta: dict[str, Any], sha256: str, name: str | None) -> bool:
    """Is this annotation (metadata ``meta``, document named ``name``) the upload of content
    ``sha256``? Single uploads carry ``sha256``; multi-file uploads a ``files`` list."""
    if meta.get("sha256") == sha256:
        return True
    files = meta.get("files")
    if not isinstance(files, list):
        return False
    return any(
        isinstance(f, dict)
        and f.get("sha256") == sha256
        and (name is None or f.get("original_file_name") == name)
        for f in files
    )


def file_metadata(meta: dict[str, Any], document_name: str) -> dict[str, Any]:
    """What identifies the file behind an annotation (``original_file_name``, ``sha256``,
    ``size``, ``source_uri``) whether it was uploaded alone (top-level keys) or with others
    (its entry in ``files``, picked by its document's ``original_file_name``); {} if none."""
    for entry in meta.get("files") or []:
        if isinstance(entry, dict) and entry.get("original_file_name") == document_name:
            return entry
    keys = ("original_file_name", "sha256", "size", "source_uri")
    return {k: meta[k] for k in keys if k in meta}


def plan_uploads(
    members: Sequence[tuple[FileItem, int, str]],
    *,
    key_of: Callable[[FileItem], Any],
    metadata_of: Callable[[FileItem, list[dict[str, Any]]], dict[str, Any]],
    max_files: int,
    max_bytes: int,
) -> list[list[FileItem]]:
    """Pack ``(item, size, source_uri)`` into uploads: same ``key_of`` (queue, rule metadata
    and values), at most ``max_files`` files and ``max_bytes`` in all, unique file names, and
    the group's metadata within Rossum's 4 kB. Order is kept within a key."""
    open_groups: dict[Any, tuple[list[FileItem], list[dict[str, Any]], set[str], int]] = {}
    out: list[list[FileItem]] = []
    for item, size, source_uri in members:
        assert item.sha256 is not None
        name = posixpath.basename(item.rel)
        entry = file_entry(name=name, sha256=item.sha256, size=size, source_uri=source_uri)
        key = key_of(item)
        group = open_groups.get(key)
        if group is not None:
            items, entries, names, total = group
            fits = (
                len(items) < max_files
                and total + size <= max_bytes
                and name not in names
                and metadata_size(metadata_of(item, [*entries, entry])) <= MAX_METADATA_BYTES
            )
            if fits:
                items.append(item)
                entries.append(entry)
                names.add(name)
                open_groups[key] = (items, entries, names, total + size)
                continue
            out.append(items)
        open_groups[key] = ([item], [entry], {name}, size)
    out.extend(items for items, _, _, _ in open_groups.values())
    return out
