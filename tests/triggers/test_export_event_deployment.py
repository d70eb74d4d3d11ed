"""What ``rossflow serve --event-queues`` registers for the export-event mode."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from deployments.serve import build


async def test_event_queue_groups_get_export_event_deployments(tmp_path: Path) -> None:
    deployments = await build(
        pipeline="/etc/rossflow/pipeline.yaml",
        queue_groups=[[1]],
        event_queue_groups=[[2, 3]],
        state_dir=str(tmp_path),
    )
    by_name = {d.full_name: d for d in deployments}
    event = by_name["rossum-export-event/event-queues-2-3"]
    assert event.entrypoint == "flows.export_event.export_event"
    assert event.parameters["queues"] == [2, 3]
    assert event.parameters["jobs_db"] == str(tmp_path / "export-jobs.db")
    assert event.concurrency_limit == 1
    (trigger,) = event.triggers
    assert trigger.expect == {"rossum.annotation.export_requested"}
    assert trigger.match_related.model_dump() == {
        "prefect.resource.role": "queue",
        "prefect.resource.id": ["rossum.queue.2", "rossum.queue.3"],
    }
    assert trigger.within == trigger.schedule_after == timedelta(seconds=1)
    assert "rossum-export/queues-1" in by_name


async def test_a_queue_in_both_modes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="queue 2 is in two groups"):
        await build(pipeline="p.yaml", queue_groups=[[2]], event_queue_groups=[[2]])


def test_export_event_flow_parameters_have_descriptions() -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint("flows.export_event:export_event")
    schema = parameter_schema(flow).model_dump()
    assert all(p.get("description") for p in schema["properties"].values())
