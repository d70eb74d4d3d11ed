"""Export benchmark: the Prefect export flow against a minimal script and the one-by-one way.

    python -m bench.export_bench              # N = 1,000 and 10,000 (about 10 minutes)
    python -m bench.export_bench --n 1000     # only N = 1,000
    python -m bench.export_bench --quick      # smoke run, N = 200

Variants (each runs in its own subprocess; the sandbox, the ERP stand-in and the Prefect server
run in theirs):

* ``flow``      ``flows.export.export_confirmed`` on a real Prefect server, pipeline
                template → REST → evaluate (no write-back), batch 100, concurrency 16,
                2 batches in flight.
* ``(a) direct`` a minimal asyncio + httpx script making the same calls: count, pages of the
                JSON export (last to first, like the flow), every document POSTed to the ERP
                with at most concurrency × batches_in_flight (32) in flight, one
                ``to_status=exported`` POST per page. No Prefect, no ledger, no artifacts.
* ``(b) one-by-one`` per document, sequentially: ``GET …/export?format=json&id=X``, POST to
                the ERP, ``POST …/export?to_status=exported&id=X`` (after listing the ids).

Each variant runs unlimited and under a 10 req/s Rossum rate limit (the sandbox answers 429 +
Retry-After beyond it; the flow's client limiter, and a token bucket in (a) and (b), are set to
the same 10 req/s). Rossum requests are counted by the sandbox (server side, 429s included).

docs/s is measured over the *export window*: from the first Rossum request to the last Rossum
response, timed inside the measured process. It excludes interpreter start and imports for every
variant, and for the flow also the Prefect flow-run start-up and the report/artifact writing at
the end; the end-to-end rate (process spawn → exit) is reported next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    MB,
    SANDBOX_PASSWORD,
    SANDBOX_USERNAME,
    ErpService,
    PrefectService,
    SandboxService,
    child_env,
    cpu_model,
    fmt_num,
    load_average,
    peak_rss_self_bytes,
    process_tree,
    procs_cpu_s,
    render_table,
    run_measured,
    settle,
    start_erp,
    start_prefect_server,
    start_sandbox,
    tree_cpu_s,
)

QUEUE = 1
ROSSUM_BLOCK = {None: "bench-rossum-unlimited", 10.0: "bench-rossum-10rps"}
ERP_BLOCK = "erp"

# Same template as tests/export/test_engine.py ERP_PIPELINE, but the outcome is judged on the
# HTTP status directly: the extract + write-back step there costs one Rossum request per
# document (POST …/content/operations) by design.
PIPELINE = """
name: bench-erp-json
steps:
  - name: render
    type: template
    outputs:
      - key: invoice_json
        format: json
        template: >-
          {"number": {{ field.invoice_id | tojson }}, "total": {{ field.amount_total | tojson }},
           "vendor": {{ field.sender_name | tojson }},
           "lines": [{% for li in field.line_items %}{"text": {{ li.item_description | tojson }}}
           {%- if not loop.last %},{% endif %}{% endfor %}]}
  - name: post_invoice
    type: rest
    after: [render]
    target: erp
    export_reference_key: invoice_json
    request: {url: /api/invoices, method: POST, content: "#{file_content}"}
  - name: check
    type: evaluate
    after: [post_invoice]
    condition: "responses.post_invoice.status_code != 201"
    message: "ERP did not create the invoice (HTTP {{ responses.post_invoice.status_code }})"
