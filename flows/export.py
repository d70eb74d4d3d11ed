"""The export flow: confirmed annotations → pipeline → exported / failed_export.

    read a page of confirmed annotations (GET, never changes status)
      → prepare batch → stage 1 → stage 2 → … (the pipeline DAG, in dependency order; a
        stage is a step that reaches another system with the local steps before it)
      → finalize, in the last stage's task: one POST …/export?to_status=exported&id=… for
                  the batch, PATCH failed_export + message for each failure
    → report (table + markdown artifacts, CSV run report)

Anything the run cannot finish stays ``confirmed`` and is picked up by the next run.
"""

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import Field

from blocks import PipelineSecrets, RestTarget, RossumCredentials, SftpServer
from rossflow.artifacts import ArtifactStore
from rossflow.export.batch import DocReport
from rossflow.export.config import FileStorageStep, PipelineConfig, RestStep, S3Step
from rossflow.export.engine import ExportEngine
from rossflow.export.loading import load_pipeline
from rossflow.export.report import markdown_summary, write_report_csv
from rossflow.export.run import BatchSteps, count_outcomes, run_export
from rossflow.export.targets import Targets
from rossflow.ledger import Ledger
from tasks.export import finalize_batch, finish_batch, prepare_batch, run_stage


def load_pipeline_source(pipeline: str) -> PipelineConfig:
    """A path to a YAML/JSON file, or the YAML/JSON text itself."""
    candidate = Path(pipeline)
    if "\n" not in pipeline and candidate.exists():
        return load_pipeline(candidate)
    return load_pipeline(pipeline)


async def resolve_targets(config: PipelineConfig) -> Targets:
    """Load the Prefect blocks named by ``target:`` in the pipeline's steps."""
    rest: dict[str, Any] = {}
    sftp: dict[str, Any] = {}
    s3: dict[str, Any] = {}
    for step in config.steps:
        name = getattr(step, "target", None)
        if not name:
            continue
        if isinstance(step, RestStep):
            rest[name] = await RestTarget.aload(name)
        elif isinstance(step, S3Step):
            from prefect_aws import S3Bucket

            s3[name] = await S3Bucket.aload(name)
        elif isinstance(step, FileStorageStep):
            sftp[name] = (await SftpServer.aload(name)).connection_info()
    return Targets(rest=rest, sftp=sftp, s3=s3)


async def load_run_inputs(
    pipeline: str, rossum: str, secrets_block: str | None
) -> tuple[PipelineConfig, RossumCredentials, dict[str, Any], Targets]:
    """What every export flow starts from: the pipeline (its loader warnings logged), the
    Rossum Credentials block, the pipeline secrets and the targets the pipeline names."""
    config = load_pipeline_source(pipeline)
    for warning in config.warnings:
        get_run_logger().warning("pipeline %s: %s", config.name, warning)
    creds = await RossumCredentials.aload(rossum)
    secrets = dict((await PipelineSecrets.aload(secrets_block)).values) if secrets_block else {}
    return config, creds, secrets, await resolve_targets(config)


@flow(name="rossum-export", log_prints=False)
async def export_confirmed(
    queues: list[int],
    pipeline: str,
    rossum: str = "rossum",
    secrets_block: str | None = None,
    batch_size: Annotated[int, Field(ge=1, le=100)] = 100,
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16,
    batches_in_flight: Annotated[int, Field(ge=1, le=16)] = 2,
    on_failure: Literal["failed_export", "keep_confirmed"] = "failed_export",
    dry_run: bool = False,
    annotation_ids: list[int] | None = None,
    force: bool = False,
    state_dir: str = ".rossflow",
) -> dict[str, int]:
    """Export confirmed annotations of the given queues through an export pipeline.

    Args:
        queues: Rossum queue ids to export.
        pipeline: Pipeline file (native YAML, or Rossum v1 hooks JSON), or its text.
        rossum: Name of the Rossum Credentials block.
        secrets_block: Rossflow Pipeline Secrets block for {secret.x} placeholders.
        batch_size: Annotations per batch (one Rossum page; at most 100).
        concurrency: Documents in flight per batch: a target never gets more than
            concurrency x batches_in_flight calls at once (a batch may use the slots
            another batch leaves idle).
        batches_in_flight: Batches delivering at the same time. A batch hands its turn to
            the next one once the last of its documents is being sent, so its last calls
            and its status move overlap the next batch's deliveries.
        on_failure: failed_export shows a red icon and the message in Rossum;
            keep_confirmed leaves the annotation for the next run.
        dry_run: Render and report, deliver nothing, change no status.
        annotation_ids: Replay only these annotations. confirmed and failed_export ones are
            sent; exported ones only with force; any other status (to_review, deleted, ...)
            is refused and reported with its status.
        force: Re-send the annotations of annotation_ids even if they were delivered or
            exported: a new attempt generation gives them new idempotency keys, so an ERP
            that lost the record books it again. Use only when the ERP does not have it.
        state_dir: Where the delivery ledger, stored requests/replies and reports live.
    """
    logger = get_run_logger()
    config, creds, secrets, targets = await load_run_inputs(pipeline, rossum, secrets_block)
    state = Path(state_dir)
    ledger = Ledger(state / "ledger.db")
    client = creds.get_client()
    order = [s.name for s in config.topological_order()]

    def steps_of(queue_id: int) -> list[str]:
        # A hook's `queues` decides which steps form this queue's chain.
        steps = [s.name for s in config.steps_for_queue(queue_id)]
        left_out = [n for n in order if n not in steps]
        if left_out:
            logger.info("queue %s: steps of other queues not run: %s", queue_id, left_out)
        return steps

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
            in_flight=concurrency * batches_in_flight,
            dry_run=dry_run,
            on_failure=on_failure,
        ) as engine,
    ):
        # pages → prepare batch → stage 1 → … → last stage + finalize, batches_in_flight
        # delivering at a time
        reports = await run_export(
            client,
            queues,
            steps_of,
            task_steps(engine),
            batch_size=batch_size,
            batches_in_flight=batches_in_flight,
            annotation_ids=annotation_ids,
            force=force,
            ledger=None if dry_run else ledger,
            progress=_ProgressArtifacts().update,
            logger=logger,
        )
    ledger.close()
    counts = count_outcomes(reports)
    await _publish_report(config, queues, reports, state, dry_run=dry_run)
    logger.info("export finished: %s", counts or "nothing to export")
    return counts


