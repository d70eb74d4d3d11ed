"""The committed lock (``constraints.txt``) still matches ``pyproject.toml``: every requirement,
extras included, is pinned there and the pin satisfies it (regenerate: see the file's header)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"


def _pins() -> dict[str, list[tuple[Version, str]]]:
    """name -> [(pinned version, marker text)] (a universal lock may pin per Python version)."""
    pins: dict[str, list[tuple[Version, str]]] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.*))?", line)
        assert match, f"constraints.txt: not an exact pin: {raw!r}"
        name, version, marker = match.groups()
        pins.setdefault(canonicalize_name(name), []).append((Version(version), marker or ""))
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(f"[{extra}]", Requirement(r)) for r in items]
    return reqs


def test_every_requirement_is_pinned_and_satisfied() -> None:
    pins = _pins()
    problems = []
    for where, req in _requirements():
        found = pins.get(canonicalize_name(req.name))
        if not found:
            problems.append(f"{req} ({where}) is not pinned")
            continue
        for version, marker in found:
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"{req} ({where}) is pinned to {version} {marker}".strip())
    assert not problems, (
        "constraints.txt no longer matches pyproject.toml; regenerate it with the command in "
        "its header:\n" + "\n".join(problems)
    )


def test_lock_covers_this_python() -> None:
    """Each locked package has exactly one pin that applies to the running interpreter."""
    from packaging.markers import Marker

    env = default_environment()
    for name, found in _pins().items():
        applicable = [v for v, m in found if not m or Marker(m).evaluate(env)]  # type: ignore[arg-type]
        assert len(applicable) <= 1, f"{name}: several pins apply here: {applicable}"
    for where, req in _requirements():
        if req.marker is None or req.marker.evaluate():
            pinned = [
                v
                for v, m in _pins()[canonicalize_name(req.name)]
                if not m or Marker(m).evaluate(env)  # type: ignore[arg-type]
            ]
            assert pinned, f"{req} ({where}) has no pin for this Python"


def test_lock_header_says_how_to_regenerate() -> None:
    head = LOCK.read_text().splitlines()[:3]
    assert any("uv pip compile pyproject.toml" in line for line in head), head
