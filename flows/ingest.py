"""Ingest flows: file drops (SFTP/S3) → Rossum, and where the uploaded documents are now.

``rossflow-ingest`` reads like the pipeline::

    recover stale claims → list → per batch: [claim → validate] → [upload → wait]
    → [archive/fail] → report

One Prefect task per bracket, ``options.batch_size`` files per batch;
``options.batches_in_flight`` batches are in different steps at the same time. Run it on a
schedule (every few minutes): every run is safe to repeat and to run next to another one on
the same source.
"""

import time
import uuid
from collections import deque
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from blocks.rossum import RossumCredentials
from blocks.sources import IngestSource
from rossflow.ingest.model import IngestOptions
from rossflow.ingest.rules import RoutingRule
from rossflow.ingest.runtime import IngestRuntime
from tasks.ingest import (
    Batch,
    check_status,
    claim_files,
    finalize_files,
    list_files,
    prefect_run_alive,
    publish_report,
    recover_claims,
    upload_files,
)


def _load_source(source: IngestSource | str) -> IngestSource:
    return source if isinstance(source, IngestSource) else IngestSource.load(source)


def _load_rossum(rossum: RossumCredentials | str) -> RossumCredentials:
    return rossum if isinstance(rossum, RossumCredentials) else RossumCredentials.load(rossum)


@flow(
    name="rossflow-ingest",
    description="Upload documents dropped on SFTP/S3 to Rossum: deduplicated, crash-safe, "
    "archived or failed with a reason.",
    task_runner=ThreadPoolTaskRunner(max_workers=16),
    validate_parameters=True,
)
def ingest(
    source: IngestSource | str = Field(
        default="ingest-source",
        description="Name of an 'Rossflow Ingest Source' block (SFTP folder or S3 prefix).",
    ),
    rossum: RossumCredentials | str = Field(
        default="rossum", description="Name of a 'Rossum Credentials' block."
    ),
    rules: list[RoutingRule] | None = Field(
        default=None,
        description="Routing rules (rossflow format or Rossum import_rules pasted verbatim); "
        "empty: the source block's rules.",
    ),
    options: IngestOptions | None = Field(
        default=None, description="Limits, concurrency, ledger location, deadlines."
    ),
) -> dict[str, Any]:
    logger = get_run_logger()
    options = options or IngestOptions()
    source_block = _load_source(source)
    credentials = _load_rossum(rossum)
    run_id = str(flow_run.id or uuid.uuid4())
    runtime = IngestRuntime(
        source_block.open_source(),
        rules if rules else source_block.rules,
        credentials.get_client,
        options,
        run_id=run_id,
        alive_check=prefect_run_alive if flow_run.id else None,
    )
    try:
        recovered = recover_claims(runtime)
        pending = [item for item in recovered.items if not item.final]
        runtime.report.add([item for item in recovered.items if item.final])
        listed = list_files(runtime, [item.origin for item in pending])
        todo = deque([*pending, *listed.items])
        # Prefect keeps task results until the flow ends: empty them so that each file's record
        # lives only as long as its batch (memory must not grow with the number of files).
        recovered.items.clear()
        listed.items.clear()
        del pending
        in_flight: deque[PrefectFuture[int]] = deque()
        while todo:
            # Popped from the queue: a batch's records live only as long as its tasks.
            batch = [todo.popleft() for _ in range(min(options.batch_size, len(todo)))]
            while len(in_flight) >= options.batches_in_flight:
                in_flight.popleft().wait()
            claimed = claim_files.submit(runtime, Batch(batch))  # + names, types, sizes
            imported = upload_files.submit(runtime, claimed)  # + wait for Rossum's import
            in_flight.append(finalize_files.submit(runtime, imported))  # archive / failed
        for future in in_flight:
            future.result()
        runtime.report.finished = time.time()
        if runtime.report.total == 0:
            # A scheduled run that found nothing: one log line, no artifact (a schedule every
            # 30 s would otherwise bury the runs that did something).
            summary = runtime.report.summary()
            logger.info(
                "ingest %s: nothing to do in %s (%d listed, %d matched no rule, %d too new)",
                run_id,
                runtime.report.source,
                summary["listed"],
                summary["unrouted"],
                summary["too_new"],
            )
            return summary
        summary = publish_report(runtime.report)
        logger.info(
            "ingest %s: %s", run_id, {k: v for k, v in summary.items() if not isinstance(v, dict)}
        )
        return summary
    finally:
        runtime.close()


@flow(
    name="rossflow-ingest-status",
    description="Where are the ingested documents now? Flags documents stuck importing or "
    "failed (batched annotation look-ups).",
    validate_parameters=True,
)
def ingest_status(
    rossum: RossumCredentials | str = Field(
        default="rossum", description="Name of a 'Rossum Credentials' block."
    ),
    ledger_path: str = Field(
        default=".rossflow/ingest.db", description="The ingest flow's ledger file."
    ),
    since_hours: float | None = Field(
        default=72.0, description="Only documents uploaded in the last N hours (empty: all)."
    ),
    queue_ids: list[int] | None = Field(default=None, description="Only these queues."),
    annotation_ids: list[int] | None = Field(
        default=None, description="Check these annotations instead of the ledger's uploads."
    ),
    importing_stuck_after_min: float = Field(
        default=30.0, description="Flag documents still importing after this many minutes."
    ),
) -> dict[str, Any]:
    client = _load_rossum(rossum).get_client()
    report = check_status(
        client,
        ledger_path,
        since_s=since_hours * 3600 if since_hours else None,
        queue_ids=queue_ids,
        annotation_ids=annotation_ids,
        importing_stuck_after_s=importing_stuck_after_min * 60,
    )
    summary = report.summary()
    summary["stuck_documents"] = report.stuck
    return summary


if __name__ == "__main__":  # pragma: no cover - manual run
    ingest()
