"""The CLI starts quietly: no third-party deprecation warnings on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args", [["--help"], ["sftp", "--help"], ["demo", "--help"], ["doctor", "--help"]]
)
def test_cli_prints_no_warning(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    env["PYTHONWARNINGS"] = "default"  # show every warning that is not filtered on purpose
    proc = subprocess.run(
        [sys.executable, "-m", "rossflow.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert "Warning" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
