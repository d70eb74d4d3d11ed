"""Runs an export pipeline over a batch of annotations, one step at a time (orchestration).

The flow calls :meth:`ExportEngine.run_steps` once per stage per batch (a step that reaches
another system and the local steps before it: the Prefect UI shows one task per stage per
batch, never one per document) and :meth:`ExportEngine.finalize` once per batch. Inside a
step the documents run concurrently: at most ``in_flight`` of them in the whole run
(``concurrency`` × batches in flight, for the flow), so the target never sees more than that
many calls at once, and a batch can use the slots another batch leaves idle. The work of
each step kind lives beside this module: REST in :mod:`.rest_step`, SFTP/S3 in
:mod:`.file_step`, the pure transformations in :mod:`.steps`; batch state in :mod:`.batch`.

A failure of one document never stops the others: it ends that document's pipeline with a
message that names the step, the target, the HTTP status and an excerpt of the reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from rossflow.artifacts import ArtifactStore
from rossflow.ledger import Ledger
from rossflow.redaction import Redactor
from rossflow.rossum import RossumClient, RossumError, id_from_url

from . import code_step
from .batch import ArtifactWriter, DocReport, DocState, ExportBatch, OnFailure, Outcome
from .config import (
    CleanStep,
    CodeStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    PipelineConfig,
    RestStep,
    RpEvaluateStep,
    RpStepBase,
    TemplateStep,
)
from .context import build_context, build_writeback_operations
from .errors import StepError
from .file_step import FileStorer
from .rest_step import RestSender
from .rp.runner import RequestProcessor
from .steps import (
    run_clean_step,
    run_evaluate_step,
    run_extract_step,
    run_template_step,
    step_enabled,
)
from .targets import Targets

log = logging.getLogger("rossflow.export")


def pipeline_needs_original(pipeline: PipelineConfig) -> bool:
    """Whether any step reads the original document (so the batch pre-downloads it)."""
    for step in pipeline.steps:
        dump = json.dumps(step.model_dump(mode="json"), default=str)
        if "original_file" in dump:
            return True
        if isinstance(step, FileStorageStep) and any(
            obj.type == "document"
            for rule in step.export_rules
            for obj in rule.export_object_configurations
        ):
            return True
        if (
            isinstance(step, RestStep)
            and step.request.body_kind == "multipart"
            and not step.export_reference_key
        ):
            return True
    return False


class ExportEngine:
    """Pipeline runner for one run (create one per flow run; use as an async context)."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        client: RossumClient,
        *,
        ledger: Ledger,
        artifacts: ArtifactStore,
        targets: Targets | None = None,
        secrets: Mapping[str, Any] | None = None,
        concurrency: int = 16,
        in_flight: int | None = None,
        file_concurrency: int = 4,
        dry_run: bool = False,
        on_failure: OnFailure = "failed_export",
        move_status: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.ledger = ledger
        self.artifacts = artifacts
        self.targets = targets or Targets()
        self.secrets: dict[str, Any] = dict(secrets or {})
        self.concurrency = max(1, concurrency)
        # Documents in a step at once over the whole run (all batches in flight together):
        # a batch may use the slots another leaves idle while it reads, prepares or moves.
        self.in_flight = max(self.concurrency, in_flight or self.concurrency)
        self._slots = asyncio.Semaphore(self.in_flight)
        self.file_concurrency = max(1, file_concurrency)
        self.dry_run = dry_run
        self.on_failure = on_failure
        # Exported-since mode (rossflow.export.exported_since): Rossum already exported these
        # annotations; finalize reports outcomes and changes no status in Rossum.
        self.move_status = move_status
        self._rp: RequestProcessor | None = None
        self.needs_original = pipeline_needs_original(pipeline)
        # Every secret value of this run, masked wherever a reply is stored or quoted; targets
        # and run-time tokens are added as they are resolved or obtained.
        self.redactor = Redactor()
        self.redactor.add_from(self.secrets)
        for step in pipeline.steps:
            self.redactor.add_from(dict(getattr(step, "secrets", None) or {}))
        self._stack = AsyncExitStack()
        self.writer = ArtifactWriter(artifacts, self.redactor)
        self.rest = RestSender(
            pipeline,
            targets=self.targets,
            ledger=ledger,
            redactor=self.redactor,
            store=self.writer.store,
            stack=self._stack,
            concurrency=self.in_flight,
            dry_run=dry_run,
        )
        self.files = FileStorer(
            pipeline,
            targets=self.targets,
            ledger=ledger,
            redactor=self.redactor,
            file_concurrency=self.file_concurrency,
            dry_run=dry_run,
        )

    async def __aenter__(self) -> ExportEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._rp is not None:
            await self._rp.aclose()
        await self._stack.aclose()
        await self.files.aclose()
        self.writer.close()

    # -- batches -----------------------------------------------------------------------

    async def new_batch(self, queue_id: int, items: Sequence[Mapping[str, Any]]) -> ExportBatch:
        """Build per-annotation contexts; pre-download originals if a step needs them."""
        originals: dict[int, bytes] = {}
        if self.needs_original:
            originals = await self._download_originals(items)
        docs = []
        for item in items:
            ann_id = id_from_url(item["url"])
            document = item.get("document") or {}
            doc_url = document.get("url") if isinstance(document, Mapping) else None
            doc_id = id_from_url(doc_url) if doc_url else None

            def original(doc_id: int | None = doc_id, ann: int = ann_id) -> bytes:
                if doc_id is None or doc_id not in originals:
                    raise StepError(
                        f"original file of annotation {ann} was not downloaded", step="download"
                    )
                return originals[doc_id]

            try:
                # the page was read for this batch alone: its content needs no copy
                ctx = build_context(item, original_file=original, copy_content=False)
            except StepError as exc:
                ctx = build_context({**item, "content": []})
                state = DocState(ann_id, queue_id, document.get("file_name") or "", ctx)
                state.fail(exc.with_step("load"))
                docs.append(state)
                continue
            docs.append(
                DocState(
                    ann_id,
                    queue_id,
                    str(document.get("file_name") or ""),
                    ctx,
                    status=str(item.get("status") or "confirmed"),
                )
            )
        generations = self.ledger.generations(str(d.annotation_id) for d in docs)
        for doc in docs:
            doc.generation = generations.get(str(doc.annotation_id), 0)
        return ExportBatch(queue_id, docs)

    async def _download_originals(self, items: Sequence[Mapping[str, Any]]) -> dict[int, bytes]:
        sem = asyncio.Semaphore(self.concurrency)
        out: dict[int, bytes] = {}

        async def one(doc_url: str) -> None:
            async with sem:
                try:
                    out[id_from_url(doc_url)] = await self.client.download_document(doc_url)
                except RossumError as exc:
                    log.warning("could not download %s: %s", doc_url, exc)

        urls = {
            str(item["document"]["url"])
            for item in items
            if isinstance(item.get("document"), Mapping) and item["document"].get("url")
        }
        await asyncio.gather(*(one(u) for u in urls))
        return out

    # -- steps -------------------------------------------------------------------------

    def step_is_local(self, step_name: str) -> bool:
        """A step that only transforms the batch in this process (template, evaluate, clean,
        extract without write-back): it needs no task or retry boundary of its own."""
        step = self.pipeline.step(step_name)
        if isinstance(step, ExtractStep):
            return not step.writeback
        return isinstance(step, TemplateStep | EvaluateStep | CleanStep | RpEvaluateStep)

    async def run_steps(self, batch: ExportBatch, step_names: Sequence[str]) -> dict[str, int]:
        """Run steps one after the other; the counts of all of them."""
        total = {"ran": 0, "skipped": 0, "failed": 0}
        for name in step_names:
            for key, value in (await self.run_step(batch, name)).items():
                total[key] = total.get(key, 0) + value
        return total

    async def run_step(self, batch: ExportBatch, step_name: str) -> dict[str, int]:
        """Run one step for every still-active document of the batch; returns counts."""
        step = self.pipeline.step(step_name)
        sem = self._slots
        counts = {"ran": 0, "skipped": 0, "failed": 0}
        # The step that reaches another system: once the last of its documents has a slot, the
        # batch tells the run loop, which lets the next batch start while this one's tail runs.
        waiting = -1 if self.step_is_local(step_name) else sum(1 for d in batch.docs if d.active)

        async def one(doc: DocState) -> None:
            nonlocal waiting
            if not doc.active:
                return
            async with sem:
                if waiting > 0:
                    waiting -= 1
                    if waiting == 0:
                        batch.dispatched()
                try:
                    if not step_enabled(step, doc.ctx):
                        counts["skipped"] += 1
                        return
                    ran = await self._run_for_doc(step, doc)
                    counts["ran" if ran else "skipped"] += 1
                except StepError as exc:
                    doc.fail(exc.with_step(step.name))
                except Exception as exc:
                    log.error(
                        "step %s crashed for annotation %s: %s",
                        step.name,
                        doc.annotation_id,
                        self.redactor(f"{type(exc).__name__}: {exc}"),
                    )
                    doc.fail(
                        StepError(
                            f"internal error: {type(exc).__name__}: {exc}",
                            step=step.name,
                            secrets=self.redactor,
                        )
                    )
                if doc.error is not None:
                    counts["failed"] += 1
                    log.info(
                        "annotation %s failed at %s: %s",
                        doc.annotation_id,
                        step.name,
                        self.redactor(doc.error.message()),
                    )

        try:
            await asyncio.gather(*(one(d) for d in batch.docs))
        finally:
            await self.writer.flush()
        return counts

    async def _run_for_doc(self, step: Any, doc: DocState) -> bool:
        if isinstance(step, CleanStep):
            doc.ctx, _ = run_clean_step(step, doc.ctx)
            if not self.dry_run:
                self.artifacts.purge(doc.annotation_id)
            return True
        if isinstance(step, TemplateStep):
            doc.ctx, files = run_template_step(step, doc.ctx)
            if files:
                await self.writer.store(
                    doc, step.name, [(r.key + r.extension, r.content) for r in files]
                )
            return True
        if isinstance(step, RestStep):
            return await self.rest.run(step, doc, self._secrets_for(step))
        if isinstance(step, ExtractStep):
            return await self._extract(step, doc)
        if isinstance(step, EvaluateStep):
            outcome = run_evaluate_step(step, doc.ctx)
            if not outcome.passed and outcome.level == "warning" and outcome.message:
                doc.warnings.append(outcome.message)
            outcome.raise_if_failed(step.name)
            return True
        if isinstance(step, FileStorageStep):
            return await self.files.run(step, doc, self._secrets_for(step))
        if isinstance(step, CodeStep):
            return await code_step.run_for_engine(self, step, doc)
        if isinstance(step, RpStepBase):
            return await self._request_processor().run(step, doc)
        raise StepError(f"unsupported step type {type(step).__name__}", step=step.name)

    def _request_processor(self) -> RequestProcessor:
        """Runner of Request Processor (v2) steps, created on first use."""
        if self._rp is None:
            self._rp = RequestProcessor(
                client=self.client,
                ledger=self.ledger,
                store=self._store_for_rp,
                upload=self.files._put,
                secrets=self._secrets_for,
                compat=self.pipeline.compat,
                dry_run=self.dry_run,
                concurrency=self.concurrency,
            )
        return self._rp

    async def _store_for_rp(
        self, doc: DocState, step: str, files: list[tuple[str, bytes]], secrets: list[str]
    ) -> None:
        """Stored requests/replies of Request Processor steps, with their secrets masked."""
        self.redactor.add(*secrets)
        await self.writer.store(doc, step, files)

    def _secrets_for(self, step: Any) -> dict[str, Any]:
        merged = dict(self.secrets)
        merged.update(getattr(step, "secrets", {}) or {})
        return merged

    # -- extract / write-back ------------------------------------------------------------

    async def _extract(self, step: ExtractStep, doc: DocState) -> bool:
        doc.ctx, result = run_extract_step(step, doc.ctx, secrets=self._secrets_for(step))
        if not (step.writeback and result.values) or self.dry_run:
            return True
        ops = result.operations
        if ops is None:
            content = await self.client.get_annotation_content(doc.annotation_id)
            try:
                ops = build_writeback_operations(content, result.values, step=step.name)
            except StepError as exc:
                raise exc.with_step(step.name) from exc
        if ops:
            try:
                await self.client.content_operations(doc.annotation_id, ops)
            except RossumError as exc:
                raise StepError(
                    f"writing {sorted(result.values)} back to Rossum failed: "
                    + self.redactor(str(exc.detail or exc)),
                    step=step.name,
                    target="rossum",
                    http_status=exc.status,
                ) from exc
        return True

    # -- finalize ------------------------------------------------------------------------

    async def _move_exported(
        self, queue_id: int, docs: Sequence[DocState]
    ) -> tuple[dict[int, str], RossumError | None]:
        """Move delivered annotations to ``exported``; returns the status each is in.

        When the answer to the move is lost (the connection dropped after Rossum processed
        it, the retry then finds nothing ``confirmed``) the annotations' real status is read
        back with one ``GET`` filtered by their ids, so the report says what is true.
        """
        moved: dict[int, str] = {}
        error: RossumError | None = None
        try:
            # A replayed annotation (e.g. failed_export) goes back to confirmed first, so
            # that the move below is the same batched export call as for any other.
            # A forced re-send of an exported annotation stays exported: no move.
            await gather_limited(
                (
                    self.client.set_status(d.annotation_id, "confirmed")
                    for d in docs
                    if d.status not in ("confirmed", "exported")
                ),
                self.concurrency,
            )
            moved = await self.client.move_to_status(
                queue_id, [d.annotation_id for d in docs if d.status != "exported"]
            )
            moved.update({d.annotation_id: "exported" for d in docs if d.status == "exported"})
        except RossumError as exc:
            error = exc
        missing = [d.annotation_id for d in docs if moved.get(d.annotation_id) != "exported"]
        if missing:
            try:
                async for item in self.client.list_annotations(ids=missing):
                    moved[id_from_url(item["url"])] = str(item.get("status") or "")
            except RossumError as exc:
                log.warning("could not read back the status of %s: %s", missing[:20], exc)
            error = await self._move_marked_meanwhile(queue_id, docs, moved) or error
        return moved, error

    async def _move_marked_meanwhile(
        self, queue_id: int, docs: Sequence[DocState], moved: dict[int, str]
    ) -> RossumError | None:
        """Delivered by this run, but an overlapping run that failed its own attempt marked
        them ``failed_export`` after this run read them ``confirmed``: the delivery is what is
        true (and no later run would pick a ``failed_export`` annotation up), so move them."""
        stale = [
            d.annotation_id
            for d in docs
            if d.status == "confirmed" and moved.get(d.annotation_id) == "failed_export"
        ]
        if not stale:
            return None
        try:
            await gather_limited(
                (self.client.set_status(i, "confirmed") for i in stale), self.concurrency
            )
            moved.update(await self.client.move_to_status(queue_id, stale))
        except RossumError as exc:
            return exc
        return None

    async def finalize(self, batch: ExportBatch) -> list[DocReport]:
        """Move successes to ``exported`` in one call; failures to ``failed_export``."""
        ok = [d for d in batch.docs if d.error is None and not d.dry_stopped]
        failed = [d for d in batch.docs if d.error is not None]
        if not self.move_status and not self.dry_run:
            return self._reports_without_moves(batch, ok, failed)
        if self.dry_run:
            for doc in batch.docs:
                if doc.error is None:
                    doc.outcome, doc.message = "dry_run", "rendered; nothing delivered"
        elif ok:
            moved, move_error = await self._move_exported(batch.queue_id, ok)
            for doc in ok:
                status = moved.get(doc.annotation_id)
                if status:
                    doc.status = status
                if status == "exported":
                    doc.outcome = "exported"
                    doc.message = _summary(doc)
                elif move_error is not None and status in (None, "confirmed"):
                    doc.outcome = "not_moved"
                    doc.message = f"delivered, but moving to exported failed: {move_error}"
                else:
                    doc.outcome = "not_moved"
                    doc.message = (
                        f"delivered, but Rossum left it {status or 'unchanged'}; "
                        "the next run will move it"
                    )
        sem = asyncio.Semaphore(self.concurrency)
        delivered_elsewhere = self.rest.delivered_by_another_run(failed) if failed else set()

        async def fail(doc: DocState) -> None:
            assert doc.error is not None
            doc.message = self.redactor(doc.error.message())
            if doc.annotation_id in delivered_elsewhere:
                # an overlapping run took the failed call over and delivered it: its result
                # stands (it moves the annotation), this run's failure is stale
                doc.outcome = "not_moved"
                doc.message = f"{doc.message}; but another run delivered it since: left to it"
                return
            # Counted apart: the target may have created the document (check before retrying).
            uncertain: Outcome | None = "failed_uncertain" if doc.error.uncertain else None
            if self.dry_run or self.on_failure == "keep_confirmed":
                doc.outcome = "dry_run" if self.dry_run else uncertain or "failed_kept_confirmed"
                return
            async with sem:
                try:
                    await self.client.mark_failed_export(doc.annotation_id, doc.message)
                    doc.outcome, doc.status = uncertain or "failed_export", "failed_export"
                except RossumError as exc:
                    doc.outcome = uncertain or "failed_kept_confirmed"
                    doc.message += f" (could not set failed_export: {exc})"

        await asyncio.gather(*(fail(d) for d in failed))
        return self._reports(batch, default="not_moved")

    def _reports(self, batch: ExportBatch, *, default: Outcome) -> list[DocReport]:
        """One report row per annotation, secrets masked (``default``: no outcome was set)."""
        return [
            DocReport(
                annotation_id=d.annotation_id,
                queue_id=d.queue_id,
                file_name=d.file_name,
                outcome=d.outcome or default,
                target=d.last_target or "",
                http_status=d.last_http_status,
                message=self.redactor(d.message),
                warnings=self.redactor("; ".join(d.warnings)),
                status=d.status,
                step=(d.error.step or "") if d.error is not None else "",
            )
            for d in batch.docs
        ]

    def _reports_without_moves(
        self, batch: ExportBatch, ok: list[DocState], failed: list[DocState]
    ) -> list[DocReport]:
        """``move_status=False``: ``delivered``/``failed`` outcomes; no Rossum call at all."""
        for doc in ok:
            doc.outcome, doc.message = "delivered", _summary(doc)
        for doc in failed:
            assert doc.error is not None
            doc.outcome, doc.message = "failed", doc.error.message()
        return self._reports(batch, default="failed")


def _summary(doc: DocState) -> str:
    if not doc.deliveries:
        return "no delivery step ran"
    parts = []
    for d in doc.deliveries:
        status = f" {d['http_status']}" if d.get("http_status") is not None else ""
        parts.append(
            f"{d['step']}{status}" + (" (reused)" if d["state"] == "already_delivered" else "")
        )
    return ", ".join(parts)


async def gather_limited(coros: Iterable[Awaitable[Any]], limit: int) -> list[Any]:
    """``asyncio.gather`` with at most ``limit`` coroutines running."""
    sem = asyncio.Semaphore(limit)

    async def run(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))
