"""Deployments of the export-event mode (``rossflow serve --event-queues``).

One deployment of ``flows.export_event:export_event`` per queue group, with

* ``concurrency_limit=1`` and ``ENQUEUE``: two runs never take jobs of the same queues at once
  (jobs are claimed with a lease anyway, so this only saves work);
* a deployment trigger on ``rossum.annotation.export_requested`` (emitted by ``rossflow webhook``
  for each ``annotation_content.export`` call) for the group's queues. Reactive, threshold 1,
  ``within=schedule_after=coalesce_s``: the first call of a burst fires, the following ones
  within the window are absorbed, and the run starts after the window, when every absorbed call
  has its job recorded. The run takes every pending job of its queues and loops until none is
  left; a job that still waits is emitted again when Rossum polls it (see
  :mod:`rossflow.webhook.export_calls`);
* an interval schedule as a safety net (default 60 s; a run with no pending job ends at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from deployments.serve import export_concurrency

EXPORT_EVENT_ENTRYPOINT = "flows.export_event:export_event"
EXPORT_REQUESTED = "rossum.annotation.export_requested"
DEFAULT_EVENT_COALESCE_S = 1.0


def export_event_deployment_name(queues: Sequence[int]) -> str:
    return "event-queues-" + "-".join(str(q) for q in queues)


def export_event_trigger(
    queues: Sequence[int], *, coalesce_s: float = DEFAULT_EVENT_COALESCE_S
) -> Any:
    """A burst of export calls for these queues → one run after ``coalesce_s``."""
    from prefect.events import DeploymentEventTrigger

    window = timedelta(seconds=coalesce_s)
    return DeploymentEventTrigger(
        name=f"export-event {export_event_deployment_name(queues)}",
        description="Rossum annotation_content.export calls (rossflow webhook) → one run per "
        f"{coalesce_s:g}s window for queues {', '.join(map(str, queues))}",
        expect={EXPORT_REQUESTED},
        match_related={
            "prefect.resource.role": "queue",
            "prefect.resource.id": [f"rossum.queue.{q}" for q in queues],
        },
        posture="Reactive",
        threshold=1,
        within=window,
        schedule_after=window,
    )


async def export_event_deployment(
    queues: Sequence[int],
    pipeline: str,
    *,
    jobs_db: str = ".rossflow/export-jobs.db",
    state_dir: str = ".rossflow/export-state",
    rossum: str | None = None,
    secrets_block: str | None = None,
    coalesce_s: float = DEFAULT_EVENT_COALESCE_S,
    interval_s: float | None = 60.0,
    lease_s: float = 60.0,
    tags: Sequence[str] = ("rossflow", "export", "export-event"),
) -> Any:
    """A ``RunnerDeployment`` of the export-event flow for one queue group."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Interval

    from flows.export_event import export_event

    queues = [int(q) for q in queues]
    parameters: dict[str, Any] = {
        "queues": queues,
        "pipeline": pipeline,
        "jobs_db": jobs_db,
        "state_dir": state_dir,
        "lease_s": lease_s,
    }
    if rossum:
        parameters["rossum"] = rossum
    if secrets_block:
        parameters["secrets_block"] = secrets_block
    schedules = [Interval(timedelta(seconds=interval_s), slug="safety-net")] if interval_s else []
    return await export_event.ato_deployment(
        name=export_event_deployment_name(queues),
        description=f"Answer Rossum's export calls for queues {queues} through {pipeline} "
        "(export-event mode); runs on rossflow webhook events, never two at once.",
        parameters=parameters,
        schedules=schedules,
        triggers=[export_event_trigger(queues, coalesce_s=coalesce_s)],
        concurrency_limit=export_concurrency(),
        tags=list(tags),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
