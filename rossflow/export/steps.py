"""Pure per-step logic the engine calls for one annotation (no I/O, no Prefect).

Each function takes the step config and an immutable :class:`ExportContext` and returns a new
context plus what the engine must do (send a request, upload files, write values back). The
engine owns HTTP/SFTP/S3, retries and Rossum API calls.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from lxml import etree

from rossflow.export.config import (
    AuthConfig,
    CleanStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    RestStep,
    SoapStep,
    TemplateStep,
)
from rossflow.export.context import ExportContext, build_writeback_operations, datapoint_value
from rossflow.export.errors import (
    DeliveryError,
    EvaluationFailed,
    ExtractionError,
    StepError,
)
from rossflow.export.evaluate import build_namespace, compile_condition
from rossflow.export.extract import (
    ExtractOutcome,
    extract_jmespath,
    extract_value,
    headers_document,
)
from rossflow.export.filenames import FilenameRenderer, SequenceCounter
from rossflow.export.placeholders import (
    PlaceholderResolver,
    condition_passes,
    required_secrets,
    resolver_for,
)
from rossflow.export.soap import soap_fault, soap_headers
from rossflow.export.tabular import annotation_rows, frame_to_csv, frame_to_xlsx, rows_to_frame
from rossflow.export.templating import CONTENT_TYPES, RenderedFile, render_step, render_text
from rossflow.http import safe_url

__all__ = [
    "EvaluateOutcome",
    "ExtractResult",
    "PlannedFile",
    "PreparedRequest",
    "RestOutcome",
    "annotation_content_bytes",
    "apply_response",
    "auth_header_for",
    "encode_multipart",
    "plan_file_storage",
    "prepare_auth_request",
    "prepare_request",
    "rest_gate",
    "run_clean_step",
    "run_evaluate_step",
    "run_extract_step",
    "run_template_step",
    "step_enabled",
    "token_from_auth_response",
]


def step_enabled(step: Any, ctx: ExportContext) -> bool:
    """Evaluate the step's optional ``when`` expression."""
    if not step.when:
        return True
    return compile_condition(step.when).evaluate(ctx)


# ----------------------------------------------------------------------------- clean/template


def run_clean_step(step: CleanStep, ctx: ExportContext) -> tuple[ExportContext, list[str]]:
    """Forget artefacts of earlier runs; returns the keys the engine must purge in Rossum."""
    keys = list(step.keys) if step.keys is not None else list(ctx.references)
    remaining = {k: v for k, v in ctx.references.items() if k not in keys}
    return replace(ctx, references=remaining, responses={}), keys


def run_template_step(
    step: TemplateStep, ctx: ExportContext
) -> tuple[ExportContext, list[RenderedFile]]:
    """Render every output and store it under its reference key."""
    files = render_step(step, ctx)
    for rendered in files:
        ctx = ctx.with_reference(rendered.key, rendered)
    return ctx, files


# ------------------------------------------------------------------------------------ REST


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


def _reference_file(ctx: ExportContext, key: str, step: str) -> RenderedFile:
    artefact = ctx.references.get(key)
    if artefact is None:
        raise StepError(
            f"export_reference_key {key!r} was not produced for this annotation (did the "
            "template step run and succeed?)",
            step=step,
        )
    if isinstance(artefact, RenderedFile):
        return artefact
    if isinstance(artefact, bytes):
        return RenderedFile(key, artefact, "application/octet-stream")
    if isinstance(artefact, str):
        return RenderedFile(key, artefact.encode("utf-8"), "text/plain")
    return RenderedFile(
        key, json.dumps(artefact).encode("utf-8"), "application/json", "utf-8", "json"
    )


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
        _reference_file(ctx, step.export_reference_key, step.name)
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


# --------------------------------------------------------------------------------- extract


@dataclass(frozen=True)
class ExtractResult:
    """Values extracted by one step and the write-back operations (when ids are known)."""

    values: dict[str, Any]
    outcomes: list[ExtractOutcome]
    skipped_sources: list[str]
    operations: list[dict[str, Any]] | None = None


