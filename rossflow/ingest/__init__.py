"""Ingestion: SFTP/S3 file drops → Rossum uploads, deduplicated, crash-safe, archived.

Plain Python (no Prefect needed); the Prefect tasks and flows in ``tasks/ingest.py`` and
``flows/ingest.py`` are thin wrappers. Public surface::

    from rossflow.ingest import (
        IngestOptions, SourceLayout, SftpSource, S3Source, RoutingRule, RuleSet,
        IngestRuntime, run_ingest, track_status, uploads_from_ledger,
    )
"""

from rossflow.ingest.errors import FileRejected
from rossflow.ingest.model import (
    DEFERRED,
    DUPLICATE,
    FAILED,
    OUTCOMES,
    SKIPPED,
    UPLOADED,
    FileItem,
    IngestOptions,
)
from rossflow.ingest.pipeline import (
    batched,
    claim,
    discover,
    finalize,
    process_batch,
    recover,
    run_ingest,
    upload,
    validate,
    wait,
)
from rossflow.ingest.report import IngestReport
from rossflow.ingest.rules import ResultAction, ResultActions, RoutingRule, RuleSet
from rossflow.ingest.runtime import IngestRuntime
from rossflow.ingest.sources import S3Source, SftpSource, Source, SourceLayout
from rossflow.ingest.state import IngestState, RunOwner
from rossflow.ingest.status import StatusReport, Tracked, track_status, uploads_from_ledger
from rossflow.ingest.uploads import KIND, Uploader, dedupe_key
from rossflow.ingest.validation import Limits, sniff

__all__ = [
    "DEFERRED",
    "DUPLICATE",
    "FAILED",
    "KIND",
    "OUTCOMES",
    "SKIPPED",
    "UPLOADED",
    "FileItem",
    "FileRejected",
    "IngestOptions",
    "IngestReport",
    "IngestRuntime",
    "IngestState",
    "Limits",
    "ResultAction",
    "ResultActions",
    "RoutingRule",
    "RuleSet",
    "RunOwner",
    "S3Source",
    "SftpSource",
    "Source",
    "SourceLayout",
    "StatusReport",
    "Tracked",
    "Uploader",
    "batched",
    "claim",
    "dedupe_key",
    "discover",
    "finalize",
    "process_batch",
    "recover",
    "run_ingest",
    "sniff",
    "track_status",
    "upload",
    "uploads_from_ledger",
    "validate",
    "wait",
]
