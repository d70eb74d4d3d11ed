"""Export-event benchmark: confirm in Rossum → document at the ERP → annotation ``exported``.

    python -m bench.export_event_bench --docs 20 --gap 6 --markdown

What runs where (all on 127.0.0.1): a Prefect server, the sandbox and the ERP stand-in (own
processes); ``rossflow webhook`` with the job store (this process); ``rossflow serve
--event-queues 2`` (a runner process). Queue 2 has no confirmed state, so confirming moves the
annotation to ``exporting`` and the sandbox calls the ``annotation_content.export`` hook, polls
the receiver's job URL every ``--rossum-poll`` seconds (Rossum: 30 s) and moves the annotation
to ``exported`` with the operations applied.

Per document: ``→ ERP`` = ERP receipt − the confirm call; ``→ exported`` = the annotation's
``exported_at`` − the confirm call. ``Rossum req / 1k`` counts the requests the sandbox served
minus the bench's own (confirming and reading the results): what rossflow asked of Rossum.
Scenarios: ``one-by-one`` (one confirmation every ``--gap`` s) and ``burst`` (all at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    load_average,
    render_table,
    services,
    start_erp,
    start_prefect_server,
    start_sandbox,
)
from bench.webhook_bench import Bench, export_runs, percentile, settle_runs

QUEUE = 2

PIPELINE = """
name: bench-export-event
steps:
  - name: render
    type: template
    outputs:
      - key: doc
        format: json
        template: >-
          {"annotation_id": {{ payload.annotation.id }}, "number": {{ field.invoice_id | tojson }},
           "total": {{ field.amount_total | tojson }}}
  - name: post
    type: rest
    after: [render]
    target: erp
    export_reference_key: doc
    request: {url: /api/invoices, method: POST, content: "#{file_content}"}
  - name: keep_erp_id
    type: extract
    after: [post]
    sources:
      - source_step: post
        rules:
          - {value_path: body.id, target_schema_id: erp_document_id}