def run_extract_step(
    step: ExtractStep, ctx: ExportContext, *, secrets: Mapping[str, Any] | None = None
) -> tuple[ExportContext, ExtractResult]:
    """Run every source's rules; write values into the context (and plan write-back)."""
    values: dict[str, Any] = {}
    outcomes: list[ExtractOutcome] = []
    skipped: list[str] = []
    for index, source in enumerate(step.sources):
        label = source.source_reference_key or f"responses.{source.source_step}"
        gate = resolver_for(ctx, secrets=secrets, step=step.name)
        if not condition_passes(source.condition, gate):
            skipped.append(label)
            continue
        if source.source_step is not None:
            document = ctx.responses.get(source.source_step)
        else:
            document = ctx.references.get(source.source_reference_key or "")
        if document is None:
            raise ExtractionError(
                f"source {label!r} is not available (the producing step did not run or stored "
                "nothing)",
                step=step.name,
            )
        for rule in source.extract_rules:
            name = f"extract[{index}] {label} -> {rule.target_schema_id}"
            try:
                outcome = extract_value(
                    document=document,
                    fmt=source.format,
                    jmespath_expr=rule.value_path,
                    xpath=rule.xpath,
                    regex=rule.regex,
                    namespaces=source.namespaces,
                    target_schema_id=rule.target_schema_id,
                    required=rule.required,
                    rule=name,
                )
            except StepError as exc:
                raise exc.with_step(step.name) from exc
            if not outcome.found and rule.default is not None:
                outcome = ExtractOutcome(
                    outcome.rule,
                    rule.target_schema_id,
                    rule.default,
                    True,
                    f"{outcome.reason}; default used",
                )
            outcomes.append(outcome)
            if outcome.found:
                values[rule.target_schema_id] = outcome.value
    operations = None
    if step.writeback and values:
        try:
            operations = build_writeback_operations(ctx.content, values, step=step.name)
        except StepError:
            operations = None  # ids unknown in the export JSON; the engine resolves them
        ctx = ctx.with_values(values)
    return ctx, ExtractResult(values, outcomes, skipped, operations)


# -------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateOutcome:
    """Whether the export passed this evaluator, with the rendered message if not."""

    passed: bool
    level: Literal["error", "warning"]
    message: str | None = None

    def raise_if_failed(self, step: str | None = None) -> None:
        """Raise :class:`EvaluationFailed` for failed ``error``-level evaluations."""
        if not self.passed and self.level == "error":
            raise EvaluationFailed(self.message or "export evaluation failed", step=step)


def run_evaluate_step(step: EvaluateStep, ctx: ExportContext) -> EvaluateOutcome:
    """Evaluate the condition; ``condition`` true (or ``require`` false) means failure."""
    condition = compile_condition(step.expression)
    result = condition.evaluate(ctx)
    failed = result if step.fails_when_true else not result
    if not failed:
        return EvaluateOutcome(True, step.level)
    if step.message:
        names = build_namespace(ctx)
        variables = {**names, **ctx.template_vars(), "condition": step.expression}
        message = render_text(
            step.message, variables, key=f"{step.name}.message", undefined="lenient", step=step.name
        )
    else:
        verb = "is true" if step.fails_when_true else "is false"
        message = f"export failed: condition `{step.expression}` {verb}"
    return EvaluateOutcome(False, step.level, message)


# ---------------------------------------------------------------------------- file storage


@dataclass(frozen=True)
class PlannedFile:
    """One upload the engine must perform; ``load`` produces the bytes lazily."""

    path: str
    object_type: str
    content_type: str
    collision: str
    load: Callable[[], bytes]
    export_reference_key: str | None = None

    def read(self) -> bytes:
        """Bytes to upload."""
        return self.load()


def _xml_node(parent: etree._Element, node: Mapping[str, Any]) -> None:
    category = str(node.get("category") or "datapoint")
    element = etree.SubElement(parent, category, schema_id=str(node.get("schema_id", "")))
    if category == "datapoint":
        for attr in ("type", "rir_confidence"):
            if node.get(attr) is not None:
                element.set(attr, str(node[attr]))
        value = datapoint_value(node)
        element.text = "" if value is None else str(value)
    for child in node.get("children") or []:
        _xml_node(element, child)


