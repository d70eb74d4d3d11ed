"""Run owners, staleness and content leases (SQLite, no servers)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from rossflow.ingest import IngestState, RunOwner
from rossflow.ingest.state import owner_is_stale


def dead_owner(run_id: str = "dead") -> RunOwner:
    """An owner whose process has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = RunOwner.current(run_id)
    return replace(owner, pid=int(proc.stdout), proc_started=1.0)


def test_staleness_rules() -> None:
    live = RunOwner.current("live")
    assert not owner_is_stale(live, me="me", stale_after_s=60)
    assert not owner_is_stale(live, me="live", stale_after_s=0)  # never stale to itself
    assert owner_is_stale(live.finished(), me="me", stale_after_s=60)
    assert owner_is_stale(dead_owner(), me="me", stale_after_s=3600)
    silent = replace(live, heartbeat_at=time.time() - 120)
    assert owner_is_stale(silent, me="me", stale_after_s=60)
    other_host = replace(live, host="elsewhere", pid=1)
    assert not owner_is_stale(other_host, me="me", stale_after_s=60)
    # No owner record at all: the age of the claim decides.
    assert not owner_is_stale(None, me="me", stale_after_s=60, fallback_age_s=5)
    assert owner_is_stale(None, me="me", stale_after_s=60, fallback_age_s=61)
    assert RunOwner.from_json(live.to_json()) == live
    assert RunOwner.from_json("not json") is None


def test_leases_exclusive_until_owner_dies(tmp_path: Path) -> None:
    state = IngestState(tmp_path / "s.db", stale_after_s=3600)
    a, b = RunOwner.current("run-a"), RunOwner.current("run-b")
    state.register_run(a)
    state.register_run(b)
    assert state.acquire_lease("k", "run-a/1", "run-a") is None
    assert state.acquire_lease("k", "run-a/1", "run-a") is None  # re-entrant for the holder
    assert state.acquire_lease("k", "run-b/1", "run-b") == "run-a/1"
    assert state.acquire_lease("k", "run-a/2", "run-a") == "run-a/1"  # same run, other file
    state.finish_run(a.finished())  # a finished: its leases are gone
    assert state.acquire_lease("k", "run-b/1", "run-b") is None
    # A holder that died without finishing loses the lease too.
    corpse = dead_owner("run-c")
    state.register_run(corpse)
    assert state.acquire_lease("k2", "run-c/1", "run-c") is None
    assert state.acquire_lease("k2", "run-b/2", "run-b") is None
    assert state.lease_holder("k2") == "run-b/2"
    state.release_lease("k2", "run-b/2")
    assert state.lease_holder("k2") is None
    assert state.run_is_dead("run-c", me="run-b")
    assert not state.run_is_dead("run-b", me="run-x")
    state.close()


def test_local_locks(tmp_path: Path) -> None:
    state = IngestState(tmp_path / "s.db")
    for run in ("a", "b"):
        state.register_run(RunOwner.current(run))
    assert state.try_lock("bucket/key", "a")
    assert not state.try_lock("bucket/key", "b")
    state.unlock("bucket/key", "a")
    assert state.try_lock("bucket/key", "b")
    state.close()
