"""Export workers sharing the state store on PostgreSQL: a delivery step held by one worker is
never sent by another, whichever host it runs on."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from rossflow.state import URL_ENV
from tests.export.test_engine import ERP_PIPELINE
from tests.fixtures.postgres import StateBackend

N = 8


@pytest.fixture
def other_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Ledger opened from now on is a worker on a different (live) host."""
    numbers = itertools.count(1)
    monkeypatch.setattr(
        "rossflow.ledger.current_owner",
        lambda: json.dumps(
            {"host": f"worker-{next(numbers)}.example", "pid": 1, "proc_started": 1}
        ),
    )


async def test_two_workers_over_the_same_annotations_deliver_each_once(
    rig, pg_state: StateBackend, other_hosts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_ENV, pg_state.url or "")
    ids = rig.sandbox.seed(queue=1, count=N, status="confirmed")
    rig.erp.configure({"latency_s": 0.4}, merge=True)  # both runs are mid-delivery together
    first, second = await asyncio.gather(
        rig.run(ERP_PIPELINE, ids, on_failure="keep_confirmed"),
        rig.run(ERP_PIPELINE, ids, on_failure="keep_confirmed"),
    )
    stats = rig.erp.stats()
    assert stats["requests"] == N and stats["duplicates"] == 0, stats
    assert set((await rig.statuses(ids)).values()) == {"exported"}
    reports = [*first, *second]
    left = [r for r in reports if r.outcome == "not_moved"]
    assert left, "the runs did not overlap"
    for report in left:
        assert "is being done by process 1 on worker-" in report.message, report.message
        assert "left the annotation as it was" in report.message
    exported = {r.annotation_id for r in reports if r.outcome == "exported"}
    assert exported == set(ids)
    assert not (rig.state / "ledger.db").exists()  # the ledger is in PostgreSQL


async def test_sqlite_stays_the_default(rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    ids = rig.sandbox.seed(queue=1, count=2, status="confirmed")
    reports = await rig.run(ERP_PIPELINE, ids)
    assert {r.outcome for r in reports} == {"exported"}
    assert (rig.state / "ledger.db").exists()