def annotation_content_bytes(ctx: ExportContext, fmt: str) -> bytes:
    """Local rendering of Rossum's native export formats for one annotation.

    JSON is the export envelope with one result; CSV/XLSX are the tabular rows; XML follows
    the element layout of Rossum's ``queues_export.xsd`` samples. Engines that need Rossum's
    byte-exact output fetch ``/queues/{id}/export?id=..&format=..`` instead.
    """
    item = dict(ctx.item)
    item["content"] = ctx.content
    if fmt == "json":
        envelope = {
            "pagination": {"total": 1, "total_pages": 1, "next": None, "previous": None},
            "results": [item],
        }
        return json.dumps(envelope, ensure_ascii=False, indent=2).encode("utf-8")
    if fmt in ("csv", "xlsx"):
        rows = annotation_rows(ctx.content, typed=fmt == "xlsx")
        frame = rows_to_frame(rows)
        return frame_to_csv(frame) if fmt == "csv" else frame_to_xlsx(frame)
    if fmt == "xml":
        root = etree.Element("export")
        results = etree.SubElement(root, "results")
        annotation = etree.SubElement(results, "annotation", url=str(item.get("url") or ""))
        for key in ("status", "arrived_at", "exported_at"):
            etree.SubElement(annotation, key).text = str(item.get(key) or "")
        doc = item.get("document") or {}
        if isinstance(doc, Mapping):
            document = etree.SubElement(annotation, "document", url=str(doc.get("url") or ""))
            etree.SubElement(document, "file_name").text = str(doc.get("file_name") or "")
            etree.SubElement(document, "file").text = str(doc.get("file") or "")
        content = etree.SubElement(annotation, "content")
        for section in ctx.content:
            _xml_node(content, section)
        pagination = etree.SubElement(root, "pagination")
        for key, value in (("next", ""), ("previous", ""), ("total", "1"), ("total_pages", "1")):
            etree.SubElement(pagination, key).text = value or None
        return etree.tostring(root, xml_declaration=True, encoding="utf-8")
    raise StepError(f"unsupported annotation_content format {fmt!r}")


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _deferred(fetch: Callable[[str], bytes], fmt: str) -> Callable[[], bytes]:
    return lambda: fetch(fmt)


def plan_file_storage(
    step: FileStorageStep,
    ctx: ExportContext,
    *,
    counter: SequenceCounter | None = None,
    now: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
    root: str | None = None,
    annotation_content: Callable[[str], bytes] | None = None,
) -> list[PlannedFile]:
    """Paths and byte loaders of every object of every export rule for one annotation.

    ``annotation_content(fmt)`` supplies Rossum's native export bytes; by default they are
    rendered locally with :func:`annotation_content_bytes`.
    """
    renderer = FilenameRenderer(
        ctx,
        template_variables=step.template_variables,
        sequences=step.sequence_specs(),
        counter=counter,
        variables=step.variables,
        extra=extra,
        now=now,
        step=step.name,
    )
    fetch = annotation_content or (lambda fmt: annotation_content_bytes(ctx, fmt))
    flavor: Literal["sftp", "s3"] = "s3" if getattr(step, "type", "") == "s3" else "sftp"
    planned: list[PlannedFile] = []
    for rule in step.export_rules:
        for obj in rule.export_object_configurations:
            collision = (
                obj.filename_collision
                or rule.filename_collision
                or step.filename_collision
                or "replace"
            )
            if obj.type == "document":
                path = renderer.path(
                    rule.path_to_directory,
                    obj.filename_template,
                    flavor=flavor,
                    root=root,
                    document_suffix_from=ctx.original_file_name or "",
                )
                ctype = (
                    mimetypes.guess_type(ctx.original_file_name or "")[0]
                    or "application/octet-stream"
                )
                planned.append(
                    PlannedFile(path, obj.type, ctype, collision, lambda: ctx.file.original_file)
                )
            elif obj.type == "custom_format":
                rendered = _reference_file(ctx, obj.export_reference_key or "", step.name)
                path = renderer.path(
                    rule.path_to_directory, obj.filename_template, flavor=flavor, root=root
                )
                planned.append(
                    PlannedFile(
                        path,
                        obj.type,
                        rendered.content_type,
                        collision,
                        _constant(rendered.content),
                        obj.export_reference_key,
                    )
                )
            else:
                fmt = obj.format or "json"
                path = renderer.path(
                    rule.path_to_directory, obj.filename_template, flavor=flavor, root=root
                )
                planned.append(
                    PlannedFile(
                        path,
                        obj.type,
                        CONTENT_TYPES.get(fmt, "text/plain"),
                        collision,
                        _deferred(fetch, fmt),
                    )
                )
    paths = [p.path for p in planned]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise StepError(
            f"two objects would be written to the same path: {', '.join(dupes)}", step=step.name
        )
    return planned