"""

SECRET = "bench-hook-secret"


class EventBench(Bench):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.own_requests = 0
        self.api.event_hooks["request"] = [self._count]

    def _count(self, request: Any) -> None:
        self.own_requests += 1

    def exported_at(self, ids: list[int], timeout: float) -> dict[int, float]:
        deadline = time.monotonic() + timeout
        while True:
            out: dict[int, float] = {}
            for annotation_id in ids:
                ann = self.api.get(f"/v1/annotations/{annotation_id}").json()
                if ann["status"] == "exported" and ann.get("exported_at"):
                    stamp = ann["exported_at"].replace("Z", "+00:00")
                    out[annotation_id] = datetime.fromisoformat(stamp).timestamp()
                elif ann["status"] == "failed_export":
                    raise RuntimeError(f"annotation {annotation_id}: {ann['messages']}")
            if len(out) == len(ids):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(out)} of {len(ids)} not exported")
            time.sleep(1.0)

    def event_scenario(self, name: str, count: int, gap_s: float) -> dict[str, Any]:
        ids = self.sandbox.seed(count, queue=QUEUE, status="to_review")
        runs_before = export_runs()
        self.sandbox.admin("DELETE", "stats")
        own_before = self.own_requests
        confirmed: dict[int, float] = {}
        started = time.monotonic()
        if gap_s:
            for annotation_id in ids:
                confirmed[annotation_id] = time.time()
                self.confirm(annotation_id)
                time.sleep(gap_s)
        else:
            now = time.time()
            confirmed = dict.fromkeys(ids, now)
            self.sandbox.admin("POST", "confirm_all", {"queue": QUEUE})
        delivered = self.wait_delivered(ids, timeout=120 + count * (gap_s + 5))
        exported = self.exported_at(ids, timeout=300 + count * 5)
        wall = time.monotonic() - started
        total = int(self.sandbox.admin("GET", "stats")["total"])
        rossflow_requests = max(0, total - (self.own_requests - own_before))
        settle_runs()
        to_erp = [delivered[i] - confirmed[i] for i in ids]
        to_exported = [exported[i] - confirmed[i] for i in ids]
        return {
            "scenario": name,
            "docs": count,
            "runs": export_runs() - runs_before,
            "erp_p50": statistics.median(to_erp),
            "erp_p95": percentile(to_erp, 95),
            "exp_p50": statistics.median(to_exported),
            "exp_p95": percentile(to_exported, 95),
            "per_1k": 1000 * rossflow_requests / count,
            "wall": wall,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=20, help="documents per scenario")
    parser.add_argument("--gap", type=float, default=6.0, help="one-by-one: seconds between")
    parser.add_argument("--poll", type=float, default=1.0, help="runner poll interval, seconds")
    parser.add_argument(
        "--coalesce", type=float, default=1.0, help="trigger window of the deployment, seconds"
    )
    parser.add_argument(
        "--rossum-poll", type=float, default=1.0, help="sandbox polling interval of 202 replies"
    )
    parser.add_argument(
        "--scenario", choices=["both", "one-by-one", "burst"], default="both", help="what to run"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
        help="the Prefect server's database, e.g. postgresql+asyncpg://prefect@127.0.0.1/prefect "
        "(as in docker/compose.yaml; default: SQLite in a temporary home, which adds ~2 s "
        "between a trigger's action and the flow run's creation)",
    )
    args = parser.parse_args(argv)
    print(f"load average before: {load_average():.2f} on {os.cpu_count()} CPUs", flush=True)
    os.environ["PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"] = "2"
    if args.database_url:  # the server process inherits it
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = args.database_url
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-event-"))
    with services(start_prefect_server, start_sandbox, start_erp) as (prefect, sandbox, erp):
        os.environ.update(prefect.client_env())
        return asyncio.run(_run(args, prefect, sandbox, erp, workdir))


async def _run(
    args: argparse.Namespace, prefect: Any, sandbox: Any, erp: Any, workdir: Path
) -> int:
    from bench.webhook_bench import _wait_for_deployment
    from blocks import RestTarget
    from rossflow.webhook.app import WebhookSettings
    from rossflow.webhook.cli import WebhookServer

    await RestTarget(base_url=erp.url).asave("erp", overwrite=True)
    pipeline = workdir / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    jobs_db = str(workdir / "export-jobs.db")
    bench = EventBench(args, sandbox, erp, workdir)
    sandbox.admin("POST", "settings", {"hook_poll_interval_s": args.rossum_poll})
    receiver = WebhookServer(
        WebhookSettings(
            secrets=[SECRET],
            prefect_api_url=prefect.api_url,
            jobs_path=jobs_db,
            export_queues=[QUEUE],
        )
    ).start()
    bench.api.post(
        "/v1/hooks",
        json={
            "name": "rossflow export",
            "queues": [f"{sandbox.api_url}/v1/queues/{QUEUE}"],
            "events": ["annotation_content.export"],
            "config": {"url": receiver.hook_url, "secret": SECRET, "timeout_s": 30},
            "active": True,
        },
    ).raise_for_status()
    log = (workdir / "runner.log").open("wb")
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployments.serve",
            "--pipeline",
            str(pipeline),
            "--event-queues",
            str(QUEUE),
            "--jobs-db",
            jobs_db,
            "--poll",
            str(args.poll),
            "--export-interval",
            "0",
            "--event-coalesce",
            str(args.coalesce),
            "--state-dir",
            str(workdir / "state"),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(_wait_for_deployment, runner, workdir)
        await asyncio.sleep(3)
        print("warm-up document …", flush=True)
        await asyncio.to_thread(bench.event_scenario, "warm-up", 1, 0.0)
        if args.scenario in ("both", "one-by-one"):
            print(f"one-by-one: {args.docs} documents, one every {args.gap:g}s …", flush=True)
            rows.append(
                await asyncio.to_thread(bench.event_scenario, "one-by-one", args.docs, args.gap)
            )
        if args.scenario in ("both", "burst"):
            await asyncio.sleep(4)
            print(f"burst: {args.docs} documents at once …", flush=True)
            rows.append(await asyncio.to_thread(bench.event_scenario, "burst", args.docs, 0.0))
    finally:
        runner.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.wait(20)
        if runner.poll() is None:
            runner.kill()
        receiver.stop()
        log.close()
    print()
    print(
        f"export-event mode: confirm → ERP → exported; trigger window {args.coalesce:g}s, "
        f"runner poll {args.poll:g}s, sandbox "
        f"(Rossum) polling every {args.rossum_poll:g}s; load average after "
        f"{load_average():.2f} on {os.cpu_count()} CPUs"
    )
    print(
        render_table(
            [
                "scenario",
                "docs",
                "flow runs",
                "→ ERP p50 s",
                "→ ERP p95 s",
                "→ exported p50 s",
                "→ exported p95 s",
                "Rossum req / 1k docs",
                "wall s",
            ],
            [
                [
                    r["scenario"],
                    r["docs"],
                    r["runs"],
                    f"{r['erp_p50']:.2f}",
                    f"{r['erp_p95']:.2f}",
                    f"{r['exp_p50']:.2f}",
                    f"{r['exp_p95']:.2f}",
                    f"{r['per_1k']:.0f}",
                    f"{r['wall']:.1f}",
                ]
                for r in rows
            ],
            markdown=args.markdown,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
