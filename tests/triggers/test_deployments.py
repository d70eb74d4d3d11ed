"""Deployments: what ``rossflow serve`` registers and what ``prefect deploy`` makes of prefect.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.serve import build, check_groups, export_trigger

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


async def test_build_registers_export_per_group_and_ingest_per_source(tmp_path: Path) -> None:
    deployments = await build(
        pipeline="/etc/rossflow/pipeline.yaml",
        queue_groups=[[1], [2, 3]],
        ingest_sources=["sftp-inbox", "s3-inbox"],
        state_dir=str(tmp_path),
        export_interval_s=600,
        ingest_interval_s=120,
        coalesce_s=3,
    )
    by_name = {d.full_name: d for d in deployments}
    assert set(by_name) == {
        "rossum-export/queues-1",
        "rossum-export/queues-2-3",
        "rossflow-ingest/scheduled",
    }
    export = by_name["rossum-export/queues-2-3"]
    assert export.entrypoint == "flows.export.export_confirmed"  # the installed package
    assert export.parameters["queues"] == [2, 3]
    assert export.parameters["state_dir"] == str(tmp_path / "export-state")
    assert export.concurrency_limit == 1
    assert export.concurrency_options.collision_strategy.value == "ENQUEUE"
    (trigger,) = export.triggers
    assert trigger.expect == {"rossum.annotation.status_changed"}
    assert trigger.match_related.model_dump() == {
        "prefect.resource.role": "queue",
        "prefect.resource.id": ["rossum.queue.2", "rossum.queue.3"],
    }
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    assert trigger.within == trigger.schedule_after == timedelta(seconds=3)
    assert [s.schedule.interval for s in export.schedules] == [timedelta(seconds=600)]

    ingest = by_name["rossflow-ingest/scheduled"]
    assert [(s.schedule.interval, s.parameters) for s in ingest.schedules] == [
        (timedelta(seconds=120), {"source": "sftp-inbox"}),
        (timedelta(seconds=120), {"source": "s3-inbox"}),
    ]
    assert ingest.parameters["options"] == {"ledger_path": str(tmp_path / "ingest.db")}
    assert ingest.concurrency_limit is None  # ingest runs may overlap safely


async def test_build_registers_exported_since_per_group(tmp_path: Path) -> None:
    deployments = await build(
        pipeline="/etc/rossflow/pipeline.yaml",
        queue_groups=[[1]],
        exported_since_groups=[[2]],
        exported_since_interval_s=120,
        state_dir=str(tmp_path),
    )
    since = {d.full_name: d for d in deployments}[
        "rossflow-export-exported-since/exported-since-queues-2"
    ]
    assert since.entrypoint == "flows.export_exported_since.export_exported_since"
    assert since.parameters["queues"] == [2]
    assert since.parameters["state_dir"] == str(tmp_path / "export-state")
    assert not since.triggers and since.concurrency_limit == 1
    assert [s.schedule.interval for s in since.schedules] == [timedelta(seconds=120)]
    with pytest.raises(ValueError, match="queue 1 is in two groups"):
        await build(pipeline="p.yaml", queue_groups=[[1]], exported_since_groups=[[1]])


def test_overlapping_queue_groups_are_refused() -> None:
    check_groups([[1, 2], [3]])
    with pytest.raises(ValueError, match="queue 2 is in two groups"):
        check_groups([[1, 2], [2, 3]])


def test_trigger_matches_only_confirmed_by_default() -> None:
    trigger = export_trigger([5])
    assert trigger.match.model_dump() == {"rossum.annotation.status": ["confirmed"]}
    assert export_trigger([5], statuses=["confirmed", "exporting"]).match.model_dump() == {
        "rossum.annotation.status": ["confirmed", "exporting"]
    }


@pytest.mark.parametrize(
    "entrypoint",
    [
        "flows.export:export_confirmed",
        "flows.ingest:ingest",
        "flows.export_exported_since:export_exported_since",
    ],
)
def test_every_parameter_has_a_description_for_the_run_form(entrypoint: str) -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(load_flow_from_entrypoint(entrypoint)).model_dump()
    missing = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert not missing, f"{entrypoint}: no description for {missing}"


# ----------------------------------------------------------------------------- prefect.yaml


def _yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def test_prefect_yaml_is_consistent() -> None:
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from pydantic import TypeAdapter

    config = _yaml()
    adapter = TypeAdapter(DeploymentTriggerTypes)
    names = set()
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        names.add(f"{flow.name}/{deployment['name']}")
        for trigger in deployment.get("triggers") or []:
            parsed = adapter.validate_python(trigger)
            assert parsed.within == parsed.schedule_after  # see docs/triggers.md
            assert parsed.match_related is not None
        if flow.name == "rossum-export":
            assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
            assert deployment["triggers"]
    assert names == {
        "rossum-export/queues-1",
        "rossflow-ingest/scheduled",
        "rossflow-export-exported-since/exported-since-queues-2",
    }


@pytest.mark.slow
async def test_prefect_deploy_creates_the_deployments(prefect_harness, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name="rossflow", type="process"))
        except ObjectAlreadyExists:
            pass
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "ROSSFLOW_HOME": str(tmp_path),
        "ROSSFLOW_PIPELINE": str(tmp_path / "pipeline.yaml"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(PREFECT_YAML),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    async with get_client() as client:
        export = await client.read_deployment_by_name("rossum-export/queues-1")
        ingest = await client.read_deployment_by_name("rossflow-ingest/scheduled")
        since = await client.read_deployment_by_name(
            "rossflow-export-exported-since/exported-since-queues-2"
        )
        automations = await client.read_resource_related_automations(
            f"prefect.deployment.{export.id}"
        )
        try:
            assert export.parameters["queues"] == [1]
            assert export.parameters["state_dir"] == f"{tmp_path}/export-state"
            assert export.global_concurrency_limit.limit == 1
            assert export.concurrency_options.collision_strategy.value == "ENQUEUE"
            schedules = {s.slug: s for s in export.schedules}
            assert schedules["nightly"].parameters == {"on_failure": "keep_confirmed"}
            assert export.parameter_openapi_schema["properties"]["queues"]["description"]
            assert {s.parameters["source"] for s in ingest.schedules} == {"sftp-inbox", "s3-inbox"}
            (automation,) = automations
            assert automation.trigger.expect == {"rossum.annotation.status_changed"}
            assert automation.actions[0].schedule_after == timedelta(seconds=3)
            assert since.parameters["queues"] == [2] and since.schedules
            assert since.parameter_openapi_schema["properties"]["lookback_s"]["description"]
        finally:
            for deployment in (export, ingest, since):
                await client.delete_resource_owned_automations(
                    f"prefect.deployment.{deployment.id}"
                )
                await client.delete_deployment(deployment.id)


def test_fast_start_resolves_both_entrypoint_forms() -> None:
    from deployments.fast_start import flow_for
    from flows.export import export_confirmed

    assert flow_for("flows.export.export_confirmed") is export_confirmed  # module path
    assert flow_for("flows/export.py:export_confirmed") is None  # file paths: Prefect's start
    assert flow_for("flows.export:export_confirmed") is export_confirmed
    assert flow_for("no_such_module:flow") is None
    assert flow_for(None) is None
