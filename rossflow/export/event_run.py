"""Export-event mode: run the pipeline over hook payloads and turn the outcome into hook results.

Rossum sends the annotation (with its content tree) and the document in the
``annotation_content.export`` call, and applies what the hook answers: ``messages`` (an
``error`` one sends the annotation to ``failed_export``) and ``operations``. So this mode reads
nothing from Rossum and writes nothing to it:

* the template context ``payload`` is the hook payload itself (minus the credentials, which are
  never stored: ``rossum_authorization_token`` and ``secrets``);
* extract steps with ``writeback`` return ``replace`` operations on the datapoint ids of the
  payload's content tree instead of calling the content API (:class:`EventExportEngine`);
* failures become one ``error`` message naming step, target, HTTP status and reply excerpt;
  deliveries and written-back values become ``info`` messages, warnings ``warning`` ones.

The delivery ledger makes a rerun of the same job (Rossum's retry, ``PATCH exporting``, a worker
that died) reuse every delivery that succeeded; a forced job (hook ``settings.force_resend``,
annotation metadata ``rossflow_force_resend``) or a retry under a pipeline with
``defaults.resend_on_retry`` forgets them first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rossflow.webhook.jobs import Job

from .batch import DocState, ExportBatch
from .context import build_context, build_writeback_operations
from .engine import ExportEngine
from .errors import StepError
from .steps import run_extract_step


@dataclass(frozen=True)
class JobOutcome:
    """What one job's run answers Rossum with."""

    job_id: str
    generation: int
    annotation_id: int
    ok: bool
    result: dict[str, Any]


class EventExportEngine(ExportEngine):
    """The export engine with write-back collected as hook ``operations`` (no Rossum call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.operations: dict[int, list[dict[str, Any]]] = {}
        self.written: dict[int, dict[str, Any]] = {}

    async def _extract(self, step: Any, doc: DocState) -> bool:
        doc.ctx, result = run_extract_step(step, doc.ctx, secrets=self._secrets_for(step))
        if not (step.writeback and result.values) or self.dry_run:
            return True
        ops = result.operations
        if ops is None:
            content = doc.ctx.item["annotation"].get("content") or []
            try:
                ops = build_writeback_operations(content, result.values, step=step.name)
            except StepError as exc:
                raise exc.with_step(step.name) from exc
        self.operations.setdefault(doc.annotation_id, []).extend(ops)
        self.written.setdefault(doc.annotation_id, {}).update(result.values)
        return True


def job_batch(
    engine: ExportEngine, jobs: Sequence[Job], originals: Mapping[int, bytes]
) -> ExportBatch:
    """One batch over the jobs' payloads (the content tree comes with the payload)."""
    docs: list[DocState] = []
    for job in jobs:
        payload = job.payload
        document = payload.get("document") if isinstance(payload.get("document"), dict) else {}
        doc_id = document.get("id")
        name = str(document.get("original_file_name") or "")

        def original(doc_id: Any = doc_id, ann: int = job.annotation_id) -> bytes:
            if doc_id not in originals:
                raise StepError(
                    f"original file of annotation {ann} was not downloaded", step="download"
                )
            return originals[doc_id]

        try:
            ctx = build_context(payload, original_file=original)
        except StepError as exc:
            ctx = build_context({**payload, "annotation": {**payload["annotation"], "content": []}})
            state = DocState(job.annotation_id, job.queue_id, name, ctx, status="exporting")
            state.fail(exc.with_step("load"))
            docs.append(state)
            continue
        docs.append(DocState(job.annotation_id, job.queue_id, name, ctx, status="exporting"))
    queue_id = jobs[0].queue_id if jobs else 0
    return ExportBatch(queue_id, docs, any_status=True)


def _info(doc: DocState, written: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = []
    failed_step = doc.error.step if doc.error is not None else None
    for d in doc.deliveries:
        if d["step"] == failed_step:
            continue  # the error message says what happened there
        status = f" answered HTTP {d['http_status']}" if d.get("http_status") is not None else ""
        if d["state"] == "already_delivered":
            text = f"{d['step']}: {d['target']} already delivered earlier; not sent again"
        else:
            text = f"{d['step']}: delivered to {d['target']}{status}"
        messages.append({"id": "all", "type": "info", "content": text})
    if written:
        pairs = ", ".join(f"{k} = {v}" for k, v in written.items())
        messages.append({"id": "all", "type": "info", "content": f"written back: {pairs}"})
    return messages


def job_outcomes(
    engine: EventExportEngine, batch: ExportBatch, jobs: Sequence[Job]
) -> list[JobOutcome]:
    """Hook results of a batch whose steps all ran (same order as ``jobs``)."""
    out = []
    for job, doc in zip(jobs, batch.docs, strict=True):
        messages: list[dict[str, Any]] = []
        if doc.error is not None:
            messages.append({"id": "all", "type": "error", "content": doc.error.message()})
        messages += _info(doc, engine.written.get(doc.annotation_id, {}))
        messages += [{"id": "all", "type": "warning", "content": w} for w in doc.warnings]
        result = {"messages": messages, "operations": engine.operations.get(doc.annotation_id, [])}
        out.append(
            JobOutcome(job.job_id, job.generation, job.annotation_id, doc.error is None, result)
        )
    return out


async def run_jobs(engine: EventExportEngine, jobs: Sequence[Job]) -> list[JobOutcome]:
    """Run the whole pipeline for these jobs; one document's failure never stops the others."""
    resend = engine.pipeline.defaults.resend_on_retry
    for job in jobs:
        if job.force or (resend and job.generation > 1):
            engine.ledger.forget("delivery", str(job.annotation_id))
            engine.ledger.forget("plan", str(job.annotation_id))
    originals: dict[int, bytes] = {}
    if engine.needs_original and engine.client is not None:
        items = [{"document": j.payload.get("document") or {}} for j in jobs]
        originals = await engine._download_originals(items)
    batch = job_batch(engine, jobs, originals)
    for step in engine.pipeline.topological_order():
        await engine.run_step(batch, step.name)
    return job_outcomes(engine, batch, jobs)


def failed_outcomes(jobs: Sequence[Job], text: str) -> list[JobOutcome]:
    """Every job answered with the same ``error`` message (the run itself could not work)."""
    result = {"messages": [{"id": "all", "type": "error", "content": text}], "operations": []}
    return [JobOutcome(j.job_id, j.generation, j.annotation_id, False, result) for j in jobs]
