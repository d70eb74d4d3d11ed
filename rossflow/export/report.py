"""Run reports: a CSV per run (pandas) and the markdown summary shown in the Prefect UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .batch import DocReport
from .tabular import run_report_frame

OUTCOME_NOTES = {
    "exported": "delivered and moved to `exported`",
    "failed_export": "moved to `failed_export` with a message (operators see a red icon)",
    "failed_uncertain": (
        "failed, but the target may have created the document (a timeout, 5xx or dropped "
        "connection after sending): check before retrying"
    ),
    "failed_kept_confirmed": "failed, left `confirmed` for the next run",
    "not_moved": "delivered, but not moved to `exported` yet (next run retries the move)",
    "dry_run": "rendered only (dry run)",
    # exported-since mode (status never changed)
    "delivered": "delivered; Rossum status left as it was (`exported`)",
    "failed": "failed; status unchanged, the next run retries it",
    "failed_gave_up": "failed on every attempt; given up (re-export it in Rossum to retry)",
}


def write_report_csv(reports: Sequence[DocReport], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run_report_frame(r.as_row() for r in reports).to_csv(path, index=False)
    return path


def markdown_summary(
    pipeline: str,
    queues: Sequence[int],
    reports: Sequence[DocReport],
    *,
    dry_run: bool = False,
    csv_path: str | None = None,
    max_failures: int = 20,
    warnings: Sequence[str] = (),
) -> str:
    counts = Counter(r.outcome for r in reports)
    lines = [
        f"# Export `{pipeline}`{' (dry run)' if dry_run else ''}",
        "",
        f"Queues: {', '.join(map(str, queues))} · annotations: {len(reports)}",
        "",
        "| outcome | count | meaning |",
        "|---|---:|---|",
    ]
    for outcome, count in counts.most_common():
        lines.append(f"| {outcome} | {count} | {OUTCOME_NOTES.get(outcome, '')} |")
    if counts["failed_uncertain"]:
        lines += [
            "",
            f"**{counts['failed_uncertain']} annotation(s) with an uncertain outcome**: the "
            "target may have created them; check there before retrying.",
        ]
    failures = [r for r in reports if r.outcome.startswith("failed") or r.outcome == "not_moved"]
    if failures:
        lines += ["", "## Needs attention", "", "| annotation | file | message |", "|---|---|---|"]
        for r in failures[:max_failures]:
            message = r.message.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r.annotation_id} | {r.file_name} | {message} |")
        if len(failures) > max_failures:
            lines.append(f"| … | | {len(failures) - max_failures} more in the CSV report |")
    if warnings:
        # Anything the loader left out or changed is shown here too, not only in the logs.
        lines += ["", "## Pipeline warnings", ""]
        lines += [f"- {w.replace(chr(10), ' ')}" for w in warnings]
    warned = [r for r in reports if r.warnings]
    if warned:  # skipped stages, abandoned calls, recorded non-2xx: never silent
        lines += ["", "## Warnings", "", "| annotation | warnings |", "|---|---|"]
        for r in warned[:max_failures]:
            text = r.warnings.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r.annotation_id} | {text} |")
        if len(warned) > max_failures:
            lines.append(f"| … | {len(warned) - max_failures} more in the CSV report |")
    if csv_path:
        lines += ["", f"Full report: `{csv_path}`"]
    return "\n".join(lines) + "\n"
