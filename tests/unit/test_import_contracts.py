"""The layer contracts in pyproject.toml ([tool.importlinter]) hold: run `lint-imports`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    # The console script installed next to this interpreter (the dev extra installs it).
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(lint_imports), "--no-logo", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


#: The command-line entry points: the only rossflow modules allowed to import the Prefect layer.
APP_MODULES = {
    "rossflow.cli",
    "rossflow.demo",
    "rossflow.setup",
    "rossflow.doctor",
    "rossflow.hooks_cli",
    "rossflow.export_hook_cli",
}


def test_only_the_cli_entry_points_may_import_the_prefect_layer() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (domain,) = [c for c in config["contracts"] if c["id"] == "domain-without-prefect-layer"]
    importers = {line.split("->")[0].strip() for line in domain["ignore_imports"]}
    assert importers <= APP_MODULES, importers - APP_MODULES
    # And no domain package imports an entry point (that would smuggle the Prefect layer in).
    result = subprocess.run(
        [
            "grep",
            "-rlE",
            r"^\s*(from|import) rossflow\.(cli|demo|setup|doctor|hooks_cli|export_hook_cli)\b",
            str(ROOT / "rossflow"),
        ],
        capture_output=True,
        text=True,
    )
    offenders = {
        p
        for p in result.stdout.split()
        if Path(p).stem not in {m.rsplit(".", 1)[1] for m in APP_MODULES}
    }
    assert not offenders, offenders
