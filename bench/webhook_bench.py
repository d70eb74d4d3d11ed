"""Webhook benchmark: Rossum hook received → document delivered to the ERP, on the local stack.

    python -m bench.webhook_bench                    # 20 documents, both scenarios
    python -m bench.webhook_bench --database-url postgresql+asyncpg://prefect@127.0.0.1/prefect
    python -m bench.webhook_bench --docs 20 --gap 6 --coalesce 2 --poll 1 --markdown --trace

What runs where (all on 127.0.0.1):

* a Prefect server (``prefect server start``, own temp home, SQLite unless ``--database-url``
  names a PostgreSQL database as in production; deployment concurrency slot
  wait 2 s instead of 30 s, as the docs recommend for hook-driven exports);
* the Rossum sandbox and the ERP stand-in, each in its own process;
* ``rossflow webhook`` (in this process: it timestamps every ``confirmed`` call it receives) with
  a signed sandbox hook on queue 1 pointing to it;
* ``rossflow serve`` (a Prefect runner in its own process, ``--poll`` seconds) serving the export
  deployment for queue 1 with the webhook trigger (``--coalesce`` seconds window) and no schedule.

One by one, each document is confirmed through the API (``start`` + ``confirm``); the sandbox
fires the hook.
Latency per document = ERP receipt time − receiver receipt time of its ``confirmed`` hook call
(the ERP record names the annotation: the bench pipeline puts its id into the body).

Scenarios:

* ``one-by-one``: an operator confirms one document every ``--gap`` seconds (each usually gets
  its own export run: the trigger window, the runner poll and the flow-run start are all paid);
* ``burst``: all documents confirmed at once (the sandbox's bulk confirmation; one export run
  for the batch).

A warm-up document goes first and is not counted.
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
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    ROOT,
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    cpu_model,
    load_average,
    render_table,
    services,
    start_erp,
    start_prefect_server,
    start_sandbox,
)

PIPELINE = """
name: bench-webhook
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
"""

SECRET = "bench-hook-secret"


class Clock:
    """Receipt times of ``confirmed`` hook calls, by annotation id (filled by the receiver)."""

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self._lock = threading.Lock()

    def stamp(self, annotation_id: int) -> None:
        with self._lock:
            self.received.setdefault(annotation_id, time.time())


def timing_emitter(api_url: str, clock: Clock) -> Any:
    from rossflow.webhook.events import PrefectEmitter

    class TimingEmitter(PrefectEmitter):
        async def emit(self, event: Any) -> None:
            if event.resource["rossum.annotation.status"] == "confirmed":
                clock.stamp(int(event.resource["rossum.annotation.id"]))
            await super().emit(event)

    return TimingEmitter(api_url)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Bench:
    def __init__(self, args: argparse.Namespace, sandbox: Any, erp: Any, workdir: Path) -> None:
        self.args = args
        self.sandbox = sandbox
        self.erp = erp
        self.workdir = workdir
        self.clock = Clock()
        self.api = httpx.Client(base_url=sandbox.api_url, timeout=60)
        token = self.api.post(
            "/v1/auth/login", json={"username": SANDBOX_USERNAME, "password": SANDBOX_PASSWORD}
        ).json()["key"]
        self.api.headers["Authorization"] = f"Bearer {token}"

    def confirm(self, annotation_id: int) -> None:
        self.api.post(f"/v1/annotations/{annotation_id}/start").raise_for_status()
        self.api.post(f"/v1/annotations/{annotation_id}/confirm").raise_for_status()

    def delivered(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for record in self.erp.control("GET", "received"):
            body = record.get("json")
            if isinstance(body, dict) and "annotation_id" in body and record.get("status") == 201:
                out.setdefault(int(body["annotation_id"]), float(record["time"]))
        return out

    def wait_delivered(self, ids: list[int], timeout: float) -> dict[int, float]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.delivered()
            if all(i in got for i in ids):
                return got
            if time.monotonic() > deadline:
                missing = [i for i in ids if i not in got]
                raise TimeoutError(f"{len(missing)} of {len(ids)} not delivered: {missing[:5]}")
            time.sleep(0.2)

    def scenario(self, name: str, count: int, gap_s: float) -> dict[str, Any]:
        ids = self.sandbox.seed(count, queue=1, status="to_review")
        runs_before = export_runs()
        started = time.monotonic()
        if gap_s:
            for annotation_id in ids:
                self.confirm(annotation_id)
                time.sleep(gap_s)
        else:  # all at once: the sandbox's bulk confirmation (one status change after another)
            self.sandbox.admin("POST", "confirm_all", {"queue": 1})
        delivered = self.wait_delivered(ids, timeout=120 + count * (gap_s + 5))
        wall = time.monotonic() - started
        latencies = [delivered[i] - self.clock.received[i] for i in ids]
        hooks = [self.clock.received[i] for i in ids]
        settle_runs()
        runs = all_runs()
        parts = breakdown(ids, self.clock.received, delivered, runs)
        if self.args.trace:
            trace(name, min(self.clock.received[i] for i in ids), runs)
        return {
            "scenario": name,
            "docs": count,
            "runs": export_runs() - runs_before,
            "p50": statistics.median(latencies),
            "p95": percentile(latencies, 95),
            "max": max(latencies),
            "min": min(latencies),
            "wall": wall,
            "hook_spread": max(hooks) - min(hooks) if not gap_s else float("nan"),
            **{k: statistics.median(v) if v else float("nan") for k, v in parts.items()},
        }


def trace(name: str, t0: float, runs: list[dict[str, Any]]) -> None:
    """Print each run of the scenario: created, due, state changes, relative to ``t0`` (the
    first hook received), to see where the time goes."""
    api = os.environ["PREFECT_API_URL"]
    for run in sorted(runs, key=lambda r: r["created"]):
        created = _ts(run["created"]) or 0.0
        if created < t0 - 1:
            continue
        states = httpx.post(
            f"{api}/flow_run_states/filter",
            json={"flow_run_id": run["id"]},
            timeout=30,
        )
        if states.status_code >= 400:  # older servers: GET with a query parameter
            states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run["id"]})
        history = sorted(((_ts(st["timestamp"]) or 0.0) - t0, st["name"]) for st in states.json())
        due = (_ts(run.get("expected_start_time")) or created) - t0
        print(
            f"  [{name}] run {run['name']}: created +{created - t0:.2f}s, due +{due:.2f}s; "
            + ", ".join(f"{state} +{at:.2f}s" for at, state in history),
            flush=True,
        )


def all_runs() -> list[dict[str, Any]]:
    api = os.environ["PREFECT_API_URL"]
    return list(httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=30).json())


def _ts(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def breakdown(
    ids: list[int], received: dict[int, float], delivered: dict[int, float], runs: list[dict]
) -> dict[str, list[float]]:
    """Per document, from the run that delivered it (its start ≤ delivery ≤ its end):
    ``wait_run`` hook → the run exists (0 when an earlier, still queued run took it),
    ``wait_start`` → the run is Running (schedule_after, runner poll, process start, queueing),
    ``export`` → delivered."""
    spans = []
    for run in runs:
        start, end = _ts(run.get("start_time")), _ts(run.get("end_time"))
        if start and end:
            created = _ts(run["created"]) or start
            due = _ts(run.get("expected_start_time")) or created
            spans.append((start, end, created, due))
    out: dict[str, list[float]] = {
        "wait_run": [],
        "wait_due": [],
        "wait_start": [],
        "export": [],
    }
    for i in ids:
        hit = [s for s in spans if s[0] <= delivered[i] <= s[1] + 0.5]
        if not hit:
            continue
        start, _, created, due = min(hit, key=lambda s: s[0])
        exists = max(received[i], created)
        due = max(exists, due)
        out["wait_run"].append(exists - received[i])
        out["wait_due"].append(due - exists)  # schedule_after (the trigger's window)
        out["wait_start"].append(max(0.0, start - due))
        out["export"].append(delivered[i] - max(start, received[i]))
    return out


def settle_runs(quiet_s: float = 15.0, timeout: float = 180.0) -> None:
    """Wait until every flow run is final and no new one appeared for ``quiet_s`` (a loaded
    Prefect server creates triggered runs late; count them in the scenario that caused them)."""
    api = os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=30).json()
        except httpx.TimeoutException:  # a loaded server: ask again
            continue
        busy = [r for r in runs if r["state_type"] not in ("COMPLETED", "FAILED", "CRASHED")]
        if len(runs) != last or busy:
            last, since = len(runs), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def export_runs() -> int:
    """Flow runs on the server (only the export deployment creates any here)."""
    api = os.environ["PREFECT_API_URL"]
    return int(httpx.post(f"{api}/flow_runs/count", json={}, timeout=30).json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=20, help="documents per scenario")
    parser.add_argument("--gap", type=float, default=6.0, help="one-by-one: seconds between")
    parser.add_argument("--coalesce", type=float, default=1.0, help="trigger window, seconds")
    parser.add_argument("--poll", type=float, default=0.5, help="runner poll interval, seconds")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
        help="the Prefect server's database, e.g. postgresql+asyncpg://prefect@127.0.0.1/prefect "
        "(as in docker/compose.yaml; default: SQLite in a temporary home, which adds ~2 s "
        "between a trigger's action and the flow run's creation)",
    )
    parser.add_argument(
        "--scenario", choices=["both", "one-by-one", "burst"], default="both", help="what to run"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--trace", action="store_true", help="print every run's created/due/state times"
    )
    parser.add_argument(
        "--no-fast-start",
        dest="fast_start",
        action="store_false",
        help="rossflow serve starts each flow run in a fresh interpreter (Prefect's default)",
    )
    args = parser.parse_args(argv)

    print(
        f"{cpu_model()}; load average before: {load_average():.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import prefect.engine, flows.export"], cwd=ROOT, check=True
    )
    imports_s = time.monotonic() - started
    print(f"a flow-run process imports Prefect + the export flow in {imports_s:.1f}s", flush=True)
    os.environ["PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"] = "2"
    if args.database_url:  # the server process inherits it
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = args.database_url
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    with services(start_prefect_server, start_sandbox, start_erp) as (prefect, sandbox, erp):
        os.environ.update(prefect.client_env())  # before this process first touches Prefect
        return asyncio.run(_run(args, prefect, sandbox, erp, workdir))


async def _run(
    args: argparse.Namespace, prefect: Any, sandbox: Any, erp: Any, workdir: Path
) -> int:
    from blocks import RestTarget, RossumCredentials
    from rossflow.webhook.app import WebhookSettings
    from rossflow.webhook.cli import WebhookServer

    await RossumCredentials(
        base_url=sandbox.api_url,
        username=SANDBOX_USERNAME,
        password=SANDBOX_PASSWORD,
        rate_limit_per_s=None,
    ).asave("rossum", overwrite=True)
    await RestTarget(base_url=erp.url).asave("erp", overwrite=True)
    pipeline = workdir / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    bench = Bench(args, sandbox, erp, workdir)

    receiver = WebhookServer(
        WebhookSettings(secrets=[SECRET], prefect_api_url=prefect.api_url),
        emitter=timing_emitter(prefect.api_url, bench.clock),
    ).start()
    hook = bench.api.post(
        "/v1/hooks",
        json={
            "name": "bench",
            "queues": [f"{sandbox.api_url}/v1/queues/1"],
            "events": ["annotation_status"],
            "config": {"url": receiver.hook_url, "secret": SECRET},
            "active": True,
        },
    )
    hook.raise_for_status()
    log = (workdir / "runner.log").open("wb")
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployments.serve",
            "--pipeline",
            str(pipeline),
            "--queues",
            "1",
            "--poll",
            str(args.poll),
            "--coalesce",
            str(args.coalesce),
            "--export-interval",
            "0",
            "--state-dir",
            str(workdir / "state"),
            *([] if args.fast_start else ["--no-fast-start"]),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(_wait_for_deployment, runner, workdir)
        await asyncio.sleep(3)  # the triggers service loads the automation
        print("warm-up document …", flush=True)
        await asyncio.to_thread(bench.scenario, "warm-up", 1, 0.0)
        if args.scenario in ("both", "one-by-one"):
            print(f"one-by-one: {args.docs} documents, one every {args.gap:g}s …", flush=True)
            rows.append(await asyncio.to_thread(bench.scenario, "one-by-one", args.docs, args.gap))
        if args.scenario in ("both", "burst"):
            await asyncio.sleep(args.coalesce + 3)
            print(f"burst: {args.docs} documents at once …", flush=True)
            rows.append(await asyncio.to_thread(bench.scenario, "burst", args.docs, 0.0))
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
        f"webhook received → ERP delivery, Prefect server on "
        f"{'PostgreSQL' if 'postgresql' in (args.database_url or '') else 'SQLite'}, "
        f"runner poll {args.poll:g}s, trigger window "
        f"{args.coalesce:g}s, {cpu_model()}, load average after {load_average():.2f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(
        "(medians of the parts: hook → the export run exists → its scheduled start (the "
        "trigger's schedule_after) → it is Running → document at the ERP; burst: seconds "
        "between the first and the last hook call received)"
    )
    print(
        render_table(
            [
                "scenario",
                "docs",
                "export runs",
                "p50 s",
                "p95 s",
                "min s",
                "max s",
                "→ run exists",
                "→ run due",
                "→ run starts",
                "→ ERP",
                "wall s",
                "hooks spread s",
            ],
            [
                [
                    r["scenario"],
                    r["docs"],
                    r["runs"],
                    f"{r['p50']:.2f}",
                    f"{r['p95']:.2f}",
                    f"{r['min']:.2f}",
                    f"{r['max']:.2f}",
                    f"{r['wait_run']:.2f}",
                    f"{r['wait_due']:.2f}",
                    f"{r['wait_start']:.2f}",
                    f"{r['export']:.2f}",
                    f"{r['wall']:.1f}",
                    "–" if r["hook_spread"] != r["hook_spread"] else f"{r['hook_spread']:.2f}",
                ]
                for r in rows
            ],
            markdown=args.markdown,
        )
    )
    return 0


def _wait_for_deployment(runner: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 180
    while b"runner polling every" not in (workdir / "runner.log").read_bytes():
        if runner.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("runner did not start:\n" + (workdir / "runner.log").read_text())
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
