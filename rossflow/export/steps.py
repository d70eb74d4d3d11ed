"""Pure per-step logic the engine calls for one annotation (no I/O, no Prefect).

Each function takes the step config and an immutable :class:`ExportContext` and returns a new
context plus what the engine must do (send a request, upload files, write values back). The
engine owns HTTP/SFTP/S3, retries and Rossum API calls.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from lxml import etree

from rossflow.export.config import (
    CleanStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    TemplateStep,
)
from rossflow.export.context import ExportContext, build_writeback_operations, datapoint_value
from rossflow.export.errors import (
    EvaluationFailed,
    ExtractionError,
    StepError,
)
from rossflow.export.evaluate import build_namespace, compile_condition
from rossflow.export.extract import (
    ExtractOutcome,
    extract_value,
)
from rossflow.export.filenames import FilenameRenderer, SequenceCounter
from rossflow.export.placeholders import (
    condition_passes,
    resolver_for,
)
from rossflow.export.tabular import annotation_rows, frame_to_csv, frame_to_xlsx, rows_to_frame
from rossflow.export.templating import CONTENT_TYPES, RenderedFile, render_step, render_text

__all__ = [
    "EvaluateOutcome",
    "ExtractResult",
    "PlannedFile",
    "annotation_content_bytes",
    "plan_file_storage",
    "reference_file",
    "run_clean_step",
    "run_evaluate_step",
    "run_extract_step",
    "run_template_step",
    "step_enabled",
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


def reference_file(ctx: ExportContext, key: str, step: str) -> RenderedFile:
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
                rendered = reference_file(ctx, obj.export_reference_key or "", step.name)
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
