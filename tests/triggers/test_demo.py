"""The README's first command: ``rossflow demo --once`` runs the whole pipeline by itself."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scaleout.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run_demo(home: Path, tmp_path: Path, *extra: str) -> str:
    ports = {
        name: str(free_port()) for name in ("prefect", "sandbox", "erp", "sftp", "s3", "webhook")
    }
    # The demo runs its own Prefect server: none of the test session's Prefect settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rossflow.cli",
            "demo",
            "--once",
            *extra,
            "--files",
            "4",
            "--home",
            str(home),
            "--timeout",
            "300",
            *[arg for name, port in ports.items() for arg in (f"--{name}-port", port)],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Warning" not in proc.stderr, proc.stderr[-4000:]
    return out


def _final(out: str) -> tuple[int, int, str, int, int]:
    final = re.search(
        r"exported (\d+), failed (\d+) \(via (webhook trigger|[^)]*)\); ERP holds (\d+) "
        r"invoice\(s\), (\d+) duplicate",
        out,
    )
    assert final, out[-4000:]
    exported, failed, via, at_erp, duplicates = final.groups()
    return int(exported), int(failed), via, int(at_erp), int(duplicates)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_once_exports_every_sample_via_the_webhook(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    out = _run_demo(home, tmp_path, "--fresh")
    assert _final(out) == (4, 0, "webhook trigger", 4, 0), out[-4000:]
    assert "ingest:  4 uploaded, 0 duplicate, 0 failed" in out, out[-4000:]
    # What a person needs: URLs, logins, where the reports and logs are.
    assert "where to look" in out and "/_erp/received" in out and "runner.log" in out
    assert re.search(r"export report\s+\S+/export-state/reports/export-\S+\.csv", out), out
    runner_log = (home / "runner.log").read_text()
    assert "flow runs start from a preloaded fork server" in runner_log
    # queue 2 (no confirmed state) next to queue 1: Rossum's export hook, answered by rossflow
    event = re.search(
        r"queue 2 \(export event\): exported (\d+), failed (\d+), still exporting (\d+); "
        r"ERP received (\d+) more invoice\(s\), (\d+) duplicate",
        out,
    )
    assert event, out[-4000:]
    assert tuple(int(g) for g in event.groups()) == (4, 0, 0, 4, 0), out[-4000:]
    assert "rossum-export-event/event-queues-2" in runner_log


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_once_twice_in_the_same_folder_exports_every_sample_both_times(
    tmp_path: Path,
) -> None:
    """The sandbox database and the ledgers are reused together: the second run drops new
    samples, uploads and exports all of them (before: 0 documents, "uploaded: 8")."""
    home = tmp_path / "demo"
    first = _run_demo(home, tmp_path, "--fresh")
    assert _final(first)[:2] == (4, 0), first[-4000:]
    second = _run_demo(home, tmp_path)
    assert "reusing the demo state" in second, second[-4000:]
    assert "ingest:  4 uploaded, 0 duplicate, 0 failed, 0 deferred, 0 skipped (4 upload(s)" in (
        second
    ), second[-4000:]
    assert _final(second) == (4, 0, "webhook trigger", 4, 0), second[-4000:]
    # The sandbox kept the first run's documents: 8 exported annotations in queue 1 now.
    with sqlite3.connect(home / "sandbox.db") as db:
        (exported,) = db.execute(
            "select count(*) from annotations where queue = 1 and status = 'exported'"
        ).fetchone()
    assert exported == 8
    # A part of the state missing: everything is reset together, and the run still works.
    (home / "ingest.db").unlink()
    third = _run_demo(home, tmp_path)
    assert "was incomplete (missing: ingest.db)" in third, third[-4000:]
    assert _final(third)[:2] == (4, 0), third[-4000:]
