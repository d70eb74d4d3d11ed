"""What ``rossflow demo`` prints: the live progress line and the closing summary.

Kept apart from the orchestration in :mod:`rossflow.demo`: these read the sandbox, the receiver,
Prefect's flow runs and the ERP stand-in, and only print.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx


class Progress:
    """Status counts of queue 1, the receiver's counters, export runs and the ERP, as one line."""

    PENDING = ("importing", "to_review", "reviewing", "confirmed", "exporting")

    def __init__(self, info: dict[str, Any], export_name: str) -> None:
        self.info = info
        self.export_name = export_name
        self.sandbox = info["sandbox"]
        self.token = self.sandbox.login()
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self.last_line = ""
        self.last_print = 0.0
        self.baseline = self.counts()

    def counts(self) -> dict[str, int]:
        headers = {"Authorization": f"Bearer {self.token}"}
        out = {}
        with httpx.Client(base_url=self.sandbox.api_url, headers=headers, timeout=30) as client:
            for status in (*self.PENDING, "exported", "failed_export"):
                resp = client.get(
                    "/v1/annotations", params={"queue": 1, "status": status, "page_size": 1}
                )
                out[status] = int(resp.json()["pagination"]["total"])
        return out

    async def export_runs(self) -> dict[str, int]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        try:
            async with get_client() as client:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=[self.export_name.split("/")[1]])
                    )
                )
        except Exception:  # progress only: never fail the demo for it
            return {}
        states: dict[str, int] = {}
        for run in runs:
            key = (run.state_type.value if run.state_type else "UNKNOWN").lower()
            states[key] = states.get(key, 0) + 1
        return states

    async def show(self, counts: dict[str, int], receiver: Any, *, final: bool = False) -> str:
        runs = await self.export_runs()
        hooks = receiver.app.state.receiver.counters
        erp = self.info["erp"].stats()
        elapsed = time.monotonic() - self.started
        run_text = " ".join(f"{v} {k}" for k, v in sorted(runs.items())) or "none yet"
        line = (
            f"[{elapsed:4.0f}s] importing {counts['importing']} · to review "
            f"{counts['to_review'] + counts['reviewing']} · confirmed "
            f"{counts['confirmed'] + counts['exporting']} · exported "
            f"{counts['exported'] - self.baseline['exported']} · failed "
            f"{counts['failed_export'] - self.baseline['failed_export']} | hook calls "
            f"{hooks.get('received', 0)} → events {hooks.get('emitted', 0)} | export runs: "
            f"{run_text} | ERP {erp['documents']}"
        )
        if self.tty and not final:
            print("\r  " + line.ljust(len(self.last_line)), end="", flush=True)
        elif final or (line != self.last_line and time.monotonic() - self.last_print > 5):
            print(("\r  " if self.tty else "  ") + line, flush=True)
            self.last_print = time.monotonic()
        self.last_line = line
        return line


def ingest_lines(counts: dict[str, int], info: dict[str, Any]) -> list[str]:
    """What the ingest did, in words, with where to look for anything not uploaded."""
    order = ("uploaded", "duplicate", "failed", "deferred", "skipped")
    lines = [
        "  ingest:  "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in order)
        + f" ({counts.get('uploads_sent', 0)} upload(s) sent to Rossum)"
    ]
    if counts.get("duplicate"):
        lines.append(
            f"  note: {counts['duplicate']} sample(s) were already in Rossum (same content "
            "uploaded by an earlier run): not uploaded again; the ingest report names each "
            "one's annotation (Prefect UI → Artifacts → ingest-report)"
        )
    if counts.get("failed"):
        lines.append(
            f"  note: {counts['failed']} file(s) failed: the reason is in "
            f"{info['sftp_root'] / 'inbox' / 'failed'}/<name>.error.json (SFTP) or under "
            "s3://rossum-inbox/failed/ (S3), and in the ingest report"
        )
    return lines


def outcome(
    info: dict[str, Any], exported: int, failed: int, args: argparse.Namespace, via: str
) -> int:
    """Print the result and where to look; the exit code (1 when a document failed)."""
    erp = info["erp"].stats()
    home: Path = args.home.resolve()
    sandbox = info["sandbox"]
    print(
        f"rossflow demo: exported {exported}, failed {failed} (via {via}); ERP holds "
        f"{erp['documents']} invoice(s), {erp['duplicates']} duplicate(s) refused · "
        f"Prefect UI http://127.0.0.1:{args.prefect_port}"
    )
    reports = sorted(
        (home / "export-state" / "reports").glob("export-*.csv"), key=lambda p: p.stat().st_mtime
    )
    where = [
        (
            "Prefect UI",
            f"http://127.0.0.1:{args.prefect_port}  (flow runs; artifacts "
            "ingest-summary, ingest-report, export reports; kept in "
            f"{home / 'prefect'})",
        ),
        (
            "Rossum sandbox",
            f"{sandbox.api_url}/v1/annotations?queue=1  (login "
            f"{sandbox.username} / {sandbox.password}; database {home / 'sandbox.db'})",
        ),
        ("ERP stand-in", f"{info['erp'].url}/_erp/received"),
        ("SFTP", f"{info['sftp_root']}: inbox/archive/ (ingested PDFs), archive/ (exported XML)"),
        ("S3", f"{info['s3'].endpoint_url}  bucket rossum-inbox (in memory)"),
        ("export report", str(reports[-1]) if reports else str(home / "export-state/reports")),
        ("logs", f"{home / 'runner.log'}, {home / 'prefect-server.log'}"),
    ]
    print(
        "  where to look"
        + (" (the servers stop with --once; the files stay):" if args.once else ":")
    )
    width = max(len(name) for name, _ in where)
    for name, text in where:
        print(f"    {name.ljust(width)}  {text}")
    print(f"  state: {home} (reused by the next run; --fresh starts over)")
    return 1 if failed else 0
