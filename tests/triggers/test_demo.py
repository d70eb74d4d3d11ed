"""The README's first command: ``rossflow demo --once`` runs the whole pipeline by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scaleout.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_once_exports_every_sample_via_the_webhook(tmp_path: Path) -> None:
    home = tmp_path / "demo"
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
            "--fresh",
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
    final = re.search(
        r"exported (\d+), failed (\d+) \(via (webhook trigger|[^)]*)\); ERP holds (\d+) "
        r"invoice\(s\), (\d+) duplicate",
        out,
    )
    assert final, out[-4000:]
    exported, failed, via, at_erp, duplicates = final.groups()
    assert (int(exported), int(failed), int(at_erp), int(duplicates)) == (4, 0, 4, 0), out[-4000:]
    assert via == "webhook trigger", out[-4000:]  # not the in-process safety net
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
