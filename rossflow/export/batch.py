"""Batch state of an export run: each annotation's journey, its report row, and storing.

Kept apart from the engine and the step runners (which all use it) so that none of them
imports another to reach the state they share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from rossflow.artifacts import ArtifactStore
from rossflow.redaction import Redactor

from .context import ExportContext
from .errors import StepError

Outcome = Literal[
    "exported",
    "failed_export",
    "failed_uncertain",
    "failed_kept_confirmed",
    "dry_run",
    "not_moved",
    "delivered",  # move_status=False (exported-since mode)
    "failed",  # move_status=False
    "replay_refused",
]
OnFailure = Literal["failed_export", "keep_confirmed"]


@dataclass
class DocState:
    """One annotation's journey through the pipeline within a batch."""

    annotation_id: int
    queue_id: int
    file_name: str
    ctx: ExportContext
    status: str = "confirmed"
    error: StepError | None = None
    dry_stopped: bool = False
    warnings: list[str] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    last_target: str | None = None
    last_http_status: int | None = None
    outcome: Outcome | None = None
    message: str = ""
    generation: int = 0  # attempt generation: > 0 after a forced re-send (new idempotency keys)

    @property
    def active(self) -> bool:
        return self.error is None and not self.dry_stopped

    def fail(self, error: StepError) -> None:
        error.annotation_id = None  # the report has its own column
        self.error = error
        self.last_target = error.target or self.last_target
        if error.http_status is not None:
            self.last_http_status = error.http_status

    def leave_to_holder(self, busy: Exception) -> bool:
        """Another worker (maybe on another host) is delivering a step of this annotation:
        this run stops here for it and leaves its status alone (reported ``not_moved``)."""
        self.dry_stopped = True  # inactive from here on, neither moved nor failed by this run
        self.message = f"{busy}; this run left the annotation as it was"
        return True


@dataclass
class ExportBatch:
    """The annotations of one page of the export, as they go through the pipeline together."""

    queue_id: int
    docs: list[DocState]
    started: float = field(default_factory=time.monotonic)
    any_status: bool = False  # replay: the annotations need not be ``confirmed``
    # Called once when every active document of the batch's last stage holds or has held a
    # delivery slot: the run loop then lets the next batch start delivering (see run.py).
    on_dispatched: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def dispatched(self) -> None:
        callback, self.on_dispatched = self.on_dispatched, None
        if callback is not None:
            callback()

    @property
    def ids(self) -> list[int]:
        return [d.annotation_id for d in self.docs]


@dataclass(frozen=True)
class DocReport:
    """One row of the run report (columns: :data:`~rossflow.export.tabular.RUN_REPORT_COLUMNS`)."""

    annotation_id: int
    queue_id: int
    file_name: str
    outcome: str
    target: str
    http_status: int | None
    message: str
    warnings: str = ""
    status: str = ""
    step: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "annotation_id": self.annotation_id,
            "queue_id": self.queue_id,
            "document": self.file_name,
            "outcome": self.outcome,
            "status": self.status,
            "step": self.step,
            "target": self.target,
            "http_status": self.http_status,
            "message": self.message,
            "warnings": self.warnings,
        }


class ArtifactWriter:
    """Stores rendered files, requests and replies of documents, with the run's secrets masked.

    ``store`` only queues; ``flush`` writes what is queued in one transaction, off the event
    loop. The engine flushes at the end of every step of a batch, so a batch's artifacts cost
    one write per step instead of one per document and file (see :mod:`rossflow.artifacts`).
    """

    def __init__(self, artifacts: ArtifactStore, redactor: Redactor) -> None:
        self.artifacts = artifacts
        self.redactor = redactor
        self._pending: list[tuple[int, str, str, bytes]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rossflow-artifacts")

    async def store(self, doc: DocState, step: str, files: list[tuple[str, bytes]]) -> None:
        self._pending += [(doc.annotation_id, step, name, data) for name, data in files]

    def _write(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        # redacted here, when written: the secrets a step learns (tokens) are known by then
        self.artifacts.put_rows([(a, s, n, self.redactor.bytes(d)) for a, s, n, d in rows])

    async def flush(self) -> None:
        rows, self._pending = self._pending, []
        if rows:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._write, rows)

    def close(self) -> None:
        rows, self._pending = self._pending, []
        if rows:
            self._write(rows)
        self._pool.shutdown(wait=True)
