"""Prefect tasks of the export flow: one task per pipeline step per batch (never per document).

The tasks are thin: the work is in :class:`rossflow.export.engine.ExportEngine`. They pass live
objects (engine, batch) between each other inside one flow run, so caching and result
persistence are off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rossflow.export.batch import DocReport, ExportBatch
from rossflow.export.engine import ExportEngine

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="prepare-batch", task_run_name="prepare q{queue_id} b{batch_no}", **_TASK)
async def prepare_batch(
    engine: ExportEngine, queue_id: int, batch_no: int, items: Sequence[Mapping[str, Any]]
) -> ExportBatch:
    """Build the template context of each annotation (and download originals if needed)."""
    return await engine.new_batch(queue_id, items)


@task(name="pipeline-step", task_run_name="{step_name} q{queue_id} b{batch_no}", **_TASK)
async def run_step(
    engine: ExportEngine, batch: ExportBatch, step_name: str, queue_id: int, batch_no: int
) -> dict[str, int]:
    """Run one pipeline step for all documents of the batch (bounded concurrency inside)."""
    return await engine.run_step(batch, step_name)


@task(name="finalize-batch", task_run_name="finalize q{queue_id} b{batch_no}", **_TASK)
async def finalize_batch(
    engine: ExportEngine, batch: ExportBatch, queue_id: int, batch_no: int
) -> list[DocReport]:
    """One ``to_status=exported`` call for the successes; ``failed_export`` for failures."""
    return await engine.finalize(batch)
