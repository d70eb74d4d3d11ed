"""Exported-since mode against the sandbox over HTTP and the ERP stand-in (plain Python; runs in
child processes where two workers or a crash are needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rossflow.artifacts import ArtifactStore
from rossflow.export.engine import ExportEngine
from rossflow.export.exported_since import (
    ExportedSince,
    ExportedSinceResult,
    advance_watermark,
    normalize_ts,
    shift_ts,
)
from rossflow.export.loading import load_pipeline
from rossflow.ledger import Ledger
from rossflow.state.watermarks import WatermarkStore
from tests.export.conftest import ExportRig
from tests.export.test_engine import ERP_PIPELINE

ROOT = Path(__file__).parents[2]
STATUS_CHANGES = ("PATCH /api/v1/annotations/{id:int}", "POST /api/v1/queues/{id:int}/export")


async def run_once(rig: ExportRig, **kw: Any) -> ExportedSinceResult:
    config = load_pipeline(ERP_PIPELINE)
    ledger = Ledger(rig.state / "ledger.db")
    watermarks = WatermarkStore(rig.state / "state.db")
    try:
        async with (
            rig.client() as client,
            ExportEngine(
                config,
                client,
                ledger=ledger,
                artifacts=ArtifactStore(rig.state / "artifacts"),
                targets=rig.targets(),
                concurrency=kw.pop("concurrency", 4),
                move_status=False,
            ) as engine,
        ):
            return await ExportedSince(
                engine,
                client,
                ledger=ledger,
                watermarks=watermarks,
                queue_id=kw.pop("queue", 1),
                pipeline=config.name,
                page_size=kw.pop("page_size", 10),
                **kw,
            ).run()
    finally:
        ledger.close()
        watermarks.close()


async def exported_state(rig: ExportRig, ids: list[int]) -> dict[int, tuple[str, str]]:
    """Status and ``exported_at`` of each annotation, as Rossum reports them."""
    async with rig.client() as client:
        return {
            a["id"]: (a["status"], a["exported_at"]) async for a in client.list_annotations(ids=ids)
        }


def status_changing_requests(sandbox: Any) -> int:
    routes = sandbox.stats()["requests"]
    return sum(v for k, v in routes.items() if k.startswith(STATUS_CHANGES))


def invoice_numbers(erp: Any) -> list[str]:
    return [json.loads(r["body"])["number"] for r in erp.received()]


async def test_each_exported_annotation_once_status_untouched_later_exports_picked_up(rig):
    ids = rig.sandbox.seed(queue=1, count=25, status="exported")  # one exported_at: a tie
    rig.sandbox.seed(queue=1, count=3, status="confirmed")  # not exported: never read
    before = await exported_state(rig, ids)
    rig.sandbox.reset_stats()

    first = await run_once(rig, page_size=10)
    assert first.counts() == {"delivered": 25}
    assert sorted(r.annotation_id for r in first.reports) == ids
    assert rig.erp.stats()["documents"] == 25
    stamp = normalize_ts(before[ids[0]][1])
    assert first.watermark_before is None and first.watermark_after == stamp
    (warning,) = first.warnings  # queue 1 of the sandbox uses the confirmed state
    assert "queue 1 uses the confirmed state" in warning

    second = await run_once(rig, page_size=10)
    assert second.reports == [] and second.already_done == 25
    assert rig.erp.stats()["documents"] == 25

    time.sleep(0.01)
    later = rig.sandbox.seed(queue=1, count=5, status="exported")
    third = await run_once(rig, page_size=10)
    assert sorted(r.annotation_id for r in third.reports) == later
    assert third.counts() == {"delivered": 5}
    assert rig.erp.stats()["documents"] == 30
    assert len(set(invoice_numbers(rig.erp))) == 30

    # Status and exported_at are exactly as Rossum left them; no status call was ever made.
    assert await exported_state(rig, ids) == before
    assert status_changing_requests(rig.sandbox) == 0


async def test_re_export_runs_again_but_an_unchanged_payload_is_not_resent(rig):
    # Queue 2 of the sandbox has no confirmed state: Rossum exports by itself, no warning.
    ids = rig.sandbox.seed(queue=2, count=3, status="exported")
    first = await run_once(rig, queue=2)
    assert first.counts() == {"delivered": 3} and first.warnings == []
    assert rig.erp.stats()["documents"] == 3
    time.sleep(0.01)
    rig.sandbox.force_status(ids[1], "exported")  # Rossum exported it again: new exported_at
    again = await run_once(rig, queue=2)
    assert [(r.annotation_id, r.outcome) for r in again.reports] == [(ids[1], "delivered")]
    assert "reused" in again.reports[0].message
    assert rig.erp.stats()["requests"] == 3  # same request: the ledger's recorded reply


async def test_failure_is_reported_retried_next_run_and_holds_the_watermark(rig):
    early = rig.sandbox.seed(queue=1, count=3, status="exported")
    time.sleep(0.01)
    late = rig.sandbox.seed(queue=1, count=3, status="exported")
    stamps = await exported_state(rig, early + late)
    # The first delivery (lowest exported_at, then id) meets an ERP outage for all 3 attempts.
    rig.erp.configure(
        {"script": [{"status": 503, "body": {"error": "down"}, "times": 3}]}, merge=True
    )
    first = await run_once(rig, concurrency=1)
    outcomes = {r.annotation_id: r.outcome for r in first.reports}
    assert outcomes == {early[0]: "failed", **{i: "delivered" for i in early[1:] + late}}
    failed = next(r for r in first.reports if r.outcome == "failed")
    assert "503" in failed.message and "next run retries" in failed.message
    assert first.watermark_after == normalize_ts(stamps[early[0]][1])  # waits for the failure

    second = await run_once(rig)
    assert [(r.annotation_id, r.outcome) for r in second.reports] == [(early[0], "delivered")]
    assert second.watermark_after == normalize_ts(stamps[late[0]][1])
    assert rig.erp.stats()["documents"] == 6
    assert {s for s, _ in (await exported_state(rig, early + late)).values()} == {"exported"}
    assert status_changing_requests(rig.sandbox) == 0


async def test_given_up_after_max_attempts_then_the_watermark_passes_it(rig):
    ids = rig.sandbox.seed(queue=1, count=3, status="exported")
    rig.erp.configure(
        {"script": [{"status": 422, "body": {"error": "bad vendor"}, "times": 1}]}, merge=True
    )
    first = await run_once(rig, concurrency=1, max_attempts=2)
    assert sorted(r.outcome for r in first.reports) == ["delivered", "delivered", "failed"]
    second = await run_once(rig, max_attempts=2)  # the ERP answers 422 again (idempotent key)
    assert [r.outcome for r in second.reports] == ["failed_gave_up"]
    assert "gave up after 2 attempts" in second.reports[0].message
    requests = rig.erp.stats()["requests"]
    third = await run_once(rig, max_attempts=2)
    assert third.reports == [] and rig.erp.stats()["requests"] == requests
    stamp = (await exported_state(rig, ids))[ids[0]][1]
    assert third.watermark_after == normalize_ts(stamp)


async def test_start_at_skips_older_exports_and_pages_over_distinct_timestamps(rig):
    old = rig.sandbox.seed(queue=1, count=3, status="exported")
    ids = rig.sandbox.seed(queue=1, count=12, status="confirmed")
    time.sleep(0.01)
    start = shift_ts(normalize_ts((await exported_state(rig, old))[old[0]][1]), 0.001)
    for ann_id in ids:  # twelve distinct exported_at values, read five at a time
        rig.sandbox.force_status(ann_id, "exported")
    result = await run_once(rig, page_size=5, start_at=start)
    assert [r.annotation_id for r in result.reports] == ids  # in exported_at order
    assert rig.erp.stats()["documents"] == 12
    last = (await exported_state(rig, ids))[ids[-1]][1]
    assert result.watermark_after == normalize_ts(last)


async def test_an_export_that_becomes_visible_late_is_still_delivered(rig):
    """An annotation whose ``exported_at`` is older than the watermark when it first shows up
    (a late commit; here: moved into the queue afterwards) is read again thanks to
    ``lookback_s``; the ledger skips everything else in that window."""
    late = rig.sandbox.seed(queue=2, count=1, status="exported")[0]  # exported first …
    time.sleep(0.01)
    ids = rig.sandbox.seed(queue=1, count=3, status="exported")
    first = await run_once(rig)
    assert sorted(r.annotation_id for r in first.reports) == ids
    async with rig.client() as client:  # … and visible in queue 1 only now
        await client.request("PATCH", f"/v1/annotations/{late}", json={"queue": 1})
    assert normalize_ts((await exported_state(rig, [late]))[late][1]) < first.watermark_after

    without = await run_once(rig, lookback_s=0)  # what a plain "after the watermark" misses
    assert without.reports == []
    second = await run_once(rig)
    assert [r.annotation_id for r in second.reports] == [late]
    assert second.already_done == 3
    assert rig.erp.stats()["documents"] == 4


def test_watermark_moves_only_forward_by_compare_and_set(tmp_path):
    store = WatermarkStore(tmp_path / "state.db")
    assert advance_watermark(store, 1, "p", "2026-01-01T00:00:02.000000Z").endswith("02.000000Z")
    # A slower run that finished less cannot move it back.
    assert advance_watermark(store, 1, "p", "2026-01-01T00:00:01.000000Z").endswith("02.000000Z")
    assert store.get(1, "p") == "2026-01-01T00:00:02.000000Z"
    assert normalize_ts("2026-01-01 01:00:00+01:00") == "2026-01-01T00:00:00.000000Z"


# ------------------------------------------------------------------- two processes, a crash


def _child(rig: ExportRig, env: dict[str, str], **config: Any) -> subprocess.Popen[bytes]:
    payload = {
        "api_url": rig.sandbox.api_url,
        "username": rig.sandbox.username,
        "password": rig.sandbox.password,
        "erp_url": rig.erp.url,
        "state": str(rig.state),
        "pipeline": ERP_PIPELINE,
        **config,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.export.exported_since_child", json.dumps(payload)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_overlapping_runs_deliver_each_annotation_exactly_once(
    rig, backend, request, monkeypatch
):
    env: dict[str, str] = {}
    if backend == "postgresql":
        state = request.getfixturevalue("pg_state")
        env = state.env
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    n = 40
    ids = rig.sandbox.seed(queue=1, count=n, status="exported")
    rig.erp.configure({"latency_s": 0.05}, merge=True)
    go = rig.state.parent / "go"
    children = [_child(rig, env, go_file=str(go), concurrency=4) for _ in range(2)]
    for child in children:  # both set up (imports, state store open) before either starts
        assert child.stdout is not None
        line = child.stdout.readline().decode().strip()
        assert line == "ready", (line, child.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
    go.touch()
    outs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=180)
        assert child.returncode == 0, stderr.decode()[-3000:]
        outs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    a, b = (set(o["delivered"]) for o in outs)
    assert a and b, f"the runs did not overlap: {outs}"
    assert not a & b and a | b == set(ids)
    stats = rig.erp.stats()
    assert stats["documents"] == n and stats["duplicates"] == 0, stats
    assert sorted(invoice_numbers(rig.erp)) == sorted(set(invoice_numbers(rig.erp)))
    # Whatever either left to the other, a later run finds everything done.
    rig.erp.configure({"latency_s": 0.0}, merge=True)
    after = await run_once(rig)
    assert after.reports == [] and after.already_done == n
    stamp = (await exported_state(rig, ids))[ids[0]][1]
    assert after.watermark_after == normalize_ts(stamp)
    assert status_changing_requests(rig.sandbox) == 0


async def test_sigkill_mid_batch_then_rerun_delivers_each_once_and_skips_none(rig):
    n = 40
    ids = rig.sandbox.seed(queue=1, count=n, status="exported")
    rig.erp.configure({"latency_s": 0.1}, merge=True)
    child = _child(rig, {}, concurrency=4)
    deadline = time.monotonic() + 120
    while rig.erp.stats()["requests"] < 14:  # inside the second batch of 10
        assert child.poll() is None, child.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    delivered_before = rig.erp.stats()["documents"]
    assert 0 < delivered_before < n
    stamp = normalize_ts((await exported_state(rig, ids))[ids[0]][1])
    watermarks = WatermarkStore(rig.state / "state.db")
    assert watermarks.get(1, "erp-json") in (None, stamp)  # never past what is unfinished
    watermarks.close()

    rig.erp.configure({"latency_s": 0.0}, merge=True)
    rerun = await run_once(rig)
    assert rerun.counts() == {"delivered": n - rerun.already_done}
    stats = rig.erp.stats()
    assert stats["documents"] == n, stats  # every invoice created exactly once
    assert stats["duplicates"] <= 4, stats  # in flight at the kill: same Idempotency-Key
    assert len(set(invoice_numbers(rig.erp))) == n
    assert {s for s, _ in (await exported_state(rig, ids)).values()} == {"exported"}
    assert status_changing_requests(rig.sandbox) == 0
