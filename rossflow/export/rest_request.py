"""The REST/SOAP request side of an export step: build the request, gate it, read the answer.

Pure like :mod:`rossflow.export.steps` (no I/O): the engine sends what these functions prepare
and hands the response record back to :func:`apply_response`.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from rossflow.export.config import (
    AuthConfig,
    RestStep,
    SoapStep,
)
from rossflow.export.context import ExportContext
from rossflow.export.errors import (
    DeliveryError,
    StepError,
)
from rossflow.export.extract import (
    extract_jmespath,
    headers_document,
)
from rossflow.export.placeholders import (
    PlaceholderResolver,
    condition_passes,
    required_secrets,
    resolver_for,
)
from rossflow.export.soap import soap_fault, soap_headers
from rossflow.export.steps import reference_file
from rossflow.http import safe_url

__all__ = [
    "PreparedRequest",
    "RestOutcome",
    "apply_response",
    "auth_header_for",
    "encode_multipart",
    "prepare_auth_request",
    "prepare_request",
    "rest_gate",
    "token_from_auth_response",
]


@dataclass(frozen=True)
class PreparedRequest:
    """A fully resolved HTTP request (exactly one of content/json/data/files may be set)."""

    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    timeout_s: float = 120.0
    retries: int = 0
    secrets_used: frozenset[str] = frozenset()

    def describe(self) -> str:
        """Log-safe one-liner (no body, no header values)."""
        body = (
            "raw"
            if self.content is not None
            else "json"
            if self.json is not None
            else "form"
            if self.data is not None
            else "multipart"
            if self.files
            else "none"
        )
        return f"{self.method} {self.url} body={body} headers={sorted(self.headers)}"


def _as_form(values: Mapping[str, Any], resolver: PlaceholderResolver) -> dict[str, str]:
    resolved = resolver.resolve(dict(values)) or {}
    out: dict[str, str] = {}
    for key, value in resolved.items():
        if isinstance(value, (dict, list)):
            out[str(key)] = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bytes):
            out[str(key)] = value.decode("utf-8", "replace")
        else:
            out[str(key)] = "" if value is None else str(value)
    return out


def rest_gate(
    step: RestStep, ctx: ExportContext, *, secrets: Mapping[str, Any] | None = None
) -> bool:
    """Rossum ``condition`` (``@{api_gate}``): False means skip this step."""
    return condition_passes(step.condition, resolver_for(ctx, secrets=secrets, step=step.name))


def _uses_secret(value: Any, name: str) -> bool:
    return name in required_secrets(value)


def auth_header_for(step: RestStep, auth: AuthConfig | None) -> dict[str, str]:
    """Where the token goes: Rossum's REST export sends ``Authorization: Bearer <token>``
    unless the request already places ``{secret.<cache_as>}`` itself (a header, the URL or
    the params) or sets its own ``Authorization`` header."""
    if auth is None:
        return {}
    req = step.request
    placed = any(_uses_secret(part, auth.cache_as) for part in (req.headers, req.url, req.params))
    if placed or any(k.lower() == "authorization" for k in req.headers):
        return {}
    return {"Authorization": f"Bearer {{secret.{auth.cache_as}}}"}


def _boundary_of(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return match.group(1) if match else None


def encode_multipart(
    fields: Mapping[str, str],
    files: Mapping[str, tuple[str, bytes, str]],
    *,
    content_type: str = "",
) -> tuple[bytes, str]:
    """``multipart/form-data`` bytes and the Content-Type header that goes with them.

    A boundary hard-coded in the configured Content-Type (Rossum users copy them from
    Postman) is the one used in the body, so header and body always agree; without one the
    boundary is derived from the parts, so the same export gives the same bytes.
    """
    boundary = _boundary_of(content_type)
    header = content_type if boundary else ""
    if boundary is None:
        digest = hashlib.sha256()
        for key, value in sorted(fields.items()):
            digest.update(f"{key}\0{value}\0".encode())
        for key, (name, data, ctype) in sorted(files.items()):
            digest.update(f"{key}\0{name}\0{ctype}\0".encode() + data)
        boundary = digest.hexdigest()[:32]
    sep = f"--{boundary}".encode()
    out: list[bytes] = []
    for key, value in fields.items():
        out += [
            sep,
            b'\r\nContent-Disposition: form-data; name="' + _param(key) + b'"\r\n\r\n',
            value.encode("utf-8"),
            b"\r\n",
        ]
    for key, (name, data, ctype) in files.items():
        out += [
            sep,
            b'\r\nContent-Disposition: form-data; name="'
            + _param(key)
            + b'"; filename="'
            + _param(name)
            + b'"\r\nContent-Type: '
            + ctype.encode("latin-1")
            + b"\r\n\r\n",
            data,
            b"\r\n",
        ]
    out.append(sep + b"--\r\n")
    return b"".join(out), header or f"multipart/form-data; boundary={boundary}"


def _param(value: str) -> bytes:
    """A quoted form-data parameter, escaped like browsers and httpx do (RFC 7578 4.2)."""
    escaped = value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D")
    return escaped.replace("\n", "%0A").encode("utf-8")


def prepare_request(
    step: RestStep,
    ctx: ExportContext,
    *,
    secrets: Mapping[str, Any] | None = None,
    auth: AuthConfig | None = None,
) -> PreparedRequest:
    """Resolve URL, headers and body of a REST step for one annotation.

    ``auth`` is the step's resolved auth block: its token is placed as Rossum places it
    (see :func:`auth_header_for`); the engine puts the token into ``secrets`` first.
    """
    rendered = (
        reference_file(ctx, step.export_reference_key, step.name)
        if step.export_reference_key
        else None
    )
    resolver = resolver_for(
        ctx, secrets=secrets, step=step.name, file_content=rendered.content if rendered else None
    )
    req = step.request
    url = resolver.resolve_str(req.url)
    configured = {**req.headers, **auth_header_for(step, auth)}
    if isinstance(step, SoapStep):
        given = {k.lower() for k in configured}
        for key, value in soap_headers(step.soap_version, step.soap_action).items():
            if key.lower() not in given:
                configured[key] = value
    headers = {k: resolver.resolve_str(v) for k, v in configured.items()}
    params = {k: resolver.resolve_str(v) for k, v in req.params.items()}
    lower = {k.lower() for k in headers}
    kind = req.body_kind
    payload_template = req.payload
    content: bytes | None = None
    json_body: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    if kind == "raw":
        value = resolver.resolve(payload_template)
        if isinstance(value, bytes):
            content = value
        elif isinstance(value, (dict, list)):
            content = json.dumps(value, ensure_ascii=False).encode("utf-8")
        else:
            content = ("" if value is None else str(value)).encode("utf-8")
        if "content-type" not in lower:
            if rendered is not None and payload_template == "#{file_content}":
                headers["Content-Type"] = rendered.content_type
            elif payload_template == "#{original_file}":
                guessed = mimetypes.guess_type(ctx.original_file_name or "")[0]
                headers["Content-Type"] = guessed or "application/octet-stream"
    elif kind == "json":
        json_body = resolver.resolve(payload_template)
    elif kind == "form":
        data = _as_form(payload_template or {}, resolver)
    elif kind == "multipart":
        fields = _as_form(req.request_data, resolver)
        if isinstance(payload_template, Mapping):
            fields.update(_as_form(payload_template, resolver))
        part: dict[str, tuple[str, bytes, str]] = {}
        if req.file_content or req.file_key or req.file_name:
            file_key = req.file_key or "file"
            source = req.file_content or ("#{file_content}" if rendered else "#{original_file}")
            if source.strip() == "#{file_content}" and rendered is not None:
                payload, ctype = rendered.content, rendered.content_type
                default_name = rendered.key + rendered.extension
            elif source.strip() == "#{original_file}":
                payload = ctx.file.original_file
                default_name = ctx.original_file_name or "document"
                # "content type taken from the saved document" (Rossum docs)
                ctype = (
                    str(ctx.payload["document"].get("mime_type") or "")
                    or mimetypes.guess_type(default_name)[0]
                    or "application/octet-stream"
                )
            else:
                value = resolver.resolve(source)
                payload = value if isinstance(value, bytes) else str(value or "").encode()
                default_name, ctype = file_key, "application/octet-stream"
            name = resolver.resolve_str(req.file_name) if req.file_name else default_name
            part = {file_key: (name, payload, ctype)}
        declared = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        content, header = encode_multipart(fields, part, content_type=declared)
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = header
    return PreparedRequest(
        method=req.method,
        url=url,
        headers=headers,
        params=params,
        content=content,
        json=json_body,
        data=data,
        files=files,
        timeout_s=float(step.timeout_s or 120.0),
        retries=int(step.retries or 0),
        secrets_used=frozenset(resolver.used_secrets),
    )


def prepare_auth_request(
    auth: AuthConfig,
    *,
    secrets: Mapping[str, Any] | None = None,
    step: str | None = None,
    ctx: ExportContext | None = None,
) -> PreparedRequest:
    """Token request of an ``auth`` block (form-encoded unless configured as JSON).

    With ``ctx``, ``@{schema_id}`` placeholders resolve in every part (url, headers, data),
    as in Rossum's hooks that keep the token URL and client id in hidden datapoints.
    """
    resolver = (
        resolver_for(ctx, secrets=secrets, step=step)
        if ctx is not None
        else PlaceholderResolver(values={}, secrets=secrets, step=step)
    )
    headers = {k: resolver.resolve_str(v) for k, v in auth.headers.items()}
    body = _as_form(auth.data, resolver)
    if auth.body_kind == "json":
        return PreparedRequest(
            auth.method,
            resolver.resolve_str(auth.url),
            headers,
            json=resolver.resolve(auth.data),
            timeout_s=auth.timeout_s,
            secrets_used=frozenset(resolver.used_secrets),
        )
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return PreparedRequest(
        auth.method,
        resolver.resolve_str(auth.url),
        headers,
        content=urlencode(body).encode("ascii"),
        timeout_s=auth.timeout_s,
        secrets_used=frozenset(resolver.used_secrets),
    )


def token_from_auth_response(
    auth: AuthConfig,
    record: Mapping[str, Any],
    *,
    step: str | None = None,
    secrets: Mapping[str, Any] | None = None,
) -> tuple[str, float | None]:
    """Access token and lifetime (seconds) from the token endpoint's reply record."""
    status = int(record.get("status_code", 0))
    if not 200 <= status < 300:
        raise DeliveryError(
            "authentication failed",
            step=step,
            target=safe_url(auth.url),
            http_status=status,
            reply=record.get("text"),
            secrets=secrets,
        )
    body = record.get("body")
    token = extract_jmespath(auth.token_path, body) if isinstance(body, (dict, list)) else None
    if not token or not isinstance(token, str):
        raise DeliveryError(
            f"authentication reply has no token at {auth.token_path!r}",
            step=step,
            target=safe_url(auth.url),
            http_status=status,
            reply=record.get("text"),
            secrets=secrets,
        )
    expires = extract_jmespath(auth.expires_in_path, body) if isinstance(body, dict) else None
    try:
        lifetime = float(expires) if expires is not None else None
    except (TypeError, ValueError):
        lifetime = None
    return token, lifetime


