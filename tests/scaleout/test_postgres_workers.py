"""Scale-out on PostgreSQL: a Prefect server on a real PostgreSQL cluster, two process workers,
and concurrent export runs over 500 confirmed annotations — nothing delivered twice, none lost.

Everything is real and local: a PostgreSQL cluster from Debian's ``postgresql`` (``initdb`` on a
temporary directory and port), ``prefect server start`` on it, a process work pool, two
``prefect worker start`` subprocesses (each allowed 4 runs at a time, so that neither can take
all 7), the export flow deployed from this checkout, the Rossum sandbox and the ERP stand-in.

Seven flow runs are started at once: five over disjoint slices of 100 annotation ids and two over
the whole queue, so that runs overlap on the same annotations on purpose. All runs share one
``state_dir`` (the SQLite ledger) because both workers are on this machine. Two hosts sharing
rossflow's state on PostgreSQL, with an ERP that ignores ``Idempotency-Key``, are
test_two_hosts_chaos.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rossflow.localstack.erp import ErpServer
from sandbox.server import SandboxServer
from tests.scaleout.processes import (
    PostgresCluster,
    Service,
    postgres_bindir,
    prefect_env,
    start_prefect_server,
    start_worker,
    stop_all,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "erp-json.yaml"
POOL = "rossflow-scaleout"
TOTAL = 500
SLICE = 100
WHOLE_QUEUE_RUNS = 2
WORKER_LIMIT = 4

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def postgres() -> Iterator[PostgresCluster]:
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs them: missing there is an error
        pytest.skip(message)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.root.exists()


@pytest.fixture
def stack(postgres: PostgresCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Prefect server on PostgreSQL + work pool + two workers; every process stopped after."""
    services: list[Service] = []
    try:
        server = start_prefect_server(tmp_path, postgres.url)
        services.append(server)
        server_s = wait_healthy(server, f"{server.url}/health", timeout=240)
        env = prefect_env(tmp_path / "cli-home", PREFECT_API_URL=server.url)
        (tmp_path / "cli-home").mkdir()
        created = _run_cli(["work-pool", "create", POOL, "--type", "process"], env)
        assert created.returncode == 0, created.stdout + created.stderr
        workers = [
            start_worker(tmp_path, server.url, POOL, name, WORKER_LIMIT)
            for name in ("scaleout-a", "scaleout-b")
        ]
        services += workers
        yield {"server": server, "workers": workers, "server_s": server_s}
    finally:
        stop_all(services)


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _statuses(sandbox: SandboxServer, ids: list[int]) -> dict[int, str]:
    from rossflow.rossum import RossumClient

    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password, rate_limit_per_s=None
    ) as client:
        return {a["id"]: a["status"] async for a in client.list_annotations(ids=ids)}


def _submitted_by(workers: list[Service]) -> dict[str, str]:
    """flow run id -> worker name, from each worker's own log."""
    found: dict[str, str] = {}
    for worker in workers:
        text = worker.log.read_text(errors="replace")
        # Both workers may try the same run; the server lets one have it, the other aborts.
        aborted = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
        for run_id in re.findall(r"submitting flow run '([0-9a-f-]{36})'", text):
            if run_id not in aborted:
                found[run_id] = worker.name
    return found


