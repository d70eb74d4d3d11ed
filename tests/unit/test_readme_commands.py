"""CI runs exactly the README's commands: the set-up and test commands in ``.ci/run`` are the
ones the README shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ci_var(name: str) -> str:
    match = re.search(rf"^{name}='(.*)'$", (ROOT / ".ci/run").read_text(), re.MULTILINE)
    assert match, f".ci/run defines no {name}"
    return match.group(1)


def test_readme_commands_are_the_ci_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    setup, test = _ci_var("SETUP"), _ci_var("TEST")
    assert commands == [f"{setup} && rossflow demo --once", f"{setup} && {test}"], commands
    assert "-c constraints.txt" in setup


def test_readme_and_docs_are_self_contained() -> None:
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    files += list((ROOT / "rossflow").rglob("*.md")) + list((ROOT / "sandbox").rglob("*.md"))
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "../shared/" in line or "/work/shared" in line
    ]
    assert not offenders, offenders
