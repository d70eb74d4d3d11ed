"""The settings of an ingest run and the record that follows each file through the steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rossflow.ingest.validation import ALL_TYPES, DEFAULT_MAX_BYTES, Limits, parse_types

# Final outcomes of a file in one run.
UPLOADED = "uploaded"  # sent to Rossum by this run and archived
# identical content already in that queue (the ledger names the annotation; an earlier run sent
# it, or another file of this run): not sent again, archived
DUPLICATE = "duplicate"
FAILED = "failed"  # moved to failed/ with <name>.error.json
SKIPPED = "skipped"  # taken by another run (or deleted) before this run could claim it
DEFERRED = "deferred"  # transient trouble: left claimed, a later run resumes it
OUTCOMES = (UPLOADED, DUPLICATE, FAILED, DEFERRED, SKIPPED)


class IngestOptions(BaseModel):
    """Tuning and safety settings of an ingest run (every field has a safe default)."""

    model_config = ConfigDict(extra="forbid")

    ledger_path: str = Field(
        default=".rossflow/ingest.db",
        description="SQLite file of the content-hash ledger (dedupe + crash recovery). Keep it "
        "on durable storage and share it by all runs that ingest into the same queues.",
    )
    max_file_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1, description="Larger files fail (Rossum allows 40 MB)."
    )
    accepted_types: list[str] = Field(
        default_factory=lambda: list(ALL_TYPES),
        description="File types to accept: pdf, png, jpeg, tiff, xlsx, xls, docx, doc.",
    )
    min_age_s: float = Field(
        default=5.0,
        ge=0,
        description="Ignore files modified less than this many seconds ago (still being "
        "written by the sender).",
    )
    include_hidden: bool = Field(default=False, description="Also take files named '.*'.")
    max_files: int | None = Field(
        default=None, ge=1, description="Take at most this many files in one run."
    )
    batch_size: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="Files per batch (three Prefect tasks per batch: claim, upload, finalize).",
    )
    batches_in_flight: int = Field(
        default=4, ge=1, le=16, description="Batches processed at the same time."
    )
    io_concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Parallel claims and moves on the source (SFTP sessions / S3 requests; "
        "one SFTP session per thread).",
    )
    upload_concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Files read, uploaded and awaited at the same time (one thread each, "
        "with its own SFTP session and Rossum connection).",
    )
    task_deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="How long to wait for Rossum's upload task; later, the file is left "
        "claimed and the next run keeps waiting.",
    )
    stale_claim_after_s: float = Field(
        default=1800.0,
        gt=0,
        description="A claim whose run has not shown a heartbeat for this long is taken over "
        "(a dead run on this host is detected at once).",
    )
    reconcile_delay_s: float = Field(
        default=2.0,
        ge=0,
        description="After an upload whose answer was lost, wait this long before looking the "
        "document up in Rossum (and again before sending it once more).",
    )
    upload_attempts: int = Field(
        default=3, ge=1, le=10, description="Upload attempts on 5xx/lost answers."
    )
    spool_memory_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="Per upload, content up to this size is buffered in memory; larger files "
        "spill to a temporary file.",
    )
    reupload_missing: bool = Field(
        default=False,
        description="A file whose content the ledger records as uploaded, but whose annotation "
        "no longer exists in Rossum (deleted, purged, 404): upload it again instead of moving "
        "it to failed/ with reason 'annotation_missing'.",
    )
    files_per_upload: int = Field(
        default=20,
        ge=1,
        le=100,
        description="Files sent in one Rossum upload request when they go to the same queue "
        "with the same rule metadata and values (one task poll and one upload object per "
        "upload instead of per file). 1 sends every file alone.",
    )
    upload_bytes: int = Field(
        default=36 * 1024 * 1024,
        ge=1,
        le=40 * 1024 * 1024,
        description="Size bound of one multi-file upload (Rossum allows 40 MB in all).",
    )
    report_max_rows: int = Field(
        default=500, ge=0, description="Rows of successful files kept in the report table."
    )

    @field_validator("accepted_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return list(parse_types(value))

    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_file_bytes, accepted_types=tuple(self.accepted_types))


@dataclass(slots=True)
class FileItem:
    """One file on its way through list → claim → validate → upload → wait → finalize."""

    rel: str  # path below the source directory (as found); used for routing and archive names
    origin: str  # full path/key where it was found
    path: str  # where it is now (after an SFTP claim: inside processing/<run>/)
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None
    rule_index: int | None = None
    rule: str | None = None
    queue_id: int | None = None
    recovered: bool = False
    claimed: bool = False
    lock: str | None = None  # S3: ETag of our lock object
    file_type: str | None = None
    sha256: str | None = None
    upload_key: str | None = None
    lease: str | None = None  # token when we hold the lease on upload_key
    waiting_on: str | None = None  # another holder of the same content's lease
    task_url: str | None = None
    upload_index: int | None = None  # position in a multi-file upload (its task is shared)
    document_id: int | None = None
    annotation_ids: list[int] = field(default_factory=list)
    outcome: str | None = None
    reason: str | None = None
    message: str | None = None
    step: str | None = None
    rossum: dict[str, Any] | None = None
    sent_here: bool = False  # this run sent the upload (only then is the outcome UPLOADED)
    moved_to: str | None = None
    note: str | None = None

    @property
    def final(self) -> bool:
        return self.outcome is not None

    def fail(
        self, reason: str, message: str, *, step: str, rossum: dict[str, Any] | None = None
    ) -> None:
        self.outcome, self.reason, self.message, self.step = FAILED, reason, message, step
        self.rossum = rossum

    def defer(self, reason: str, message: str, *, step: str) -> None:
        self.outcome, self.reason, self.message, self.step = DEFERRED, reason, message, step

    def skip(self, reason: str, message: str, *, step: str) -> None:
        self.outcome, self.reason, self.message, self.step = SKIPPED, reason, message, step
