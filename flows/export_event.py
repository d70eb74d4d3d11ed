"""The export-event flow: export jobs recorded by ``rossflow webhook`` → pipeline → hook results.

    claim pending jobs of the queues (with a lease, renewed while working)
      → one task per batch: the pipeline over the hook payloads (no Rossum request)
      → store each job's result ({"messages", "operations"}) → the polling URL answers 201
    → repeat until no job is pending

Rossum then moves the annotation to ``exported`` (or ``failed_export`` on an ``error``
message) and applies the operations. A run triggered by one event takes every pending job of
its queues, so a burst of export calls becomes one run (see docs/triggers.md).
"""

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from pydantic import Field

from blocks import PipelineSecrets, RossumCredentials
from flows.export import load_pipeline_source, resolve_targets
from rossflow.artifacts import ArtifactStore
from rossflow.export.event_run import EventExportEngine, JobOutcome, failed_outcomes, run_jobs
from rossflow.ledger import Ledger
from rossflow.webhook.jobs import Job, JobStore


@task(
    name="export-jobs",
    task_run_name="jobs q{queues} b{batch_no}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def export_jobs(
    engine: EventExportEngine, jobs: list[Job], queues: list[int], batch_no: int
) -> list[JobOutcome]:
    """The whole pipeline for one batch of jobs (bounded concurrency inside)."""
    return await run_jobs(engine, jobs)


@flow(name="rossum-export-event", log_prints=False)
async def export_event(
    queues: list[int],
    pipeline: str,
    jobs_db: str = ".rossflow/export-jobs.db",
    state_dir: str = ".rossflow/export-state",
    rossum: str | None = None,
    secrets_block: str | None = None,
    batch_size: Annotated[int, Field(ge=1, le=500)] = 100,
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16,
    lease_s: Annotated[float, Field(ge=1, le=3600)] = 60.0,
) -> dict[str, int]:
    """Answer Rossum's annotation_content.export calls recorded by rossflow webhook.

    Args:
        queues: Rossum queue ids whose export jobs this run takes.
        pipeline: Pipeline file (native YAML, or Rossum v1 hooks JSON), or its text.
        jobs_db: Export job store shared with rossflow webhook (--jobs-db).
        state_dir: Where the delivery ledger and stored requests/replies live.
        rossum: Rossum Credentials block, only for pipelines that read the original file.
        secrets_block: Rossflow Pipeline Secrets block for {secret.x} placeholders.
        batch_size: Jobs per batch.
        concurrency: Documents in flight per step within a batch.
        lease_s: A claimed job goes back to the queue when the run stops renewing it this long.
    """
    logger = get_run_logger()
    store = JobStore(jobs_db)
    counts = {"exported": 0, "failed": 0, "superseded": 0}
    try:
        try:
            config = load_pipeline_source(pipeline)
            targets = await resolve_targets(config)
            secrets = (
                dict((await PipelineSecrets.aload(secrets_block)).values) if secrets_block else {}
            )
        except Exception as exc:
            text = f"pipeline {pipeline} could not be loaded, nothing was exported: {exc}"
            claimed = store.claim(queues, lease_s=lease_s, limit=10_000)
            _store(store, failed_outcomes(claimed, text), counts)
            raise
        client: Any = None
        state = Path(state_dir)
        ledger = Ledger(state / "ledger.db")
        async with contextlib.AsyncExitStack() as stack:
            from rossflow.export.engine import pipeline_needs_original

            if rossum and pipeline_needs_original(config):
                client = await stack.enter_async_context(
                    (await RossumCredentials.aload(rossum)).get_client()
                )
            engine = await stack.enter_async_context(
                EventExportEngine(
                    config,
                    client,
                    ledger=ledger,
                    artifacts=ArtifactStore(state / "artifacts"),
                    targets=targets,
                    secrets=secrets,
                    concurrency=concurrency,
                )
            )
            batch_no = 0
            while True:
                claimed = store.claim(queues, lease_s=lease_s, limit=batch_size)
                if not claimed:
                    break
                batch_no += 1
                renew = asyncio.create_task(_renew(store, claimed, lease_s))
                try:
                    outcomes = await export_jobs(quote(engine), quote(claimed), queues, batch_no)
                except Exception as exc:
                    logger.exception("batch %s crashed", batch_no)
                    outcomes = failed_outcomes(
                        claimed, f"internal error of the export run: {type(exc).__name__}: {exc}"
                    )
                finally:
                    renew.cancel()
                _store(store, outcomes, counts)
                logger.info("batch %s: %s", batch_no, counts)
        ledger.close()
    finally:
        store.close()
    logger.info("export-event run finished: %s", counts)
    return counts


def _store(store: JobStore, outcomes: list[JobOutcome], counts: dict[str, int]) -> None:
    for o in outcomes:
        if store.finish(o.job_id, o.generation, ok=o.ok, result=o.result):
            counts["exported" if o.ok else "failed"] += 1
        else:  # reopened by a newer call meanwhile: that call's run answers it
            counts["superseded"] += 1


async def _renew(store: JobStore, jobs: list[Job], lease_s: float) -> None:
    claims = [(j.job_id, j.generation) for j in jobs]
    while True:
        await asyncio.sleep(lease_s / 3)
        await asyncio.to_thread(store.renew, claims, lease_s=lease_s)


__all__ = ["export_event"]
