"""Request bodies for REST delivery: each knows its httpx keyword arguments, serialized once
so the bytes sent are the bytes hashed for the idempotency key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FormBody", "JsonBody", "MultipartBody", "RawBody", "RequestBody"]


@dataclass(frozen=True)
class JsonBody:
    """Serialized once, compactly, so the bytes sent are the bytes hashed."""

    data: Any

    def request_kwargs(self) -> dict[str, Any]:
        content = json.dumps(self.data, ensure_ascii=False, separators=(",", ":")).encode()
        return {"content": content, "headers": {"Content-Type": "application/json"}}


@dataclass(frozen=True)
class RawBody:
    """Bytes as they are, e.g. an XML or CSV export."""

    content: bytes
    content_type: str = "application/octet-stream"

    def request_kwargs(self) -> dict[str, Any]:
        return {"content": self.content, "headers": {"Content-Type": self.content_type}}


@dataclass(frozen=True)
class FormBody:
    fields: Mapping[str, str]

    def request_kwargs(self) -> dict[str, Any]:
        return {"data": dict(self.fields)}


@dataclass(frozen=True)
class MultipartBody:
    """One file part plus optional plain fields (``multipart/form-data``)."""

    content: bytes
    filename: str
    content_type: str = "application/octet-stream"
    field_name: str = "file"
    fields: Mapping[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        return {
            "files": {self.field_name: (self.filename, self.content, self.content_type)},
            "data": dict(self.fields),
        }


RequestBody = JsonBody | RawBody | FormBody | MultipartBody