@dataclass(frozen=True)
class RestOutcome:
    """Classification of one reply: ``success``, ``warning`` or ``error``."""

    status: Literal["success", "warning", "error"]
    http_status: int
    message: str | None
    error: StepError | None = None

    def raise_for_status(self) -> None:
        """Raise the prepared :class:`DeliveryError` for ``error`` outcomes."""
        if self.error is not None:
            raise self.error


def apply_response(
    step: RestStep,
    ctx: ExportContext,
    record: Mapping[str, Any],
    *,
    secrets: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> tuple[ExportContext, RestOutcome]:
    """Store the reply (by step name and under the response reference keys) and classify it.

    ``target`` names the target in a failure (block name and URL); default: the reply's URL.
    """
    ctx = ctx.with_response(step.name, record)
    if step.response_headers_reference_key:
        ctx = ctx.with_reference(step.response_headers_reference_key, headers_document(record))
    if step.response_payload_reference_key:
        ctx = ctx.with_reference(step.response_payload_reference_key, record.get("text") or "")
    code = int(record["status_code"])
    status = step.classify_status(code)
    fault = soap_fault(record.get("text")) if isinstance(step, SoapStep) else None
    if fault is not None:
        error = DeliveryError(
            f"SOAP fault {fault}",
            step=step.name,
            target=str(record.get("url") or step.request.url),
            http_status=code,
            reply=record.get("text"),
            secrets=secrets,
        )
        return ctx, RestOutcome("error", code, error.message(), error)
    if status == "success":
        return ctx, RestOutcome("success", code, None)
    error = DeliveryError(
        f"{step.request.method} returned HTTP {code} ("
        + (
            "listed as error in status_code_resolver"
            if code in step.status_code_resolver.error
            else "listed as warning"
            if status == "warning"
            else f"expected {', '.join(map(str, step.success_codes or ['2xx']))}"
        )
        + ")",
        step=step.name,
        target=target or safe_url(str(record.get("url") or step.request.url)),
        http_status=code,
        reply=record.get("text"),
        secrets=secrets,
        retryable=code in (408, 425, 429) or code >= 500,
    )
    if status == "warning":
        return ctx, RestOutcome("warning", code, error.message())
    return ctx, RestOutcome("error", code, error.message(), error)
