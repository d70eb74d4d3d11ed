"""Prefect tasks of the export flow, per batch (never per document): one task per stage (a
step that reaches another system, with the local steps just before it; see
:func:`rossflow.export.run.stages`); the last stage carries the local steps after it and
finalize, so a batch through a one-stage pipeline is one task run.

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


@task(name="pipeline-step", task_run_name="{label} q{queue_id} b{batch_no}", **_TASK)
async def run_stage(
    engine: ExportEngine,
    batch: ExportBatch,
    step_names: list[str],
    label: str,
    queue_id: int,
    batch_no: int,
) -> dict[str, int]:
    """Run the stage's steps, in order, for all documents of the batch (bounded concurrency
    inside); ``label`` names them in the UI (``render+post_invoice``)."""
    return await engine.run_steps(batch, step_names)


@task(name="finalize-batch", task_run_name="{label} q{queue_id} b{batch_no}", **_TASK)
async def finalize_batch(
    engine: ExportEngine,
    batch: ExportBatch,
    local_steps: list[str],
    label: str,
    queue_id: int,
    batch_no: int,
) -> list[DocReport]:
    """The local steps after the last stage, then one ``to_status=exported`` call for the
    successes and ``failed_export`` for failures."""
    await engine.run_steps(batch, local_steps)
    return await engine.finalize(batch)


@task(name="finish-batch", task_run_name="{label} q{queue_id} b{batch_no}", **_TASK)
async def finish_batch(
    engine: ExportEngine,
    batch: ExportBatch,
    step_names: list[str],
    local_steps: list[str],
    label: str,
    queue_id: int,
    batch_no: int,
) -> list[DocReport]:
    """The last stage, the local steps after it, then finalize (``render+post_invoice+check+
    finalize``): each task run costs the Prefect server ~40 ms of CPU recording its states,
    as much as ~40 documents' deliveries (docs/benchmarks-export.md)."""
    await engine.run_steps(batch, [*step_names, *local_steps])
    return await engine.finalize(batch)
