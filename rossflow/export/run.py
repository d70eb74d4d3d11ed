"""The export run loop in plain Python: pages of annotations → batches in flight → reports.

    for each queue: count → read a page (GET, never changes status) → prepare the batch
      → stage 1 → stage 2 → … → finalize (one move to ``exported``, failures marked)

A *stage* is one step with a side effect outside the run (a REST call, a file upload, code,
a Request Processor call, a write-back) together with the local steps just before it
(templates, evaluations, cleaning: pure transformations of the batch); local steps after
the last such step run with finalize (:func:`stages`). The Prefect flow runs each stage as one
task per batch, the last one with finalize, so the UI shows every step that touches another
system, and a batch through a one-stage pipeline costs one task run instead of one per step:
each task run costs the Prefect server ~40 ms of CPU and the flow ~8 ms, ~30 % of the export's
throughput at 5 per batch (docs/benchmarks-export.md).

``batches_in_flight`` batches deliver at once; a batch hands its turn on as soon as the last of
its documents holds a slot, so the next batch's documents queue for slots while this batch's
last calls and its status move finish (the target is not left idle between batches).

The Prefect flow drives this loop with its tasks as the batch callables and its progress
artifact as the progress callback; tests and the benchmark drive it with the engine's own
methods (:func:`engine_steps`). Mirrors :func:`rossflow.ingest.pipeline.run_ingest`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rossflow.gc_pause import steady_heap
from rossflow.rossum import RossumClient, chunked

if TYPE_CHECKING:  # kept light: the benchmark's baseline uses in_flight() alone
    from rossflow.ledger import Ledger

    from .batch import DocReport, ExportBatch
    from .engine import ExportEngine

log = logging.getLogger("rossflow.export")

T = TypeVar("T")
R = TypeVar("R")

Items = list[dict[str, Any]]
# progress(queue_id, done, total): called with done=0 when a queue starts, then per batch.
Progress = Callable[[int, int, int], Awaitable[None]]
# The step names a queue runs, in order (a hook's ``queues`` decides which steps form its chain).
StepOrder = Sequence[str] | Callable[[int], Sequence[str]]


@dataclass(frozen=True)
class BatchSteps:
    """How one batch is processed: ``prepare(queue_id, batch_no, items)``,
    ``run_stage(batch, step_names, queue_id, batch_no)`` and
    ``finalize(batch, local_steps, queue_id, batch_no)`` (the local steps after the last
    stage run first); ``is_local(step_name)`` tells the steps that join a neighbour's stage.
    """

    prepare: Callable[[int, int, Items], Awaitable[ExportBatch]]
    run_stage: Callable[[ExportBatch, list[str], int, int], Awaitable[Any]]
    finalize: Callable[[ExportBatch, list[str], int, int], Awaitable[list[DocReport]]]
    is_local: Callable[[str], bool] = lambda name: False
    # ``finish(batch, last_stage, local_steps, queue_id, batch_no)``: the last stage, the local
    # steps after it and finalize in one call (the flow: one task instead of two per batch).
    finish: (
        Callable[[ExportBatch, list[str], list[str], int, int], Awaitable[list[DocReport]]] | None
    ) = None


def stages(
    names: Sequence[str], is_local: Callable[[str], bool]
) -> tuple[list[list[str]], list[str]]:
    """The steps grouped into stages (each ends with a step that is not local), and the local
    steps left after the last stage (they run with finalize)."""
    groups: list[list[str]] = []
    pending: list[str] = []
    for name in names:
        pending.append(name)
        if not is_local(name):
            groups.append(pending)
            pending = []
    return groups, pending


async def run_batch(
    steps: BatchSteps,
    batch: ExportBatch,
    groups: Sequence[list[str]],
    local_tail: list[str],
    queue_id: int,
    batch_no: int,
    *,
    on_last_stage_dispatched: Callable[[], None] | None = None,
) -> list[DocReport]:
    """A prepared batch through its stages, then finalize (with the last stage when the steps
    have ``finish``). ``on_last_stage_dispatched`` is called once every active document of
    the last stage has its slot (see :meth:`ExportBatch.dispatched`)."""
    try:
        for index, group in enumerate(groups):
            last = index == len(groups) - 1
            if last:
                batch.on_dispatched = on_last_stage_dispatched
            if last and steps.finish is not None:
                return await steps.finish(batch, group, local_tail, queue_id, batch_no)
            await steps.run_stage(batch, group, queue_id, batch_no)
    finally:
        batch.on_dispatched = None
    return await steps.finalize(batch, local_tail, queue_id, batch_no)


def engine_steps(engine: ExportEngine) -> BatchSteps:
    """The engine's methods as batch steps (no Prefect)."""

    async def prepare(queue_id: int, batch_no: int, items: Items) -> ExportBatch:
        return await engine.new_batch(queue_id, items)

    async def run_stage(batch: ExportBatch, names: list[str], queue_id: int, no: int) -> Any:
        return await engine.run_steps(batch, names)

    async def finalize(
        batch: ExportBatch, local: list[str], queue_id: int, batch_no: int
    ) -> list[DocReport]:
        await engine.run_steps(batch, local)
        return await engine.finalize(batch)

    return BatchSteps(prepare, run_stage, finalize, engine.step_is_local)


