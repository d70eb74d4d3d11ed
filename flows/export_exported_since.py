"""The exported-since flow: annotations Rossum exported by itself → pipeline, status untouched.

    per queue: GET …/export?status=exported&exported_at_after=<watermark>&ordering=exported_at
      → prepare batch → step 1 → step 2 → … (the pipeline DAG) → report (no status change)
    → watermark advanced past what is finished; report (table + markdown artifacts, CSV)

The logic (claims, watermark, retries) is in :mod:`rossflow.export.exported_since`; this flow
loads blocks, runs the batches as Prefect tasks and publishes the report.
"""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from flows.export import load_run_inputs, task_steps
from rossflow.artifacts import ArtifactStore
from rossflow.export.batch import DocReport
from rossflow.export.engine import ExportEngine
from rossflow.export.exported_since import ExportedSince, ExportedSinceResult
from rossflow.export.report import markdown_summary, write_report_csv
from rossflow.export.run import run_batch, stages
from rossflow.ledger import Ledger
from rossflow.state.watermarks import WatermarkStore


async def _run_batch_as_tasks(
    engine: ExportEngine, queue_id: int, batch_no: int, items: list[dict[str, Any]]
) -> list[DocReport]:
    """One task per stage per batch, as in the confirmed-state export flow."""
    steps = task_steps(engine)
    batch = await steps.prepare(queue_id, batch_no, items)
    names = [step.name for step in engine.pipeline.topological_order()]
    groups, local = stages(names, steps.is_local)
    return await run_batch(steps, batch, groups, local, queue_id, batch_no)


@flow(name="rossflow-export-exported-since", log_prints=False)
async def export_exported_since(
    queues: list[int],
    pipeline: str,
    rossum: str = "rossum",
    secrets_block: str | None = None,
    batch_size: Annotated[int, Field(ge=1, le=100)] = 100,
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16,
    lookback_s: Annotated[float, Field(ge=0, le=86400)] = 120.0,
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3,
    start_at: datetime | None = None,
    state_dir: str = ".rossflow",
) -> dict[str, int]:
    """Deliver annotations that Rossum exported by itself; never changes their status.

    Args:
        queues: Rossum queue ids whose exported annotations are delivered.
        pipeline: Pipeline file (native YAML, or Rossum v1 hooks JSON), or its text.
        rossum: Name of the Rossum Credentials block.
        secrets_block: Rossflow Pipeline Secrets block for {secret.x} placeholders.
        batch_size: Annotations per batch (one Rossum page; at most 100).
        concurrency: Documents in flight per step within a batch.
        lookback_s: Seconds before the watermark read again on every run, so an annotation
            whose export committed late is not missed (the ledger skips those already done).
        max_attempts: Runs that may fail on one annotation before it is given up (reported,
            and the watermark moves past it; re-export it in Rossum to send it again).
        start_at: First run only (no watermark yet): deliver annotations exported at or after
            this time instead of every exported annotation of the queue.
        state_dir: Where the ledger, watermarks, stored requests/replies and reports live
            (ROSSFLOW_STATE_URL puts the ledger and watermarks in PostgreSQL instead).
    """
    logger = get_run_logger()
    config, creds, secrets, targets = await load_run_inputs(pipeline, rossum, secrets_block)
    state = Path(state_dir)
    ledger = Ledger(state / "ledger.db")
    watermarks = WatermarkStore(state / "state.db")
    results: list[ExportedSinceResult] = []
    client = creds.get_client()
    try:
        async with (
            client,
            ExportEngine(
                config,
                client,
                ledger=ledger,
                artifacts=ArtifactStore(state / "artifacts"),
                targets=targets,
                secrets=secrets,
                concurrency=concurrency,
                move_status=False,
            ) as engine,
        ):
            for queue_id in queues:
                result = await ExportedSince(
                    engine,
                    client,
                    ledger=ledger,
                    watermarks=watermarks,
                    queue_id=queue_id,
                    pipeline=config.name,
                    page_size=batch_size,
                    lookback_s=lookback_s,
                    max_attempts=max_attempts,
                    start_at=start_at,
                    run_batch=_run_batch_as_tasks,
                ).run()
                results.append(result)
                for warning in result.warnings:
                    logger.warning("%s", warning)
                logger.info(
                    "queue %s: %s; %s already delivered; %s left to another run; watermark %s → %s",
                    queue_id,
                    result.counts() or "nothing new",
                    result.already_done,
                    len(result.left_to_others),
                    result.watermark_before,
                    result.watermark_after,
                )
    finally:
        ledger.close()
        watermarks.close()
    reports = [r for result in results for r in result.reports]
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    if not reports:
        return counts
    run_name = flow_run.get_name() or "local"
    csv_path = write_report_csv(reports, state / "reports" / f"exported-since-{run_name}.csv")
    await acreate_table_artifact(
        [r.as_row() for r in reports[:5000]],
        key="exported-since-report",
        description=f"Exported-since delivery of queues {queues}: one row per annotation"
        f" (CSV: {csv_path})",
    )
    await acreate_markdown_artifact(
        markdown_summary(config.name, queues, reports, csv_path=str(csv_path)),
        key="exported-since-summary",
        description="Exported-since run summary",
    )
    return counts


__all__ = ["export_exported_since"]