def task_steps(engine: ExportEngine) -> BatchSteps:
    """The Prefect tasks as the run loop's batch steps: one task per stage per batch, the last
    one with finalize (``render+post_invoice+finalize``), and a prepare task only when it
    downloads the originals from Rossum (otherwise it is local work, like a template step, and
    runs in the flow).

    quote(): otherwise Prefect walks every object inside the task arguments (a batch of 100
    holds ~75k) looking for futures: ~70 ms of CPU per document in bench/.
    """
    return BatchSteps(
        prepare=(
            (lambda queue_id, no, items: prepare_batch(quote(engine), queue_id, no, quote(items)))
            if engine.needs_original
            # local work only (each annotation's template context): no task of its own
            else (lambda queue_id, no, items: engine.new_batch(queue_id, items))
        ),
        run_stage=lambda batch, names, queue_id, no: run_stage(
            quote(engine), quote(batch), names, "+".join(names), queue_id, no
        ),
        finalize=lambda batch, local, queue_id, no: finalize_batch(
            quote(engine), quote(batch), local, "+".join([*local, "finalize"]), queue_id, no
        ),
        is_local=engine.step_is_local,
        finish=lambda batch, names, local, queue_id, no: finish_batch(
            quote(engine),
            quote(batch),
            names,
            local,
            "+".join([*names, *local, "finalize"]),
            queue_id,
            no,
        ),
    )


class _ProgressArtifacts:
    """One progress artifact per queue, created when the queue starts, updated at most every
    ``every_s`` seconds and at the end (each update is a call the Prefect server serves)."""

    def __init__(self, every_s: float = 2.0) -> None:
        self._ids: dict[int, Any] = {}
        self._last: dict[int, float] = {}
        self.every_s = every_s

    async def update(self, queue_id: int, done: int, total: int) -> None:
        if queue_id not in self._ids:
            self._ids[queue_id] = await acreate_progress_artifact(
                0.0, key=f"export-progress-q{queue_id}", description=f"Export of queue {queue_id}"
            )
            self._last[queue_id] = time.monotonic()
        now = time.monotonic()
        if done and (done >= total or now - self._last[queue_id] >= self.every_s):
            self._last[queue_id] = now
            await aupdate_progress_artifact(self._ids[queue_id], min(100.0, 100.0 * done / total))


async def _publish_report(
    config: PipelineConfig,
    queues: list[int],
    reports: list[DocReport],
    state: Path,
    *,
    dry_run: bool,
) -> None:
    """CSV run report, table artifact (one row per annotation) and markdown summary."""
    run_name = flow_run.get_name() or "local"
    csv_path = write_report_csv(reports, state / "reports" / f"export-{run_name}.csv")
    await acreate_table_artifact(
        [r.as_row() for r in reports[:5000]],
        key="export-report",
        description=f"Export of queues {queues}: one row per annotation (CSV: {csv_path})",
    )
    await acreate_markdown_artifact(
        markdown_summary(
            config.name,
            queues,
            reports,
            dry_run=dry_run,
            csv_path=str(csv_path),
            warnings=config.warnings,
        ),
        key="export-summary",
        description="Export run summary",
    )


__all__ = [
    "export_confirmed",
    "load_pipeline_source",
    "load_run_inputs",
    "resolve_targets",
    "task_steps",
]
