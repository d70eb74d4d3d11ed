"""Run report: counts per outcome, a row per file (failures always, successes up to a cap), and
the markdown summary shown as a Prefect artifact."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rossflow.ingest.model import DEFERRED, DUPLICATE, FAILED, OUTCOMES, SKIPPED, UPLOADED, FileItem

COLUMNS = (
    "file",
    "outcome",
    "reason",
    "queue",
    "rule",
    "size",
    "sha256",
    "document",
    "annotation",
    "moved_to",
    "step",
    "message",
)


def row_for(item: FileItem) -> dict[str, Any]:
    return {
        "file": item.rel,
        "outcome": item.outcome or "",
        "reason": item.reason or "",
        "queue": item.queue_id if item.queue_id is not None else "",
        "rule": item.rule or "",
        "size": item.size if item.size is not None else "",
        "sha256": (item.sha256 or "")[:12],
        "document": item.document_id or "",
        "annotation": ",".join(str(a) for a in item.annotation_ids),
        "moved_to": item.moved_to or "",
        "step": item.step or "",
        "message": ((item.message or item.note or "")[:300]),
    }


@dataclass
class IngestReport:
    """Accumulates outcomes; memory is bounded by ``max_ok_rows`` + the number of problems."""

    run_id: str
    source: str
    max_ok_rows: int = 500
    started: float = field(default_factory=time.time)
    finished: float | None = None
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    per_queue: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    bytes_uploaded: int = 0
    listed: int = 0
    unrouted: int = 0
    recovered: int = 0
    too_new: int = 0
    uploads_sent: int = 0
    reconciled: int = 0
    annotation_ids: list[int] = field(default_factory=list)

    def add(self, items: list[FileItem]) -> None:
        for item in items:
            outcome = item.outcome or DEFERRED
            self.counts[outcome] += 1
            if item.reason and outcome in (FAILED, DEFERRED, SKIPPED):
                self.reasons[f"{outcome}: {item.reason}"] += 1
            if outcome in (UPLOADED, DUPLICATE) and item.queue_id is not None:
                self.per_queue[f"{item.queue_id}/{outcome}"] += 1
            if outcome == UPLOADED:
                self.bytes_uploaded += item.size or 0
                self.annotation_ids.extend(item.annotation_ids)
            row = row_for(item)
            if outcome in (FAILED, DEFERRED):
                self.problems.append(row)
            elif len(self.rows) < self.max_ok_rows:
                self.rows.append(row)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        return {
            "run_id": self.run_id,
            "source": self.source,
            "listed": self.listed,
            "recovered": self.recovered,
            "unrouted": self.unrouted,
            "too_new": self.too_new,
            "processed": self.total,
            **{outcome: self.counts.get(outcome, 0) for outcome in OUTCOMES},
            "reasons": dict(self.reasons),
            "uploads_sent": self.uploads_sent,
            "reconciled": self.reconciled,
            "bytes_uploaded": self.bytes_uploaded,
            "seconds": round(elapsed, 3),
        }

    def table(self) -> list[dict[str, Any]]:
        """Problems first, then successes (capped)."""
        return self.problems + self.rows

    def markdown(self) -> str:
        s = self.summary()
        lines = [
            f"# Ingest run `{self.run_id}`",
            "",
            f"Source: `{self.source}` — {s['processed']} file(s) processed in {s['seconds']} s "
            f"({s['listed']} listed, {s['recovered']} recovered from stale claims, "
            f"{s['unrouted']} matched no rule, {s['too_new']} too new).",
            "",
            "| outcome | files |",
            "|---|---:|",
        ]
        lines += [f"| {o} | {s[o]} |" for o in OUTCOMES]
        lines += [
            "",
            f"Uploads sent: {s['uploads_sent']}, reconciled with Rossum after a lost answer or "
            f"crash: {s['reconciled']}, bytes uploaded: {s['bytes_uploaded']}.",
        ]
        if self.per_queue:
            lines += ["", "| queue/outcome | files |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in sorted(self.per_queue.items())]
        if self.reasons:
            lines += ["", "| problem | files |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.reasons.most_common()]
        if self.problems:
            lines += [
                "",
                "## Files that need attention",
                "",
                "| file | outcome | reason | message |",
                "|---|---|---|---|",
            ]
            for row in self.problems[:200]:
                message = str(row["message"]).replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| `{row['file']}` | {row['outcome']} | {row['reason']} | {message} |"
                )
            if len(self.problems) > 200:
                lines.append(f"| … | {len(self.problems) - 200} more | | |")
        return "\n".join(lines) + "\n"