async def in_flight(
    pages: AsyncIterable[list[T]],
    process: Callable[[list[T], int], Awaitable[R]],
    limit: int,
) -> list[R]:
    """Run ``process(page, batch_no)`` for each non-empty page, at most ``limit`` at a time.

    Batches already started finish even when reading the next page fails (their annotations
    get moved); the first error is raised after they are done.
    """
    slots = asyncio.Semaphore(max(1, limit))
    tasks: list[asyncio.Task[R]] = []

    async def one(page: list[T], no: int) -> R:
        try:
            return await process(page, no)
        finally:
            slots.release()

    try:
        async for page in pages:
            if not page:
                continue
            await slots.acquire()
            tasks.append(asyncio.create_task(one(page, len(tasks) + 1)))
    finally:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True) if tasks else []
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return list(outcomes)  # type: ignore[arg-type]


@dataclass
class ReplayLog:
    """What a replay refused (with the status that made it refuse) and did not find."""

    refused: list[DocReport] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


async def export_pages(
    client: RossumClient,
    queue_id: int,
    *,
    batch_size: int,
    total: int,
    annotation_ids: Sequence[int] | None = None,
    force: bool = False,
    ledger: Ledger | None = None,
    replay: ReplayLog | None = None,
) -> AsyncIterator[Items]:
    """Pages of the queue's confirmed annotations, or of the replayed ids: ``confirmed`` and
    ``failed_export`` ones (``exported`` only with ``force``); the rest is refused into
    ``replay`` (see :mod:`.replay`)."""
    if annotation_ids:
        from .replay import refusal_reports, select_for_replay  # the baseline never replays

        for chunk in chunked(list(annotation_ids), batch_size):
            items = await client.export(queue_id, ids=chunk)
            chosen = select_for_replay(items, chunk, force=force, ledger=ledger)
            if replay is not None:
                replay.refused += refusal_reports(chosen.refused, queue_id)
                replay.missing += chosen.missing
            yield chosen.accepted
    else:
        async for page in client.export_pages(queue_id, page_size=batch_size, total=total):
            yield page


async def export_queue(
    client: RossumClient,
    queue_id: int,
    order: StepOrder,
    steps: BatchSteps,
    *,
    batch_size: int = 100,
    batches_in_flight: int = 2,
    annotation_ids: Sequence[int] | None = None,
    force: bool = False,
    ledger: Ledger | None = None,
    progress: Progress | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> list[DocReport]:
    """Export one queue: every page as a batch through the pipeline steps in ``order``.

    ``force`` and ``ledger`` apply to a replay (``annotation_ids``): a forced re-send records a
    new attempt generation in the ledger, so the annotation gets new idempotency keys.
    """
    names = list(order(queue_id) if callable(order) else order)
    groups, local_tail = stages(names, steps.is_local)
    if annotation_ids:
        total = len(annotation_ids)
    else:
        total = await client.count_annotations(queue_id, "confirmed")
    logger.info("queue %s: %s annotation(s) to export", queue_id, total)
    if total == 0:
        return []
    if progress is not None:
        await progress(queue_id, 0, total)
    reports: list[DocReport] = []

    delivering = asyncio.Semaphore(max(1, batches_in_flight))

    async def process(items: Items, no: int) -> None:
        batch = await steps.prepare(queue_id, no, items)
        if annotation_ids:
            batch.any_status = True
        # At most batches_in_flight batches deliver at once; a batch gives its turn to the next
        # one when the last of its documents has a slot, so the next batch's documents are
        # waiting for slots while this one's last calls and its status move finish.
        await delivering.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                delivering.release()

        try:
            done = await run_batch(
                steps, batch, groups, local_tail, queue_id, no, on_last_stage_dispatched=release
            )
        finally:
            release()
        reports.extend(done)
        for report in done:  # skipped stages, abandoned calls, recorded non-2xx: never silent
            if report.warnings:
                logger.warning("annotation %s: %s", report.annotation_id, report.warnings)
        if progress is not None:
            await progress(queue_id, len(reports), total)
        logger.info("queue %s batch %s: %s", queue_id, no, count_outcomes(done))

    replay = ReplayLog()
    pages = export_pages(
        client,
        queue_id,
        batch_size=batch_size,
        total=total,
        annotation_ids=annotation_ids,
        force=force,
        ledger=ledger,
        replay=replay,
    )
    await in_flight(pages, process, _alive(batches_in_flight))
    for refusal in replay.refused:
        logger.warning("queue %s: %s", queue_id, refusal.message)
    if replay.missing:
        logger.warning("queue %s: not in this queue: %s", queue_id, replay.missing[:20])
    return reports + replay.refused


def _alive(batches_in_flight: int) -> int:
    """Batches held in memory at once: those delivering, as many finishing (their tail of
    calls, their status move) and one prepared to start as soon as a delivery slot frees."""
    return 2 * max(1, batches_in_flight) + 1


async def run_export(
    client: RossumClient,
    queues: Sequence[int],
    order: StepOrder,
    steps: BatchSteps,
    **options: Any,
) -> list[DocReport]:
    """Export every queue in turn (options as for :func:`export_queue`)."""
    reports: list[DocReport] = []
    with steady_heap():  # the run's garbage, not the process's imports, is what gets collected
        for queue_id in queues:
            reports += await export_queue(client, queue_id, order, steps, **options)
    return reports


def count_outcomes(reports: Sequence[DocReport]) -> dict[str, int]:
    out: dict[str, int] = {}
    for report in reports:
        out[report.outcome] = out.get(report.outcome, 0) + 1
    return out


__all__ = [
    "BatchSteps",
    "ReplayLog",
    "count_outcomes",
    "engine_steps",
    "export_pages",
    "export_queue",
    "in_flight",
    "run_batch",
    "run_export",
    "stages",
]
