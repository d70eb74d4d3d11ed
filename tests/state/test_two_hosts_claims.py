"""Two processes with their own home folders and state directories (two "hosts") sharing one
PostgreSQL: every delivery step and every ingest lease is won by exactly one of them. The same
holds for two processes of one host sharing the SQLite file (the default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rossflow.state import URL_ENV
from tests.fixtures.postgres import StateBackend

ROOT = Path(__file__).resolve().parents[2]
N = 300


def race(backend: StateBackend, tmp_path: Path, what: str) -> list[dict[str, list[str]]]:
    keys = [f"{what}-{i}" for i in range(N)]
    start_at = time.time() + 4.0  # both interpreters are up by then
    procs = []
    for index, name in enumerate(("host-a", "host-b")):
        home = tmp_path / name
        home.mkdir()
        env = {**os.environ, **backend.env, "HOME": str(home), "PYTHONPATH": str(ROOT)}
        if backend.url is None:
            env.pop(URL_ENV, None)
        # PostgreSQL: each host has its own (unused) state directory; SQLite: one shared file.
        path = home / ".rossflow" / "state.db" if backend.url else tmp_path / "shared.db"
        config = {
            "what": what,
            "name": name,
            "keys": keys,
            "seed": index,
            "start_at": start_at,
            "path": str(path),
            "finished": str(tmp_path / f"{name}.finished"),
            "other_finished": str(tmp_path / f"{'host-b' if index == 0 else 'host-a'}.finished"),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.state.race_child", json.dumps(config)],
                cwd=home,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    if backend.url:  # neither host wrote a SQLite file of its own
        assert not list(tmp_path.glob("host-*/.rossflow/*.db"))
    return results


@pytest.mark.parametrize("what", ["delivery", "ingest"])
def test_two_hosts_claim_each_key_exactly_once(
    pg_state: StateBackend, tmp_path: Path, what: str
) -> None:
    check(race(pg_state, tmp_path, what), what)


@pytest.mark.parametrize("what", ["delivery", "ingest"])
def test_two_processes_of_one_host_on_sqlite(tmp_path: Path, what: str) -> None:
    check(race(StateBackend("sqlite", tmp_path), tmp_path, what), what)


def check(results: list[dict[str, list[str]]], what: str) -> None:
    a, b = results
    won_a, won_b = set(a["won"]), set(b["won"])
    assert not won_a & won_b, f"claimed twice: {sorted(won_a & won_b)[:10]}"
    assert won_a | won_b == {f"{what}-{i}" for i in range(N)}
    # They really raced: each host won some keys and met the other's claims.
    assert won_a and won_b
    if what == "ingest":
        assert set(a["busy"]) == won_b and set(b["busy"]) == won_a
