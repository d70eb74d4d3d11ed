"""Prefect tasks of the ingest flow: three tasks per batch of files (claim, upload, finalize).

They are thin wrappers around :mod:`rossflow.ingest.pipeline`; the logic (and its tests) lives
there. Inside a task the work is spread over the run's bounded thread pools (``io_concurrency``
threads for claims and moves, ``upload_concurrency`` threads that each read, upload and await
one file at a time with their own SFTP session and Rossum client), never one Prefect task per
file. Three tasks rather than one per pipeline step: every task run costs
the Prefect server tens of milliseconds of CPU (``bench/ingest_bench.py`` measures it), and the
validate and wait steps are too short on their own to be worth one.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from rossflow.ingest import pipeline
from rossflow.ingest.model import FileItem
from rossflow.ingest.report import IngestReport
from rossflow.ingest.runtime import IngestRuntime
from rossflow.ingest.status import StatusReport, track_status, uploads_from_ledger
from rossflow.ledger import Ledger
from rossflow.rossum import RossumClient

# Items are mutated in place and handed on; nothing here is worth caching or persisting.
_opts: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class Batch:
    """The files of one batch, handed from task to task.

    A plain object on purpose: Prefect walks lists and dataclasses in task arguments and
    results (looking for upstream futures), which for 50 file records costs more CPU than a
    step's own bookkeeping. An opaque container keeps Prefect's per-task overhead constant.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[FileItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Batch({len(self.items)} files)"


@task(name="ingest-recover-claims", **_opts)
def recover_claims(runtime: IngestRuntime) -> Batch:
    """Adopt files claimed by runs that died or finished without processing them."""
    return Batch(pipeline.recover(runtime))


@task(name="ingest-list-files", **_opts)
def list_files(runtime: IngestRuntime, skip_paths: list[str]) -> Batch:
    """Routed candidate files (old enough, not hidden, matching a rule)."""
    return Batch(list(pipeline.discover(runtime, skip_paths=skip_paths)))


@task(name="ingest-claim", **_opts)
def claim_files(runtime: IngestRuntime, batch: Batch) -> Batch:
    """Take the files for this run (SFTP: rename into processing/<run>/; S3: lock object) and
    check names, extensions and sizes (the content is sniffed while it streams to Rossum)."""
    return Batch(pipeline.validate(runtime, pipeline.claim(runtime, batch.items)))


@task(name="ingest-upload", **_opts)
def upload_files(runtime: IngestRuntime, batch: Batch) -> Batch:
    """Stream, hash, dedupe/reconcile against the ledger, upload with metadata, and wait (with
    a deadline) for Rossum's import tasks; records document/annotation ids."""
    return Batch(pipeline.wait(runtime, pipeline.upload(runtime, batch.items)))


@task(name="ingest-finalize", **_opts)
def finalize_files(runtime: IngestRuntime, batch: Batch) -> int:
    """Archive (dated) or move to failed/ with <name>.error.json; deferred files stay claimed.

    The outcomes are in the run report; the batch's records are dropped here (Prefect keeps
    every task result until the flow ends, and memory must not grow with the file count)."""
    done = len(pipeline.finalize(runtime, batch.items))
    batch.items.clear()
    return done


@task(name="ingest-report", **_opts)
def publish_report(report: IngestReport) -> dict[str, Any]:
    """Table artifact (one row per file; problems first) + markdown summary."""
    summary = report.summary()
    create_table_artifact(
        key="ingest-report",
        table=report.table(),
        description=f"Ingest run {report.run_id}: {summary['processed']} file(s)",
    )
    create_markdown_artifact(
        key="ingest-summary",
        markdown=report.markdown(),
        description=f"Ingest run {report.run_id}",
    )
    return summary


@task(name="ingest-check-status", **_opts)
def check_status(
    client: RossumClient,
    ledger_path: str,
    *,
    since_s: float | None,
    queue_ids: list[int] | None,
    annotation_ids: list[int] | None,
    importing_stuck_after_s: float,
) -> StatusReport:
    """Statuses of ingested documents (batched by 100 ids) with stuck ones flagged."""
    if annotation_ids:
        tracked: list[Any] = list(annotation_ids)
    else:
        ledger = Ledger(ledger_path)
        try:
            tracked = list(uploads_from_ledger(ledger, since_s=since_s, queue_ids=queue_ids))
        finally:
            ledger.close()

    async def run() -> StatusReport:
        async with client:
            return await track_status(
                client, tracked, importing_stuck_after_s=importing_stuck_after_s
            )

    report = asyncio.run(run())
    create_markdown_artifact(key="ingest-status", markdown=report.markdown())
    if report.stuck:
        create_table_artifact(
            key="ingest-stuck-documents",
            table=report.stuck,
            description=f"{len(report.stuck)} stuck document(s)",
        )
    return report


def prefect_run_alive(run_id: str) -> bool | None:
    """Liveness of a claim owner according to Prefect: False when its flow run is in a final
    state (crashed, failed, cancelled, completed); None when unknown (not a flow run id)."""
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    if run.state is None:
        return None
    return not run.state.is_final()