def test_two_workers_on_postgres_export_each_annotation_exactly_once(
    postgres: PostgresCluster, stack: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.flows import Flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import RestTarget, RossumCredentials

    server: Service = stack["server"]
    workers: list[Service] = stack["workers"]
    state_dir = tmp_path / "state"  # one ledger for every run: both workers are on this host
    timings: dict[str, float] = {
        "postgres_start_s": postgres.startup_s,
        "prefect_server_start_s": stack["server_s"],
    }

    with (
        SandboxServer(db=":memory:") as sandbox,
        ErpServer() as erp,
        temporary_settings(updates={PREFECT_API_URL: server.url}),
    ):
        ids = sandbox.seed(queue=1, count=TOTAL, status="confirmed")
        assert len(ids) == TOTAL

        started = time.monotonic()
        RossumCredentials(
            base_url=sandbox.api_url,
            username=sandbox.username,
            password=sandbox.password,
            rate_limit_per_s=None,
        ).save("scaleout-rossum", overwrite=True)
        RestTarget(base_url=erp.url, max_attempts=5).save("erp", overwrite=True)
        flow = Flow.from_source(source=str(ROOT), entrypoint="flows/export.py:export_confirmed")
        deployment_id = flow.deploy(
            name="scaleout",
            work_pool_name=POOL,
            parameters={
                "queues": [1],
                "pipeline": str(PIPELINE),
                "rossum": "scaleout-rossum",
                "state_dir": str(state_dir),
            },
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,
        )
        timings["blocks_and_deploy_s"] = time.monotonic() - started

        # Five runs over disjoint slices and two over the whole queue, all at once.
        plans: list[dict[str, Any]] = [
            {"annotation_ids": ids[i : i + SLICE]} for i in range(0, TOTAL, SLICE)
        ]
        plans += [{} for _ in range(WHOLE_QUEUE_RUNS)]
        started = time.monotonic()
        runs = [
            run_deployment(deployment_id, parameters=params, timeout=0, as_subflow=False)
            for params in plans
        ]
        run_ids = [r.id for r in runs]

        deadline = time.monotonic() + 300
        with get_client(sync_client=True) as client:
            while True:
                current = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
                )
                if len(current) == len(run_ids) and all(r.state.is_final() for r in current):
                    break
                if time.monotonic() > deadline or not all(w.running() for w in workers):
                    states = {str(r.id): r.state.name for r in current}
                    logs = "\n\n".join(f"== {w.name}\n{w.output(80)}" for w in workers)
                    pytest.fail(f"runs did not finish: {states}\n{logs}\n{server.output(40)}")
                time.sleep(1)
        timings["runs_wall_s"] = time.monotonic() - started

        by_id = {r.id: r for r in current}
        not_completed = {
            f"{by_id[i].name} ({'slice' if by_id[i].parameters.get('annotation_ids') else 'queue'})": f"{by_id[i].state.name}: {by_id[i].state.message}"
            for i in run_ids
            if not by_id[i].state.is_completed()
        }
        submitted = _submitted_by(workers)
        per_worker: dict[str, list[str]] = defaultdict(list)
        for run_id in map(str, run_ids):
            per_worker[submitted.get(run_id, "?")].append(run_id)
        statuses = asyncio.run(_statuses(sandbox, ids))
        not_exported = {i: s for i, s in statuses.items() if s != "exported"}
        stats = erp.stats()
        received = erp.received()
        created = [r for r in received if not r["duplicate"] and 200 <= r["status"] < 300]
        numbers = [json.loads(r["body"])["number"] for r in created]
        keys_per_number: dict[str, set[str]] = defaultdict(set)
        for r in received:
            keys_per_number[json.loads(r["body"])["number"]].add(r["idempotency_key"])
        durations = sorted(
            (r.end_time - r.start_time).total_seconds()
            for r in current
            if r.start_time and r.end_time
        )
        summary = {
            **{k: round(v, 1) for k, v in timings.items()},
            "flow_runs": len(run_ids),
            "runs_per_worker": {k: len(v) for k, v in sorted(per_worker.items())},
            "run_duration_s": [round(d, 1) for d in durations],
            "erp": {k: stats[k] for k in ("requests", "documents", "duplicates")},
            "annotations_exported": len(statuses) - len(not_exported),
            "runs_not_completed": not_completed,
        }
        print("\nscale-out summary:", json.dumps(summary))
        report = os.environ.get("ROSSFLOW_SCALEOUT_REPORT")
        if report:
            Path(report).write_text(json.dumps(summary, indent=2) + "\n")

    # None twice: the ERP created exactly one document per annotation. Overlapping runs may
    # repeat a call, but only with the same Idempotency-Key, which the ERP answers from its
    # record (counted as a duplicate, never as a new document).
    assert stats["documents"] == TOTAL, stats
    assert len(numbers) == len(set(numbers)) == TOTAL
    assert all(len(keys) == 1 for keys in keys_per_number.values())
    # None lost: every annotation ended exported.
    assert len(statuses) == TOTAL
    assert not not_exported, f"{len(not_exported)} not exported: {list(not_exported.items())[:10]}"
    # Every run, overlapping or not, completed; both workers ran some.
    assert not not_completed, not_completed
    assert set(per_worker) == {"scaleout-a", "scaleout-b"}, dict(per_worker)