"""

LABELS = {
    "flow": "flow (Prefect)",
    "engine": "engine (no Prefect)",
    "direct": "(a) asyncio+httpx",
    "direct_aio": "(a′) same, aiohttp transport",
    "onebyone": "(b) one-by-one",
}


# =============================================================================== children
#
# Each child writes one JSON object to spec["out"]. Timestamps are time.monotonic() of the child.


class _Window:
    """First Rossum request sent → last Rossum response received.

    With ``server_pid`` (the flow's Prefect server), the server's CPU is read at the same two
    moments, so that its share is counted over the same interval as the flow's own CPU and
    (a)'s (the parent also counts it over the whole child process)."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.cpu_first = self.cpu_last = 0.0  # process CPU (all threads) at those moments
        self.server_pid = server_pid
        # found once: reading their CPU is then cheap enough for every Rossum response
        self.server_procs = process_tree(server_pid) if server_pid else []
        self.server_first = self.server_last = 0.0

    def start(self) -> None:
        if self.first is None:
            self.first = time.monotonic()
            self.cpu_first = time.process_time()
            self.server_first = procs_cpu_s(self.server_procs)

    def end(self) -> None:
        self.last = time.monotonic()
        self.cpu_last = time.process_time()
        self.server_last = procs_cpu_s(self.server_procs)

    @property
    def seconds(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return self.last - self.first


def _child_result(
    spec: dict[str, Any],
    window: _Window,
    counts: Any,
    t_start: float,
    t_call: float,
    t_done: float,
) -> None:
    """Write the child's measurements: the export window, and around it imports (start → call),
    start-up (call → first Rossum request) and teardown (last Rossum response → return)."""
    result = {
        "counts": counts,
        "import_s": t_call - t_start,
        "call_s": t_done - t_call,
        "startup_s": (window.first - t_call) if window.first else None,
        "teardown_s": (t_done - window.last) if window.last else None,
        "window_s": window.seconds,
        "window_cpu_s": window.cpu_last - window.cpu_first,
        "server_window_cpu_s": (
            window.server_last - window.server_first if window.server_pid else None
        ),
        "maxrss_self_bytes": peak_rss_self_bytes(),
    }
    Path(spec["out"]).write_text(json.dumps(result))


def child_flow(spec: dict[str, Any]) -> None:
    """Run the Prefect export flow once (PREFECT_API_URL points at the benchmark's server)."""
    t_start = time.monotonic()
    import importlib

    from rossflow.rossum import RossumClient

    module, _, attr = spec["flow"].partition(":")
    export_confirmed = getattr(importlib.import_module(module), attr or "export_confirmed")

    window = _Window(spec.get("server_pid"))
    original = RossumClient._send

    async def timed_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        window.start()
        try:
            return await original(self, *args, **kwargs)
        finally:
            window.end()

    RossumClient._send = timed_send  # type: ignore[method-assign]
    t_call = time.monotonic()
    counts = asyncio.run(
        export_confirmed(
            queues=[QUEUE],
            pipeline=spec["pipeline"],
            rossum=spec["rossum_block"],
            batch_size=spec["batch_size"],
            concurrency=spec["concurrency"],
            batches_in_flight=spec["batches_in_flight"],
            state_dir=spec["state_dir"],
        )
    )
    t_done = time.monotonic()
    _child_result(spec, window, counts, t_start, t_call, t_done)


def child_engine(spec: dict[str, Any]) -> None:
    """The flow's run loop and engine without Prefect (``rossflow.export.run``): Prefect's share
    of the flow's cost is the difference between this variant and ``flow``."""
    t_start = time.monotonic()
    from blocks import RestTarget
    from rossflow.artifacts import ArtifactStore
    from rossflow.export.engine import ExportEngine
    from rossflow.export.loading import load_pipeline
    from rossflow.export.run import engine_steps, run_export
    from rossflow.export.targets import Targets
    from rossflow.ledger import Ledger
    from rossflow.rossum import RossumClient

    window = _Window()
    original = RossumClient._send

    async def timed_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        window.start()
        try:
            return await original(self, *args, **kwargs)
        finally:
            window.end()

    RossumClient._send = timed_send  # type: ignore[method-assign]

    async def run() -> dict[str, int]:
        from rossflow.export.run import count_outcomes

        config = load_pipeline(Path(spec["pipeline"]))
        state = Path(spec["state_dir"])
        client = RossumClient(
            spec["api_url"],
            username=SANDBOX_USERNAME,
            password=SANDBOX_PASSWORD,
            rate_limit_per_s=spec["rate"],
        )
        targets = Targets(rest={ERP_BLOCK: RestTarget(base_url=spec["erp_url"], max_attempts=3)})
        async with (
            client,
            ExportEngine(
                config,
                client,
                ledger=Ledger(state / "ledger.db"),
                artifacts=ArtifactStore(state / "artifacts"),
                targets=targets,
                concurrency=spec["concurrency"],
                in_flight=spec["concurrency"] * spec["batches_in_flight"],
            ) as engine,
        ):
            reports = await run_export(
                client,
                [QUEUE],
                [s.name for s in config.topological_order()],
                engine_steps(engine),
                batch_size=spec["batch_size"],
                batches_in_flight=spec["batches_in_flight"],
            )
        return count_outcomes(reports)

    t_call = time.monotonic()
    counts = asyncio.run(run())
    t_done = time.monotonic()
    _child_result(spec, window, counts, t_start, t_call, t_done)


class TokenBucket:
    """The minimal limiter the scripts use: ``rate`` tokens/s, bucket of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    async def acquire(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class _Rossum:
    """Bare httpx calls to Rossum: bearer token, optional token bucket, 429 → Retry-After."""

    def __init__(self, api_url: str, rate: float | None, window: _Window) -> None:
        import httpx

        self.http = httpx.AsyncClient(
            base_url=api_url, timeout=120, limits=httpx.Limits(max_connections=20)
        )
        self.limiter = TokenBucket(rate, max(1, int(rate))) if rate else None
        self.window = window
        self.requests = 0

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        self.window.start()
        try:
            while True:
                if self.limiter:
                    await self.limiter.acquire()
                self.requests += 1
                resp = await self.http.request(method, path, **kwargs)
                if resp.status_code == 429:
                    await asyncio.sleep(float(resp.headers.get("Retry-After") or 1))
                    continue
                resp.raise_for_status()
                return resp.json()
        finally:
            self.window.end()

    async def login(self) -> None:
        body = await self.call(
            "POST",
            "/v1/auth/login",
            json={"username": SANDBOX_USERNAME, "password": SANDBOX_PASSWORD},
        )
        self.http.headers["Authorization"] = f"Bearer {body['key']}"


def render_invoice(item: dict[str, Any]) -> tuple[int, bytes, str]:
    """(annotation id, the same JSON body the flow's template renders, Idempotency-Key)."""
    values: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []

    def walk(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            if node.get("schema_id") == "line_item":
                row = {c["schema_id"]: c.get("value") for c in node.get("children") or []}
                lines.append({"text": row.get("item_description")})
            elif node.get("category") == "datapoint":
                values.setdefault(node["schema_id"], node.get("value"))
            else:
                walk(node.get("children") or [])

    walk(item.get("content") or [])
    ann_id = int(str(item["url"]).rstrip("/").rsplit("/", 1)[-1])
    body = json.dumps(
        {
            "number": values.get("invoice_id"),
            "total": values.get("amount_total"),
            "vendor": values.get("sender_name"),
            "lines": lines,
        }
    ).encode()
    key = hashlib.sha256(b"%d\n" % ann_id + body).hexdigest()
    return ann_id, body, key


async def _direct(
    spec: dict[str, Any], window: _Window, *, aiohttp_transport: bool = False
) -> dict[str, Any]:
    import httpx

    from rossflow.export.run import in_flight

    rossum = _Rossum(spec["api_url"], spec["rate"], window)
    docs_in_flight = spec["concurrency"] * spec["batches_in_flight"]
    limits = httpx.Limits(max_connections=docs_in_flight, max_keepalive_connections=docs_in_flight)
    if aiohttp_transport:
        # (a′): the ERP calls over the transport the flow's REST step uses (rossflow.http),
        # to tell what the flow gains from its HTTP engine from what its orchestration costs
        from rossflow.http import AiohttpTransport

        erp = httpx.AsyncClient(timeout=120, transport=AiohttpTransport(limits=limits))
    else:
        erp = httpx.AsyncClient(timeout=120, limits=limits)
    erp_url = spec["erp_url"] + "/api/invoices"
    export = f"/v1/queues/{QUEUE}/export"
    doc_slots = asyncio.Semaphore(docs_in_flight)
    exported = failed = 0

    async def deliver(item: dict[str, Any]) -> int | None:
        ann_id, body, key = render_invoice(item)
        async with doc_slots:
            resp = await erp.post(
                erp_url,
                content=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
        return ann_id if resp.status_code == 201 else None

    async def process(items: list[dict[str, Any]], batch_no: int) -> None:
        nonlocal exported, failed
        ok = [i for i in await asyncio.gather(*(deliver(it) for it in items)) if i]
        failed += len(items) - len(ok)
        if ok:
            moved = await rossum.call(
                "POST",
                export,
                params={
                    "format": "json",
                    "to_status": "exported",
                    "status": "confirmed",
                    "id": ",".join(map(str, ok)),
                    "page_size": len(ok),
                },
            )
            exported += sum(1 for r in moved["results"] if r.get("status") == "exported")

    async def pages(total: int) -> AsyncIterator[list[dict[str, Any]]]:
        size = spec["batch_size"]
        # Last page first (ordered by id): moving page n out of `confirmed` cannot shift 1..n-1.
        for page in range(math.ceil(total / size), 0, -1):
            body = await rossum.call(
                "GET",
                export,
                params={
                    "format": "json",
                    "status": "confirmed",
                    "ordering": "id",
                    "page": page,
                    "page_size": size,
                },
            )
            yield body["results"]

    async with rossum.http, erp:
        await rossum.login()
        total = (
            await rossum.call(
                "GET",
                "/v1/annotations",
                params={"queue": QUEUE, "status": "confirmed", "page_size": 1},
            )
        )["pagination"]["total"]
        # the export flow's own batches-in-flight loop (rossflow.export.run)
        await in_flight(pages(total), process, spec["batches_in_flight"])
    return {"exported": exported, "failed": failed, "client_requests": rossum.requests}


async def _onebyone(spec: dict[str, Any], window: _Window) -> dict[str, Any]:
    import httpx

    rossum = _Rossum(spec["api_url"], spec["rate"], window)
    erp = httpx.AsyncClient(timeout=120)
    erp_url = spec["erp_url"] + "/api/invoices"
    export = f"/v1/queues/{QUEUE}/export"
    exported = failed = 0
    async with rossum.http, erp:
        await rossum.login()
        ids: list[int] = []
        page = 1
        while True:
            body = await rossum.call(
                "GET",
                "/v1/annotations",
                params={"queue": QUEUE, "status": "confirmed", "page_size": 100, "page": page},
            )
            ids += [int(a["id"]) for a in body["results"]]
            if not body["pagination"].get("next"):
                break
            page += 1
        for ann_id in ids:
            item = (await rossum.call("GET", export, params={"format": "json", "id": ann_id}))[
                "results"
            ][0]
            _, payload, key = render_invoice(item)
            resp = await erp.post(
                erp_url,
                content=payload,
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
            if resp.status_code != 201:
                failed += 1
                continue
            moved = await rossum.call(
                "POST", export, params={"format": "json", "to_status": "exported", "id": ann_id}
            )
            exported += sum(1 for r in moved["results"] if r.get("status") == "exported")
    return {"exported": exported, "failed": failed, "client_requests": rossum.requests}


def child_script(spec: dict[str, Any], kind: str) -> None:
    t_start = time.monotonic()
    window = _Window()
    t_call = time.monotonic()
    if kind == "onebyone":
        counts = asyncio.run(_onebyone(spec, window))
    else:
        counts = asyncio.run(_direct(spec, window, aiohttp_transport=kind == "direct_aio"))
    t_done = time.monotonic()
    _child_result(spec, window, counts, t_start, t_call, t_done)


def child_blocks(spec: dict[str, Any]) -> None:
    """Save the Prefect blocks the flow variant loads (on the benchmark's Prefect server)."""
    from blocks import RestTarget, RossumCredentials

    for rate, name in spec["rossum_blocks"]:
        RossumCredentials(
            base_url=spec["api_url"],
            username=SANDBOX_USERNAME,
            password=SANDBOX_PASSWORD,
            rate_limit_per_s=rate,
        ).save(name, overwrite=True)
    RestTarget(base_url=spec["erp_url"], max_attempts=3).save(ERP_BLOCK, overwrite=True)
    Path(spec["out"]).write_text(json.dumps({"ok": True}))


def run_child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--child",
        required=True,
        choices=["flow", "engine", "direct", "direct_aio", "onebyone", "blocks"],
    )
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    if args.child == "flow":
        child_flow(spec)
    elif args.child == "engine":
        child_engine(spec)
    elif args.child == "blocks":
        child_blocks(spec)
    else:
        child_script(spec, args.child)
    return 0


# ================================================================================= parent


@dataclass
class Result:
    kind: str
    n: int
    rate: float | None
    window_s: float  # first Rossum request → last Rossum response (inside the child)
    wall_s: float  # process spawn → exit
    cpu_window_s: float  # CPU of the measured process during the window (all threads)
    rossum_requests: int  # counted by the sandbox, 429 refusals included
    rossum_429: int
    peak_rss_mb: float
    exported: int
    erp_documents: int
    erp_duplicates: int
    services_cpu_s: dict[str, float] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0
    requested_n: int | None = None
    by_route: dict[str, int] = field(default_factory=dict)
    child: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    runs: list[float] = field(default_factory=list)  # docs/s of every repeat (this is the median)

    @property
    def docs_per_s(self) -> float:
        return self.n / self.window_s if self.window_s else 0.0

    @property
    def e2e_docs_per_s(self) -> float:
        return self.n / self.wall_s if self.wall_s else 0.0

    @property
    def per_1k(self) -> float:
        return 1000.0 * self.rossum_requests / self.n

    @property
    def cpu_ms_per_doc(self) -> float:
        return 1000.0 * self.cpu_window_s / self.n

    @property
    def server_cpu_window_s(self) -> float | None:
        """The Prefect server's CPU during the export window (None: not a flow run)."""
        value = self.child.get("server_window_cpu_s")
        return float(value) if value is not None else None

    @property
    def ok(self) -> bool:
        return self.exported == self.n and self.erp_documents == self.n


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.sandbox: SandboxService | None = None
        self.erp: ErpService | None = None
        self.prefect: PrefectService | None = None
        self.pipeline = work / "pipeline.yaml"
        self.pipeline.write_text(textwrap.dedent(PIPELINE))
        self.runs = 0
        self.results: list[Result] = []
        self.skipped: list[str] = []

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def spec(self, kind: str, n: int, rate: float | None) -> dict[str, Any]:
        assert self.sandbox and self.erp
        self.runs += 1
        run_dir = self.work / f"run-{self.runs:02d}-{kind}-{n}-{rate or 'unl'}"
        run_dir.mkdir()
        return {
            "api_url": self.sandbox.api_url,
            "erp_url": self.erp.url,
            "n": n,
            "rate": rate,
            "batch_size": self.args.batch_size,
            "concurrency": self.args.concurrency,
            "batches_in_flight": self.args.batches_in_flight,
            "pipeline": str(self.pipeline),
            "flow": self.args.flow,
            "rossum_block": ROSSUM_BLOCK.get(rate),
            "rossum_blocks": list(ROSSUM_BLOCK.items()),
            "state_dir": str(run_dir / "state"),
            "server_pid": self.prefect.proc.pid if (kind == "flow" and self.prefect) else None,
            "out": str(run_dir / "result.json"),
            "dir": str(run_dir),
        }

    def child(self, kind: str, spec: dict[str, Any], env: dict[str, str]) -> Any:
        path = Path(spec["dir"]) / "spec.json"
        path.write_text(json.dumps(spec))
        argv = [sys.executable, "-m", "bench.export_bench", "--child", kind, "--spec", str(path)]
        if self.args.profile and kind != "blocks":
            out = Path(self.args.profile) / f"{Path(spec['dir']).name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            argv = [
                "py-spy",
                "record",
                "--gil",
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                str(out),
                "--",
            ]
            argv += [sys.executable, "-m", "bench.export_bench", "--child", kind]
            argv += ["--spec", str(path)]
        return run_measured(
            argv,
            env=env,
            timeout=self.args.timeout,
            log_path=Path(spec["dir"]) / "child.log",
        )

    def _services(self) -> dict[str, int]:
        found = {"sandbox": self.sandbox, "erp": self.erp, "prefect": self.prefect}
        return {name: svc.proc.pid for name, svc in found.items() if svc is not None}

    def plan(self, kind: str, n: int, rate: float | None) -> tuple[int | None, str]:
        """N to measure: ``n``, or less when a smaller run of the same variant projects a run
        longer than --max-run-s (then the note says so); None = skip (what would fit is less
        than twice the smaller N: too close to it to tell anything new)."""
        done = [r for r in self.results if r.kind == kind and r.rate == rate and r.n < n]
        if not done or self.args.max_run_s <= 0:
            return n, ""
        prev = max(done, key=lambda r: r.n)
        overhead = prev.wall_s - prev.window_s
        projected = overhead + n / prev.docs_per_s
        if projected <= self.args.max_run_s:
            return n, ""
        fits = int((self.args.max_run_s - overhead) * prev.docs_per_s)
        step = 1000 if fits >= 2000 else 100
        reduced = fits // step * step
        why = (
            f"N={n:,} requested; at the {prev.docs_per_s:.1f} docs/s measured with "
            f"N={prev.n:,} it would take ~{projected / 60:.0f} min (> --max-run-s "
            f"{self.args.max_run_s:.0f} s)"
        )
        if reduced < 2 * prev.n:
            return None, why + ": not measured"
        return reduced, why + f": measured N={reduced:,} instead"

    def run(
        self, kind: str, n: int, rate: float | None, note: str = "", keep: bool = True
    ) -> Result:
        assert self.sandbox and self.erp
        self.log(f"{LABELS[kind]}: N={n:,}, Rossum rate limit {_limit(rate)} ...")
        self.sandbox.reset()
        self.sandbox.seed(n)
        self.erp.clear()
        if rate:
            self.sandbox.settings(rate_limit_per_s=rate)
        self.sandbox.reset_stats()
        spec = self.spec(kind, n, rate)
        env = self.prefect.client_env() if (kind == "flow" and self.prefect) else child_env()
        pids = self._services()
        waited, rates = settle(pids)  # e.g. the Prefect server still recording the last run
        if waited > 1.5:
            busy = ", ".join(f"{k} {v:.0%}" for k, v in rates.items() if v >= 0.01) or "quiet"
            self.log(f"  waited {waited:.1f} s for the services to settle (last second: {busy})")
        cpu_before = {name: tree_cpu_s(pid) for name, pid in pids.items()}
        load_before = load_average()
        measured = self.child(kind, spec, env)
        load_after = load_average()
        services_cpu = {name: tree_cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
        stats = self.sandbox.stats()
        erp = self.erp.stats()
        self.sandbox.settings(rate_limit_per_s=None)
        if measured.returncode != 0 or not Path(spec["out"]).exists():
            raise RuntimeError(
                f"{kind} N={n} failed (exit {measured.returncode}, timed out: "
                f"{measured.timed_out}); log {measured.log_path}:\n{measured.log_tail()}"
            )
        child = json.loads(Path(spec["out"]).read_text())
        exported = self.sandbox.count("exported")
        # The flow stores 4 artifact files per document: drop them now, not all at the end.
        shutil.rmtree(spec["state_dir"], ignore_errors=True)
        result = Result(
            kind=kind,
            n=n,
            rate=rate,
            window_s=float(child["window_s"] or 0.0),
            wall_s=measured.wall_s,
            cpu_window_s=float(child.get("window_cpu_s") or 0.0),
            rossum_requests=int(stats["total"]),
            rossum_429=int(stats.get("statuses", {}).get("429", 0)),
            peak_rss_mb=max(measured.peak_rss_mb, child["maxrss_self_bytes"] / MB),
            exported=exported,
            erp_documents=int(erp.get("documents", 0)),
            erp_duplicates=int(erp.get("duplicates", 0)),
            services_cpu_s=services_cpu,
            load_before=load_before,
            load_after=load_after,
            by_route=dict(stats.get("requests", {})),
            child=child,
            note=note,
        )
        self.log(
            f"  {result.docs_per_s:,.1f} docs/s (window {result.window_s:.1f} s, process "
            f"{result.wall_s:.1f} s, {result.cpu_ms_per_doc:.1f} CPU ms/doc), "
            f"{result.rossum_requests} Rossum requests ({result.rossum_429}× 429), peak RSS "
            f"{result.peak_rss_mb:.0f} MB; exported {exported}/{n}, ERP documents "
            f"{result.erp_documents}, duplicates {result.erp_duplicates}; load "
            f"{load_before:.1f} → {load_after:.1f}"
        )
        if not result.ok:
            self.log(f"  WARNING: not every document was exported exactly once: {child}")
        if keep:
            self.results.append(result)
        return result

    def run_planned(self, kind: str, n: int, rate: float | None) -> None:
        """One run at N ``n`` (or the smaller N :meth:`plan` allows)."""
        measure, note = self.plan(kind, n, rate)
        if measure is None:
            if not any(note in line for line in self.skipped):
                self.skipped.append(f"{LABELS[kind]}, {_limit(rate)}: {note}")
                self.log(self.skipped[-1])
            return
        result = self.run(kind, measure, rate, note=note)
        if measure != n:
            result.requested_n = n

    def setup_blocks(self) -> None:
        assert self.prefect and self.sandbox and self.erp
        spec = self.spec("blocks", 0, None)
        measured = self.child("blocks", spec, self.prefect.client_env())
        if measured.returncode != 0:
            raise RuntimeError(f"saving blocks failed:\n{measured.log_tail()}")


# ----------------------------------------------------------------------------- reporting


def medians(results: list[Result]) -> list[Result]:
    """One result per variant, N and limit: the run with the median docs/s (its other
    figures come from that same run), with every run's docs/s in ``runs``."""
    groups: dict[tuple[str, int, float | None], list[Result]] = {}
    for r in results:
        groups.setdefault((r.kind, r.requested_n or r.n, r.rate), []).append(r)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda r: r.docs_per_s)
        median = ranked[(len(ranked) - 1) // 2]
        median.runs = [r.docs_per_s for r in runs]
        out.append(median)
    return out


def _limit(rate: float | None) -> str:
    return f"{rate:g} req/s" if rate else "none"


def _find(
    results: list[Result], kind: str, n: int | None, rate: float | None, *, requested: bool = False
) -> Result | None:
    """The result of ``kind`` at ``rate`` for N ``n`` (``requested``: also the run that stood in
    for ``n`` with a smaller N); n None = the largest N."""
    found = [
        r
        for r in results
        if r.kind == kind
        and r.rate == rate
        and (n is None or r.n == n or (requested and r.requested_n == n))
    ]
    return max(found, key=lambda r: r.n) if found else None


def _ratio_base(results: list[Result], r: Result, kind: str) -> Result | None:
    """What ``r`` is compared with: (a) at the same N (or the N that stood in for it);
    (b) at the same limit, whatever N it was measured with (its rate does not depend on N)."""
    if kind == "onebyone":
        return _find(results, kind, None, r.rate)
    return _find(results, kind, r.requested_n or r.n, r.rate, requested=True) or _find(
        results, kind, r.n, r.rate
    )


def table_rows(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "variant",
        "N",
        "Rossum limit",
        "docs/s",
        "runs (docs/s)",
        "docs/s e2e",
        "Rossum req/1k docs",
        "429s",
        "peak RSS MB",
        "CPU ms/doc",
        "vs (a)",
        "vs (b)",
    ]
    rows = []
    for i, r in enumerate(results):
        a = _ratio_base(results, r, "direct")
        b = _ratio_base(results, r, "onebyone")
        vs_a = "-" if r.kind == "onebyone" or a is None else f"{r.docs_per_s / a.docs_per_s:.2f}×"
        vs_b = "-" if b is None else f"{r.docs_per_s / b.docs_per_s:,.1f}×"
        n = fmt_num(r.n)
        if r.note:
            n += f" [{_note_no(results, i)}]"
        rows.append(
            [
                LABELS[r.kind],
                n,
                _limit(r.rate),
                fmt_num(r.docs_per_s),
                _spread(r.runs),
                fmt_num(r.e2e_docs_per_s),
                fmt_num(r.per_1k),
                fmt_num(r.rossum_429),
                fmt_num(r.peak_rss_mb, 0),
                fmt_num(r.cpu_ms_per_doc),
                vs_a,
                vs_b,
            ]
        )
    return headers, rows


def _spread(runs: list[float]) -> str:
    if len(runs) < 2:
        return "1 run"
    return f"{len(runs)}: {min(runs):,.0f}–{max(runs):,.0f}"


def _note_no(results: list[Result], index: int) -> int:
    return sum(1 for r in results[: index + 1] if r.note)


def notes(results: list[Result]) -> list[str]:
    return [
        f"[{_note_no(results, i)}] {LABELS[r.kind]}, {_limit(r.rate)}: {r.note}"
        for i, r in enumerate(results)
        if r.note
    ]


def timing_rows(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "variant",
        "N",
        "Rossum limit",
        "process s",
        "imports s",
        "start-up s",
        "window s",
        "teardown s",
        "CPU in window s",
        "sandbox CPU s",
        "ERP CPU s",
        "Prefect server CPU s (window / run)",
        "load avg",
    ]
    rows = []
    for r in results:
        c, svc = r.child, r.services_cpu_s
        rows.append(
            [
                LABELS[r.kind],
                fmt_num(r.n),
                _limit(r.rate),
                fmt_num(r.wall_s, 1),
                fmt_num(c.get("import_s"), 1),
                fmt_num(c.get("startup_s"), 1),
                fmt_num(r.window_s, 1),
                fmt_num(c.get("teardown_s"), 1),
                fmt_num(r.cpu_window_s, 1),
                fmt_num(svc.get("sandbox"), 1),
                fmt_num(svc.get("erp"), 1),
                (
                    f"{fmt_num(r.server_cpu_window_s, 2)} / {fmt_num(svc.get('prefect'), 2)}"
                    if r.kind == "flow"
                    else "-"
                ),
                f"{r.load_before:.1f} → {r.load_after:.1f}",
            ]
        )
    return headers, rows


def check_targets(results: list[Result]) -> list[tuple[str, str, str]]:
    """(target, PASS|FAIL|N/A, detail) for the four targets of the benchmark."""
    checks: list[tuple[str, str, str]] = []
    flows = [r for r in results if r.kind == "flow"]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    # 1. ≤ 25 Rossum requests per 1,000 exported docs (at N ≥ 1,000: fixed per-run requests,
    #    login and counts, are not amortised over a smaller run)
    big = [r for r in flows if r.n >= 1000] or flows
    if big:
        detail = ", ".join(f"N={r.n:,} {_limit(r.rate)}: {r.per_1k:.1f}" for r in big)
        checks.append(
            (
                "≤ 25 Rossum requests per 1,000 docs",
                verdict(all(r.per_1k <= 25 for r in big)),
                detail,
            )
        )
    # 2. ≥ 90 % of (a)'s throughput, same N and limit
    parts, ok = [], True
    for r in flows:
        a = _ratio_base(results, r, "direct")
        if a:
            ratio = r.docs_per_s / a.docs_per_s
            ok &= ratio >= 0.9
            parts.append(f"N={r.n:,} {_limit(r.rate)}: {ratio:.0%}")
    if parts:
        checks.append(("≥ 90 % of (a)'s throughput", verdict(ok), ", ".join(parts)))
    # not a target: against (a′), the same script on the flow's HTTP transport (aiohttp), the
    # flow's advantage from its HTTP engine is gone and what its orchestration costs remains
    parts = []
    for r in flows:
        a2 = _ratio_base(results, r, "direct_aio")
        if a2:
            parts.append(f"N={r.n:,} {_limit(r.rate)}: {r.docs_per_s / a2.docs_per_s:.0%}")
    if parts:
        checks.append(
            ("flow vs (a′), same HTTP transport (not a target)", "INFO", ", ".join(parts))
        )
    # 2b. the flow's CPU plus the Prefect server's, per document, ≤ 1.2× (a)'s (same cores).
    #     Every share over the same interval, the export window; the server's CPU over the
    #     whole flow run (start-up and report included) is shown next to it.
    parts, ok = [], True
    for r in flows:
        a = _ratio_base(results, r, "direct")
        if a and a.cpu_window_s:
            run_total = r.services_cpu_s.get("prefect", 0.0)
            server = r.server_cpu_window_s if r.server_cpu_window_s is not None else run_total
            ratio = (r.cpu_window_s + server) / a.cpu_window_s * a.n / r.n
            whole = (r.cpu_window_s + run_total) / a.cpu_window_s * a.n / r.n
            ok &= ratio <= 1.2
            parts.append(
                f"N={r.n:,} {_limit(r.rate)}: {1000 * (r.cpu_window_s + server) / r.n:.1f} vs "
                f"{a.cpu_ms_per_doc:.1f} ms/doc = {ratio:.2f}× (server CPU of the whole run: "
                f"{whole:.2f}×)"
            )
    if parts:
        checks.append(("flow + Prefect server CPU ≤ 1.2× (a)'s", verdict(ok), ", ".join(parts)))
    # 3. ≥ 50× (b) under the rate limit
    parts, ok = [], True
    for r in flows:
        b = _ratio_base(results, r, "onebyone") if r.rate else None
        if b:
            ratio = r.docs_per_s / b.docs_per_s
            ok &= ratio >= 50
            parts.append(
                f"N={r.n:,}: {ratio:.1f}× ({r.docs_per_s:.1f} vs {b.docs_per_s:.2f} docs/s)"
            )
    if parts:
        checks.append(("≥ 50× (b) under the rate limit", verdict(ok), ", ".join(parts)))
    # 4. peak RSS at 10k ≤ 1.2× at 1k
    parts, status = [], "N/A"
    for rate in sorted({r.rate for r in flows}, key=lambda x: x or 0):
        small = _find(results, "flow", 1000, rate)
        large = _find(results, "flow", 10000, rate, requested=True)
        if not small or not large or large.n <= small.n:
            continue
        ratio = large.peak_rss_mb / small.peak_rss_mb
        parts.append(
            f"{_limit(rate)}: {large.peak_rss_mb:.0f} MB at N={large.n:,} / "
            f"{small.peak_rss_mb:.0f} MB at N=1,000 = {ratio:.2f}×"
        )
        if large.n == 10000:
            status = "FAIL" if ratio > 1.2 or status == "FAIL" else "PASS"
    if not parts:
        parts.append("needs flow runs at N=1,000 and at N=10,000 (see [not measured], if any)")
    elif status == "N/A":
        parts.append("N=10,000 not measured (see notes): not decided")
    checks.append(("peak RSS at 10k ≤ 1.2× at 1k", status, "; ".join(parts)))
    return checks


def report(results: list[Result], args: argparse.Namespace, skipped: list[str]) -> str:
    headers, rows = table_rows(results)
    t_headers, t_rows = timing_rows(results)
    out = [
        "",
        f"Export benchmark: ERP latency {args.latency * 1000:.0f} ms, batch {args.batch_size}, "
        f"concurrency {args.concurrency} × {args.batches_in_flight} batches in flight "
        f"((a): {args.concurrency * args.batches_in_flight} documents in flight), "
        f"{cpu_model()}, {os.cpu_count()} CPUs; median of {args.repeat} interleaved runs",
        "",
        render_table(headers, rows, markdown=False),
        "",
        *notes(results),
        *(f"[not measured] {line}" for line in skipped),
        "",
        "Timing breakdown (seconds)",
        "",
        render_table(t_headers, t_rows, markdown=False),
        "",
        "Targets",
    ]
    for name, status, detail in check_targets(results):
        out.append(f"  {status:4}  {name}: {detail}")
    for r in results:
        if not r.ok or r.erp_duplicates:
            out.append(
                f"  WARNING {LABELS[r.kind]} N={r.n}: exported {r.exported}, ERP documents "
                f"{r.erp_documents}, duplicates {r.erp_duplicates}"
            )
    busy = [r for r in results if max(r.load_before, r.load_after) > (os.cpu_count() or 1)]
    if busy:
        out.append(
            f"  NOTE  the machine was busy (1-min load average above {os.cpu_count()}) during "
            f"{len(busy)} of {len(results)} runs: throughput numbers are pessimistic; "
            "CPU ms/doc moves less"
        )
    out += ["", "Markdown:", "", render_table(headers, rows, markdown=True), ""]
    out += [f"{line}  " for line in notes(results)]
    out += [f"[not measured] {line}  " for line in skipped]
    return "\n".join(out)


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export_bench",
        description="Export flow vs. a minimal asyncio+httpx script vs. one-by-one.",
    )
    parser.add_argument(
        "--n", type=int, action="append", help="documents per run (repeatable; default 1000, 10000)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: N=200, small (b) runs")
    parser.add_argument("--latency", type=float, default=0.05, help="ERP latency in seconds")
    parser.add_argument("--rate", type=float, default=10.0, help="Rossum rate limit (req/s)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batches-in-flight", type=int, default=2)
    parser.add_argument(
        "--onebyone-n",
        type=int,
        default=None,
        help="documents for (b) without a rate limit (default 200; quick: 50)",
    )
    parser.add_argument(
        "--onebyone-limited-n",
        type=int,
        default=None,
        help="documents for (b) under the rate limit (default 100; quick: 30)",
    )
    parser.add_argument(
        "--max-run-s",
        type=float,
        default=180.0,
        help="a larger N whose run would take longer than this (projected from the smaller N "
        "of the same variant) is measured with a smaller N, marked in the table; 0 = never",
    )
    parser.add_argument(
        "--variants",
        default="flow,direct,onebyone",
        help="comma list of flow,engine,direct,direct_aio,onebyone",
    )
    parser.add_argument(
        "--flow",
        default="flows.export:export_confirmed",
        help="module:function of the flow to measure (e.g. a candidate fix on PYTHONPATH)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each export variant per N and limit, interleaved; the table shows the "
        "median run (default 3)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured warm-ups")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run each measured child under py-spy (collapsed stacks in DIR; timings then "
        "include the sampler's cost: profile runs are for the where, not the how fast)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="hard limit per run (s)")
    args = parser.parse_args(argv)
    args.ns = [200] if args.quick and not args.n else (args.n or [1000, 10000])
    if args.onebyone_n is None:
        args.onebyone_n = 50 if args.quick else 200
    if args.onebyone_limited_n is None:
        args.onebyone_limited_n = 30 if args.quick else 100
    args.variant_set = {v.strip() for v in args.variants.split(",") if v.strip()}
    if args.rate not in ROSSUM_BLOCK:
        ROSSUM_BLOCK[args.rate] = f"bench-rossum-{args.rate:g}rps".replace(".", "-")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return run_child(argv)
    args = parse_args(argv)
    rates: list[float | None] = [None, args.rate]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.log(f"starting the sandbox and the ERP stand-in (load {load_average():.1f})")
            bench.sandbox = start_sandbox(log_dir=Path(tmp))
            bench.erp = start_erp(log_dir=Path(tmp))
            bench.erp.configure(latency_s=args.latency)
            probe = bench.erp.measure_latency_ms()
            bench.log(f"ERP round trip {probe:.1f} ms (configured {args.latency * 1000:.0f} ms)")
            if probe > args.latency * 1000 + 20:
                bench.log("  WARNING: the ERP answers much slower than configured")
            kinds = [k for k in ("direct", "direct_aio", "engine", "flow") if k in args.variant_set]
            if "flow" in kinds:
                bench.log("starting the Prefect server")
                bench.prefect = start_prefect_server(log_dir=Path(tmp))
                bench.setup_blocks()
            if not args.no_warmup:
                bench.log("warm-ups (not measured)")
                for kind in kinds:
                    bench.run(kind, 100, None, keep=False)
            # Interleaved (a, engine, flow, a, engine, flow, ...): a drift in the machine's
            # speed hits every variant alike, and the ratios compare medians.
            for rate in rates:
                for n in sorted(args.ns):
                    for _ in range(max(1, args.repeat)):
                        for kind in kinds:
                            bench.run_planned(kind, n, rate)
            if "onebyone" in args.variant_set:
                same_rate = "its docs/s does not depend on N (ratios at other N use this rate)"
                bench.run(
                    "onebyone",
                    args.onebyone_n,
                    None,
                    note=f"measured over {args.onebyone_n} docs: one-by-one is sequential, "
                    f"each document costs the same calls, so {same_rate}",
                )
                bench.run(
                    "onebyone",
                    args.onebyone_limited_n,
                    args.rate,
                    note=f"measured over {args.onebyone_limited_n} docs; as above, {same_rate}",
                )
        finally:
            for svc in (bench.prefect, bench.erp, bench.sandbox):
                if svc is not None:
                    svc.stop()
    order = {"flow": 0, "engine": 1, "direct": 2, "direct_aio": 3, "onebyone": 4}
    results = sorted(medians(bench.results), key=lambda r: (r.rate or 0, order[r.kind], r.n))
    print(report(results, args, bench.skipped))
    print(f"total benchmark time: {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        **asdict(r),
                        "docs_per_s": r.docs_per_s,
                        "e2e_docs_per_s": r.e2e_docs_per_s,
                        "per_1k": r.per_1k,
                        "cpu_ms_per_doc": r.cpu_ms_per_doc,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
