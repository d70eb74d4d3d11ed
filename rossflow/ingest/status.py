"""Where are the uploaded documents now? Batched status look-ups with stuck-document flags.

The annotation ids come from the ledger (every upload recorded there with its ids) or from the
caller. They are looked up with ``GET /v1/annotations?id=…`` in chunks of 100 (one request per
100 documents, following ``next`` if needed), never one request per document.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rossflow.ingest.uploads import KIND
from rossflow.ledger import Ledger
from rossflow.rossum import RossumClient, id_from_url

FLAGGED_STATUSES = ("failed_import", "failed_export")


def parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Tracked:
    annotation_id: int
    file: str = ""
    source_uri: str = ""
    queue_id: int | None = None
    uploaded_at: str = ""


@dataclass
class StatusReport:
    checked: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    requests: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "statuses": dict(self.counts),
            "stuck": len(self.stuck),
            "missing": len(self.missing),
            "requests": self.requests,
        }

    def markdown(self) -> str:
        lines = [
            "# Ingested documents: where are they now?",
            "",
            f"{self.checked} annotation(s) checked with {self.requests} API request(s).",
            "",
            "| status | annotations |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in self.counts.most_common()]
        if self.missing:
            lines += [
                "",
                f"Not found (deleted, purged or no access): {len(self.missing)} — "
                f"{', '.join(str(i) for i in self.missing[:20])}",
            ]
        if self.stuck:
            lines += [
                "",
                "## Stuck",
                "",
                "| annotation | status | since (s) | why | file |",
                "|---:|---|---:|---|---|",
            ]
            for row in self.stuck[:200]:
                lines.append(
                    f"| {row['annotation']} | {row['status']} | {row['age_s']} | "
                    f"{row['why']} | `{row['file']}` |"
                )
        return "\n".join(lines) + "\n"


def uploads_from_ledger(
    ledger: Ledger, *, since_s: float | None = None, queue_ids: Sequence[int] | None = None
) -> list[Tracked]:
    """Annotations created by ingest runs, newest ledger entries within ``since_s``."""
    cutoff = time.time() - since_s if since_s else 0.0
    wanted = set(queue_ids or [])
    out: list[Tracked] = []
    for effect in ledger.in_state(KIND, "done"):
        if effect.updated_at < cutoff:
            continue
        result = effect.result
        if result.get("phase") != "imported":
            continue
        queue = result.get("queue_id")
        if wanted and queue not in wanted:
            continue
        for ann in result.get("annotation_ids") or []:
            out.append(
                Tracked(
                    annotation_id=int(ann),
                    file=str(result.get("file_name", "")),
                    source_uri=str(result.get("source_uri", "")),
                    queue_id=queue,
                    uploaded_at=str(result.get("at", "")),
                )
            )
    return out


async def track_status(
    client: RossumClient,
    tracked: Iterable[Tracked | int],
    *,
    importing_stuck_after_s: float = 1800.0,
    flagged_statuses: Sequence[str] = FLAGGED_STATUSES,
) -> StatusReport:
    """Statuses of ``tracked`` annotations; flags importing-too-long and failed_* ones."""
    items = {
        t.annotation_id if isinstance(t, Tracked) else int(t): t
        if isinstance(t, Tracked)
        else Tracked(int(t))
        for t in tracked
    }
    report = StatusReport(checked=len(items))
    before = client.stats.requests
    seen: set[int] = set()
    now = time.time()
    async for ann in client.list_annotations(ids=list(items)):
        ann_id = int(ann["id"])
        seen.add(ann_id)
        status = str(ann.get("status"))
        report.counts[status] += 1
        info = items.get(ann_id) or Tracked(ann_id)
        created = parse_time(ann.get("created_at"))
        modified = parse_time(ann.get("modified_at")) or created
        why = None
        age = None
        if status in ("importing", "created") and created is not None:
            age = now - created
            if age > importing_stuck_after_s:
                why = f"{status} for more than {int(importing_stuck_after_s)} s"
        elif status in flagged_statuses:
            age = now - modified if modified else None
            why = status
        if why:
            messages = [m.get("content") for m in ann.get("messages") or [] if m]
            report.stuck.append(
                {
                    "annotation": ann_id,
                    "status": status,
                    "age_s": int(age) if age is not None else "",
                    "why": why,
                    "file": info.file,
                    "source": info.source_uri,
                    "queue": id_from_url(ann["queue"]) if ann.get("queue") else info.queue_id,
                    "messages": "; ".join(str(m) for m in messages if m)[:300],
                }
            )
    report.missing = sorted(set(items) - seen)
    if report.missing:
        report.counts["missing"] += len(report.missing)
    report.requests = client.stats.requests - before
    return report
