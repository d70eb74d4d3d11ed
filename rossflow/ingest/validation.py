"""Is a file something Rossum will take? Name, size and content (magic bytes) checks.

Rossum accepts PDF, PNG, JPEG, TIFF, XLSX/XLS and DOCX/DOC up to 40 MB (rossum-api §4). A file
passes when its extension names one of those types *and* its first bytes say the same: an
``invoice.pdf`` that is really a PNG, or an ``.exe`` renamed to ``.pdf``, is rejected before it
costs an upload.
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from rossflow.ingest import errors as ingest_errors

DEFAULT_MAX_BYTES = 40 * 1024 * 1024
HEAD_BYTES = 8192

# type -> (extensions, MIME type)
TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "pdf": ((".pdf",), "application/pdf"),
    "png": ((".png",), "image/png"),
    "jpeg": ((".jpg", ".jpeg", ".jpe", ".jfif"), "image/jpeg"),
    "tiff": ((".tif", ".tiff"), "image/tiff"),
    "xlsx": ((".xlsx",), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "xls": ((".xls",), "application/vnd.ms-excel"),
    "docx": (
        (".docx",),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    "doc": ((".doc",), "application/msword"),
}
ALL_TYPES = tuple(TYPES)
_BY_EXTENSION = {ext: kind for kind, (exts, _) in TYPES.items() for ext in exts}

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = (b"PK\x03\x04",)


def type_for_extension(name: str) -> str | None:
    return _BY_EXTENSION.get(posixpath.splitext(name)[1].lower())


def mime_type(kind: str) -> str:
    return TYPES[kind][1]


def sniff(head: bytes) -> set[str]:
    """The accepted types the first bytes are consistent with (empty set: none of them).

    OLE2 containers are ``doc`` or ``xls``; OOXML zips are ``docx`` or ``xlsx`` (narrowed by the
    part names in the first local headers when they are there)."""
    if head[:1024].find(b"%PDF-") != -1:  # PDF readers allow junk before the header
        return {"pdf"}
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return {"png"}
    if head.startswith(b"\xff\xd8\xff"):
        return {"jpeg"}
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return {"tiff"}
    if head.startswith(_OLE2):
        return {"doc", "xls"}
    if head.startswith(_ZIP):
        word, excel = b"word/" in head, b"xl/" in head
        if word and not excel:
            return {"docx"}
        if excel and not word:
            return {"xlsx"}
        if b"[Content_Types].xml" in head or not (word or excel):
            return {"docx", "xlsx"}
    return set()


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    accepted_types: tuple[str, ...] = ALL_TYPES


def unsafe_name_reason(rel: str) -> str | None:
    """Why a relative path must not be used to build target paths, or None when it is fine.

    Spaces and any printable Unicode are fine; ``.``/``..`` segments, absolute paths,
    backslashes (Windows separators), NUL and other control characters are not."""
    if not rel or rel.startswith("/"):
        return "absolute or empty path"
    for ch in rel:
        if ch == "\\":
            return "backslash in the name (a Windows path separator)"
        if unicodedata.category(ch) in ("Cc", "Cs") or ch == "\x7f":
            return f"control character U+{ord(ch):04X} in the name"
    for segment in rel.split("/"):
        if segment in ("", ".", ".."):
            return f"path segment {segment!r} (the name tries to leave its folder)"
    return None


def safe_rel(rel: str) -> str:
    """A relative path that can always be joined below a folder: unsafe pieces replaced."""
    out = []
    for segment in rel.replace("\\", "_").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            segment = "__"
        cleaned = "".join(
            "_" if (unicodedata.category(c) in ("Cc", "Cs") or c == "\x7f") else c for c in segment
        )
        out.append(cleaned or "_")
    return "/".join(out) or "_"


def check_name(rel: str, limits: Limits) -> str:
    """The declared type of ``rel`` (raises :class:`FileRejected` when the name is unusable)."""
    why = unsafe_name_reason(rel)
    if why:
        raise ingest_errors.FileRejected(
            ingest_errors.UNSAFE_NAME, f"unsafe file name {rel!r}: {why}", step="validate"
        )
    declared = type_for_extension(rel)
    if declared is None or declared not in limits.accepted_types:
        ext = posixpath.splitext(rel)[1] or "(none)"
        raise ingest_errors.FileRejected(
            ingest_errors.UNSUPPORTED_TYPE,
            f"extension {ext} is not a type Rossum accepts ({', '.join(limits.accepted_types)})",
            step="validate",
        )
    return declared


def check_size(size: int | None, limits: Limits, *, step: str = "validate") -> None:
    if size is None:
        return
    if size == 0:
        raise ingest_errors.FileRejected(
            ingest_errors.EMPTY, "the file is empty (0 bytes)", step=step
        )
    if size > limits.max_bytes:
        raise ingest_errors.FileRejected(
            ingest_errors.TOO_LARGE,
            f"the file has {size} bytes; the limit is {limits.max_bytes} bytes",
            step=step,
        )


def check_content(rel: str, declared: str, head: bytes) -> str:
    """The detected type; raises when the content is no accepted type or not the declared one."""
    found = sniff(head)
    if not found:
        raise ingest_errors.FileRejected(
            ingest_errors.UNSUPPORTED_TYPE,
            f"the content of {posixpath.basename(rel)!r} is none of the types Rossum accepts "
            f"(first bytes {head[:8]!r})",
            step="validate",
        )
    if declared not in found:
        raise ingest_errors.FileRejected(
            ingest_errors.TYPE_MISMATCH,
            f"the name says {declared} but the content is {'/'.join(sorted(found))}",
            step="validate",
        )
    return declared


def validate(rel: str, size: int | None, head: bytes, limits: Limits) -> str:
    """All checks; returns the file type (a key of :data:`TYPES`)."""
    declared = check_name(rel, limits)
    check_size(size, limits)
    return check_content(rel, declared, head)


def parse_types(values: Iterable[str] | None) -> tuple[str, ...]:
    if not values:
        return ALL_TYPES
    out = []
    for value in values:
        key = value.lower().lstrip(".")
        key = {"jpg": "jpeg", "tif": "tiff"}.get(key, key)
        if key not in TYPES:
            raise ValueError(f"unknown file type {value!r}; known: {', '.join(TYPES)}")
        out.append(key)
    return tuple(dict.fromkeys(out))
