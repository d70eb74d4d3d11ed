"""Serve the rossflow deployments from one process (``rossflow serve``): no work pool, no worker.

    rossflow serve --pipeline pipeline.yaml --queues 1,2 --queues 7 \\
                   --ingest-source sftp-inbox --ingest-source s3-inbox

registers and runs:

* ``rossflow-ingest/scheduled``: one interval schedule per ``--ingest-source``, each carrying its
  own ``source`` parameter;
* ``rossum-export/queues-<ids>``: one deployment per ``--queues`` group, with

  - ``concurrency_limit=1`` and the ``ENQUEUE`` collision strategy, so two runs never export the
    same queues at once (a second run waits for the first; the groups may not overlap);
  - a deployment trigger on ``rossum.annotation.status_changed`` events (from ``rossflow
    webhook``) whose annotation went to ``confirmed`` in one of the group's queues. The trigger
    coalesces: the first event fires, the following ones within ``--coalesce`` seconds are
    absorbed by that firing, and the run is scheduled ``--coalesce`` seconds later, so every
    absorbed annotation was already confirmed when the run lists the queue;
  - an interval schedule as the safety net (missed hooks, runner down, hooks disabled).
* ``rossflow-export-exported-since/exported-since-queues-<ids>``: one per ``--exported-since``
  group (queues where Rossum exports by itself), on an interval schedule, never two at once.

The runner polls every ``--poll`` seconds (default 1; Prefect's default is 10, too slow for a
hook-driven export) and starts each flow run in its own process, forked from a server that has
Prefect and the flows imported already (``deployments/fast_start.py``; ``--no-fast-start`` for a
fresh interpreter per run). ``prefect.yaml`` next to this
file defines the same deployments for ``prefect deploy`` and workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

EXPORT_ENTRYPOINT = "flows.export:export_confirmed"
INGEST_ENTRYPOINT = "flows.ingest:ingest"
TRIGGER_EVENT = "rossum.annotation.status_changed"
DEFAULT_COALESCE_S = 3.0


def export_deployment_name(queues: Sequence[int]) -> str:
    return "queues-" + "-".join(str(q) for q in queues)


def export_trigger(
    queues: Sequence[int],
    *,
    coalesce_s: float = DEFAULT_COALESCE_S,
    statuses: Iterable[str] = ("confirmed",),
    name: str | None = None,
) -> Any:
    """The deployment trigger: a burst of status events for these queues → one export run.

    Reactive, threshold 1, ``within=coalesce_s``: Prefect fires on the first matching event and
    ignores the following ones for ``coalesce_s`` seconds; the run is scheduled
    ``coalesce_s`` later (``schedule_after``), so it lists the queue only after every absorbed
    event's annotation was confirmed. Events after the window fire again.
    """
    from prefect.events import DeploymentEventTrigger

    queue_ids = [f"rossum.queue.{q}" for q in queues]
    status_list = sorted(set(statuses))
    window = timedelta(seconds=coalesce_s)
    return DeploymentEventTrigger(
        name=name or f"export {export_deployment_name(queues)} on {'/'.join(status_list)}",
        description="Rossum annotation status changes (rossflow webhook) → one export run per "
        f"{coalesce_s:g}s window for queues {', '.join(map(str, queues))}",
        expect={TRIGGER_EVENT},
        match={"rossum.annotation.status": status_list},
        match_related={"prefect.resource.role": "queue", "prefect.resource.id": queue_ids},
        posture="Reactive",
        threshold=1,
        within=window,
        schedule_after=window,
    )


def export_concurrency() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


async def export_deployment(
    queues: Sequence[int],
    pipeline: str,
    *,
    rossum: str = "rossum",
    state_dir: str = ".rossflow/export-state",
    secrets_block: str | None = None,
    interval_s: float | None = 600.0,
    cron: str | None = None,
    coalesce_s: float | None = DEFAULT_COALESCE_S,
    statuses: Iterable[str] = ("confirmed",),
    tags: Sequence[str] = ("rossflow", "export"),
) -> Any:
    """A ``RunnerDeployment`` of the export flow for one queue group."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    from flows.export import export_confirmed

    queues = [int(q) for q in queues]
    parameters: dict[str, Any] = {
        "queues": queues,
        "pipeline": pipeline,
        "rossum": rossum,
        "state_dir": state_dir,
    }
    if secrets_block:
        parameters["secrets_block"] = secrets_block
    schedules: list[Any] = []
    if interval_s:
        schedules.append(Interval(timedelta(seconds=interval_s), slug="safety-net"))
    if cron:
        schedules.append(Cron(cron, slug="cron"))
    triggers = (
        [export_trigger(queues, coalesce_s=coalesce_s, statuses=statuses)] if coalesce_s else []
    )
    return await export_confirmed.ato_deployment(
        name=export_deployment_name(queues),
        description=f"Export confirmed annotations of queues {queues} through {pipeline}. "
        "Runs on Rossum hooks (via rossflow webhook) and on the schedule as a safety net; "
        "never two at once.",
        parameters=parameters,
        schedules=schedules,
        triggers=triggers,
        concurrency_limit=export_concurrency(),
        tags=list(tags),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


async def exported_since_deployment(
    queues: Sequence[int],
    pipeline: str,
    *,
    rossum: str = "rossum",
    state_dir: str = ".rossflow/export-state",
    secrets_block: str | None = None,
    interval_s: float = 300.0,
    tags: Sequence[str] = ("rossflow", "export", "exported-since"),
) -> Any:
    """A ``RunnerDeployment`` of the exported-since flow (queues where Rossum exports by
    itself): on a schedule only, never two runs at once (overlap is safe, only wasteful)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Interval

    from flows.export_exported_since import export_exported_since

    queues = [int(q) for q in queues]
    parameters: dict[str, Any] = {
        "queues": queues,
        "pipeline": pipeline,
        "rossum": rossum,
        "state_dir": state_dir,
    }
    if secrets_block:
        parameters["secrets_block"] = secrets_block
    return await export_exported_since.ato_deployment(
        name="exported-since-" + export_deployment_name(queues),
        description=f"Deliver annotations Rossum exported by itself in queues {queues} through "
        f"{pipeline}; their status stays exported.",
        parameters=parameters,
        schedules=[Interval(timedelta(seconds=interval_s), slug="exported-since")],
        concurrency_limit=export_concurrency(),
        tags=list(tags),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


async def ingest_deployment(
    sources: Sequence[str],
    *,
    rossum: str = "rossum",
    ledger_path: str = ".rossflow/ingest.db",
    interval_s: float = 300.0,
    name: str = "scheduled",
    tags: Sequence[str] = ("rossflow", "ingest"),
) -> Any:
    """A ``RunnerDeployment`` of the ingest flow: one schedule per source, with its parameters."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Interval

    from flows.ingest import ingest

    schedules = [
        Interval(
            timedelta(seconds=interval_s),
            parameters={"source": source},
            slug=f"ingest-{source}",
        )
        for source in sources
    ]
    return await ingest.ato_deployment(
        name=name,
        description="Upload documents dropped on SFTP/S3 to Rossum; every schedule names its "
        "source block. Safe to run next to another run of the same source.",
        parameters={
            "source": sources[0] if sources else "ingest-source",
            "rossum": rossum,
            "options": {"ledger_path": ledger_path},
        },
        schedules=schedules,
        tags=list(tags),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def check_groups(groups: Sequence[Sequence[int]]) -> None:
    """Queue groups may not overlap: each queue has exactly one export deployment."""
    seen: dict[int, int] = {}
    for index, group in enumerate(groups):
        if not group:
            raise ValueError("an empty queue group")
        for queue in group:
            if queue in seen and seen[queue] != index:
                raise ValueError(
                    f"queue {queue} is in two groups; two export deployments could then export "
                    "it at the same time"
                )
            seen[queue] = index


async def build(
    *,
    pipeline: str,
    queue_groups: Sequence[Sequence[int]],
    ingest_sources: Sequence[str] = (),
    rossum: str = "rossum",
    state_dir: str = ".rossflow",
    secrets_block: str | None = None,
    export_interval_s: float | None = 600.0,
    ingest_interval_s: float = 300.0,
    coalesce_s: float | None = DEFAULT_COALESCE_S,
    exported_since_groups: Sequence[Sequence[int]] = (),
    exported_since_interval_s: float = 300.0,
    event_queue_groups: Sequence[Sequence[int]] = (),
    jobs_db: str | None = None,
    event_coalesce_s: float = 1.0,
) -> list[Any]:
    check_groups([*queue_groups, *exported_since_groups, *event_queue_groups])
    deployments = [
        await export_deployment(
            group,
            pipeline,
            rossum=rossum,
            state_dir=str(Path(state_dir) / "export-state"),
            secrets_block=secrets_block,
            interval_s=export_interval_s,
            coalesce_s=coalesce_s,
        )
        for group in queue_groups
    ]
    for group in exported_since_groups:
        deployments.append(
            await exported_since_deployment(
                group,
                pipeline,
                rossum=rossum,
                state_dir=str(Path(state_dir) / "export-state"),
                secrets_block=secrets_block,
                interval_s=exported_since_interval_s,
            )
        )
    if event_queue_groups:
        from deployments.export_event import export_event_deployment

        for group in event_queue_groups:
            deployments.append(
                await export_event_deployment(
                    group,
                    pipeline,
                    jobs_db=jobs_db or str(Path(state_dir) / "export-jobs.db"),
                    state_dir=str(Path(state_dir) / "export-state"),
                    rossum=rossum,
                    secrets_block=secrets_block,
                    interval_s=export_interval_s,
                    coalesce_s=event_coalesce_s,
                )
            )
    if ingest_sources:
        deployments.append(
            await ingest_deployment(
                ingest_sources,
                rossum=rossum,
                ledger_path=str(Path(state_dir) / "ingest.db"),
                interval_s=ingest_interval_s,
            )
        )
    return deployments


async def aserve(
    deployments: Sequence[Any],
    *,
    poll_s: float = 1.0,
    limit: int | None = None,
    name: str | None = None,
    announce: bool = False,
    fast_start: bool = True,
) -> None:
    """Register ``deployments`` (schedules, triggers, concurrency) and run their flow runs until
    cancelled, or SIGTERM/SIGINT when called from the main thread: then the runner stops
    cleanly (its in-flight flow runs are cancelled and their processes ended)."""
    from prefect.runner import Runner

    runner = Runner(
        name=name or "rossflow",
        query_seconds=poll_s,
        limit=limit,
        pause_on_shutdown=False,
    )
    added = []
    for deployment in deployments:
        added.append((await runner.aadd_deployment(deployment), deployment))
        if announce:
            print(f"rossflow serve: registered {deployment.full_name}", flush=True)
    if fast_start:
        from deployments.fast_start import install

        fast = install(runner, added)
        if announce and fast:
            print("rossflow serve: flow runs start from a preloaded fork server", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.start(), name="rossflow-runner")
    await asyncio.sleep(0.1)  # Runner.start() installs a SIGTERM handler that sys.exit()s…
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):  # …stop the runner properly instead
            loop.add_signal_handler(sig, stop.set)
    if announce:
        print(f"rossflow serve: runner polling every {poll_s:g}s; Ctrl-C stops", flush=True)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if runner.started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.astop(), 60)
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 60)
    if announce:
        print("rossflow serve: stopped", flush=True)


