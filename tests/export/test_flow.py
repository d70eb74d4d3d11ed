"""The Prefect export flow on a real (temporary) Prefect server, with blocks and artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from blocks import RestTarget, RossumCredentials
from tests.export.test_engine import ERP_PIPELINE

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _blocks(sandbox, erp) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    rossum, target = f"rossum-{suffix}", "erp"
    await RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=sandbox.password,
        rate_limit_per_s=None,
    ).asave(rossum, overwrite=True)
    await RestTarget(base_url=erp.url, max_attempts=3).asave(target, overwrite=True)
    return rossum, target


async def _statuses(sandbox, ids):
    from rossflow.rossum import RossumClient

    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password, rate_limit_per_s=None
    ) as client:
        return {a["id"]: a["status"] async for a in client.list_annotations(ids=ids)}


async def test_flow_exports_in_batches_and_publishes_artifacts(sandbox, erp_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    from flows.export import export_confirmed

    rossum, _ = await _blocks(sandbox, erp_server)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(ERP_PIPELINE)
    ids = sandbox.seed(queue=1, count=25, status="confirmed")
    sandbox.reset_stats()
    run = await export_confirmed(
        queues=[1],
        pipeline=str(pipeline),
        rossum=rossum,
        batch_size=10,
        state_dir=str(tmp_path / "state"),
        return_state=True,
    )
    counts = await run.result()
    assert counts == {"exported": 25}
    assert set((await _statuses(sandbox, ids)).values()) == {"exported"}
    assert erp_server.stats()["documents"] == 25
    routes = sandbox.stats()["requests"]
    moves = sum(v for k, v in routes.items() if k.startswith("POST /api/v1/queues/{id:int}/export"))
    assert moves == 3  # one to_status call per batch of 10
    reads = sum(v for k, v in routes.items() if k.startswith("GET /api/v1/queues/{id:int}/export"))
    assert reads == 3
    report = sorted((tmp_path / "state" / "reports").glob("export-*.csv"))
    assert report and report[0].read_text().count("\n") == 26
    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["export-report", "export-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.state_details.flow_run_id]),
            ),
        )
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.state_details.flow_run_id]))
        )
    kinds = {a.key: a for a in arts}
    assert {"export-report", "export-summary"} <= set(kinds)
    assert "| exported | 25 |" in kinds["export-summary"].data
    # one task per stage per batch: the REST call with the template before it; the write-back
    # (extract) reaches Rossum, so it is a stage, the last one: the evaluation and finalize
    # run in its task
    assert sorted(t.name for t in tasks) == sorted(
        f"{label} q1 b{no}"
        for no in (1, 2, 3)
        for label in ("render+post_invoice", "keep_erp_id+check+finalize")
    )


async def test_replay_one_annotation_after_a_failure(sandbox, erp_server, tmp_path):
    from flows.export import export_confirmed

    rossum, _ = await _blocks(sandbox, erp_server)
    ids = sandbox.seed(queue=1, count=3, status="confirmed")
    erp_server.configure({"default": {"status": 500, "body": {"error": "ERP down"}}}, merge=True)
    erp_server.configure(
        {"script": [{"status": 201, "body": {"id": "{{id}}"}, "times": 2}]}, merge=True
    )
    counts = await export_confirmed(
        queues=[1], pipeline=ERP_PIPELINE, rossum=rossum, concurrency=1, state_dir=str(tmp_path)
    )
    # three 500s: the ERP may have booked it (issue 16), Rossum shows failed_export
    assert counts == {"exported": 2, "failed_uncertain": 1}
    failed = [i for i, s in (await _statuses(sandbox, ids)).items() if s == "failed_export"]
    assert len(failed) == 1
    erp_server.configure({"default": {"status": 201, "body": {"id": "{{id}}"}}}, merge=True)
    counts = await export_confirmed(
        queues=[1],
        pipeline=ERP_PIPELINE,
        rossum=rossum,
        annotation_ids=failed,
        state_dir=str(tmp_path),
    )
    assert counts == {"exported": 1}
    assert set((await _statuses(sandbox, ids)).values()) == {"exported"}


async def test_sigkill_mid_run_then_rerun_delivers_nothing_twice_and_loses_nothing(
    sandbox, erp_server, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    from flows.export import export_confirmed

    rossum, _ = await _blocks(sandbox, erp_server)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(ERP_PIPELINE)
    n = 60
    ids = sandbox.seed(queue=1, count=n, status="confirmed")
    erp_server.configure({"latency_s": 0.1}, merge=True)
    script = textwrap.dedent(
        f"""
        import asyncio
        from flows.export import export_confirmed
        asyncio.run(export_confirmed(queues=[1], pipeline={str(pipeline)!r}, rossum={rossum!r},
                    batch_size=10, concurrency=4, batches_in_flight=1,
                    state_dir={str(tmp_path / "state")!r}))
        """
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while erp_server.stats()["requests"] < 25:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the flow never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = await _statuses(sandbox, ids)
    assert "confirmed" in before.values(), "killed too late to test anything"
    delivered_before = erp_server.stats()["documents"]
    assert 0 < delivered_before < n

    erp_server.configure({"latency_s": 0.0}, merge=True)
    counts = await export_confirmed(
        queues=[1],
        pipeline=str(pipeline),
        rossum=rossum,
        batch_size=10,
        state_dir=str(tmp_path / "state"),
    )
    after = await _statuses(sandbox, ids)
    assert set(after.values()) == {"exported"}, counts
    stats = erp_server.stats()
    assert stats["documents"] == n, stats  # every invoice created exactly once
    # what was in flight at the kill was re-sent with the same Idempotency-Key (≤ concurrency)
    assert stats["duplicates"] <= 4, stats
    keys = [r["idempotency_key"] for r in erp_server.received()]
    bodies = {json.loads(r["body"])["number"] for r in erp_server.received()}
    assert len(bodies) == n and len(set(keys)) == n