def _queues(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"queue ids must be integers: {text!r}") from None


def run(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="rossflow serve", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--pipeline",
        default=env("ROSSFLOW_PIPELINE"),
        help="export pipeline file (default $ROSSFLOW_PIPELINE)",
    )
    parser.add_argument(
        "--queues",
        type=_queues,
        action="append",
        help="comma-separated queue ids of one export deployment; repeat for more "
        "(default $ROSSFLOW_QUEUES, groups separated by ';')",
    )
    parser.add_argument(
        "--exported-since",
        type=_queues,
        action="append",
        default=[],
        help="comma-separated queue ids where Rossum exports by itself (no confirmed state, no "
        "export hook): deliver what it exported, every --exported-since-interval s; repeatable",
    )
    parser.add_argument("--exported-since-interval", type=float, default=300.0, help="seconds")
    parser.add_argument(
        "--event-queues",
        type=_queues,
        action="append",
        default=[],
        help="comma-separated queue ids exported through the export-event mode (Rossum calls "
        "the annotation_content.export hook, rossflow webhook answers); repeat for more groups",
    )
    parser.add_argument(
        "--jobs-db",
        default=env("ROSSFLOW_WEBHOOK_JOBS_DB"),
        help="export job store shared with rossflow webhook --jobs-db "
        "(default <state-dir>/export-jobs.db)",
    )
    parser.add_argument(
        "--event-coalesce",
        type=float,
        default=1.0,
        help="trigger window of the export-event deployments in seconds (default 1)",
    )
    parser.add_argument(
        "--ingest-source",
        action="append",
        default=None,
        help="Ingest Source block to poll; repeat for more (default $ROSSFLOW_INGEST_SOURCES)",
    )
    parser.add_argument("--rossum", default=env("ROSSFLOW_ROSSUM_BLOCK", "rossum"))
    parser.add_argument("--secrets-block", default=env("ROSSFLOW_SECRETS_BLOCK"))
    parser.add_argument(
        "--state-dir",
        default=env("ROSSFLOW_STATE_DIR", ".rossflow"),
        help="ledgers and reports (keep it on durable storage)",
    )
    parser.add_argument("--export-interval", type=float, default=600.0, help="safety net, s")
    parser.add_argument("--ingest-interval", type=float, default=300.0, help="seconds")
    parser.add_argument(
        "--coalesce",
        type=float,
        default=DEFAULT_COALESCE_S,
        help="trigger window in seconds (0: no webhook trigger)",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="runner poll interval, s")
    parser.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    parser.add_argument(
        "--no-fast-start",
        dest="fast_start",
        action="store_false",
        help="start each flow run in a fresh interpreter (`python -m prefect.engine`) instead "
        "of forking it from a server with Prefect and the flows preloaded",
    )
    args = parser.parse_args(argv)
    groups = args.queues
    if not groups and env("ROSSFLOW_QUEUES"):
        groups = [_queues(g) for g in env("ROSSFLOW_QUEUES", "").split(";") if g.strip()]
    sources = args.ingest_source
    if sources is None and env("ROSSFLOW_INGEST_SOURCES"):
        sources = [s.strip() for s in env("ROSSFLOW_INGEST_SOURCES", "").split(",") if s.strip()]
    if not args.pipeline or not (groups or args.exported_since or args.event_queues):
        parser.error(
            "--pipeline and at least one --queues, --exported-since or --event-queues group "
            "are required"
        )
    if not Path(args.pipeline).is_file():
        parser.error(f"--pipeline {args.pipeline}: no such file")
    # the runs start elsewhere (the runner's or a worker's directory): pass an absolute path
    pipeline = str(Path(args.pipeline).resolve())

    async def main() -> None:
        deployments = await build(
            pipeline=pipeline,
            queue_groups=groups or [],
            exported_since_groups=args.exported_since,
            exported_since_interval_s=args.exported_since_interval,
            event_queue_groups=args.event_queues,
            event_coalesce_s=args.event_coalesce,
            jobs_db=str(Path(args.jobs_db).resolve()) if args.jobs_db else None,
            ingest_sources=sources or [],
            rossum=args.rossum,
            state_dir=str(Path(args.state_dir).resolve()),
            secrets_block=args.secrets_block,
            export_interval_s=args.export_interval or None,
            ingest_interval_s=args.ingest_interval,
            coalesce_s=args.coalesce or None,
        )
        await aserve(
            deployments,
            poll_s=args.poll,
            limit=args.limit,
            announce=True,
            fast_start=args.fast_start,
        )

    try:
        asyncio.run(main())
    except ValueError as exc:
        print(f"rossflow serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
