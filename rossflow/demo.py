"""``rossflow demo``: the whole pipeline on one machine, with nothing but this package.

Starts on 127.0.0.1: a persistent Prefect server (SQLite under ``--home``), the Rossum sandbox,
the ERP stand-in, an SFTP server, an S3-compatible server (moto), the webhook receiver (with a
signed sandbox hook pointing to it) and a Prefect runner serving the deployments. Then it drops
sample invoices (PDFs with real text) on SFTP and S3 and lets the pipeline run:

    ingest (SFTP + S3 → Rossum) → sandbox extraction → operator confirms
    → Rossum hook → rossflow webhook → Prefect event → deployment trigger → export run (runner)
    → template → ERP REST call → extract the ERP id → evaluate → SFTP archive

The demo plays the operator (it confirms what is ready to review); everything after the
confirmation happens by itself. ``--once`` exits when the documents are exported (or
``--timeout`` passes: then the export runs in-process as the safety net, like the schedule
would); otherwise the services keep running (drop more PDFs into ``<home>/sftp/inbox``: the
ingest deployment picks them up every ``--interval`` seconds) until Ctrl-C, which shuts
everything down.

Queue 2 (export-event mode) is in :mod:`rossflow.demo_event`; the progress line and the
summary are printed by :mod:`rossflow.demo_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from rossflow.demo_event import EVENT_QUEUE, export_event_queue, register_export_hook
from rossflow.demo_report import Progress, ingest_lines, outcome

PIPELINE = (Path(__file__).parent / "localstack" / "demo_pipeline.yaml").read_text()
HOOK_NAME = "rossflow-demo-webhook"
EVENT_JOBS_DB = "export-jobs.db"
DEFAULT_COALESCE_S = 2.0

# The demo's state is one unit: the sandbox database (the "Rossum" side), the ingest ledger, the
# export's delivery ledger, the webhook's dedup store and the SFTP folders. A ledger that
# remembers uploads a new sandbox never saw makes the demo report "uploaded" while nothing
# reaches Rossum, so the parts are reused together or reset together.
STATE_FILE = "demo-state.json"
STATE_PARTS = ("sandbox.db", "ingest.db", "export-state", "webhook-dedup.db", "sftp")


def _remove_part(home: Path, part: str) -> None:
    path = home / part
    if path.is_dir():
        shutil.rmtree(path)
    for candidate in (path, *(home / f"{part}{x}" for x in ("-wal", "-shm", "-journal"))):
        if candidate.is_file() or candidate.is_symlink():
            candidate.unlink()


def prepare_state(home: Path) -> tuple[dict[str, Any], str | None]:
    """Reuse the demo state in ``home`` if it is complete, else reset every part of it.

    Returns the state (``next_sample``: the number of the next sample invoice, so that a second
    run drops new invoices instead of ones Rossum already has) and a sentence saying what
    happened when something was reset (None when reused or new)."""
    state_path = home / STATE_FILE
    state: dict[str, Any] | None = None
    problem = None
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("next_sample"), int):
                raise ValueError("unexpected content")
        except (OSError, ValueError) as exc:
            state, problem = None, f"{STATE_FILE} is unreadable ({exc})"
    if state is not None:
        expected = set(state.get("parts") or []) | {"sandbox.db"}
        missing = sorted(part for part in expected if not (home / part).exists())
        if not missing:
            return state, None
        problem = "missing: " + ", ".join(missing)
        state = None
    present = [part for part in STATE_PARTS if (home / part).exists()]
    if present and problem is None:
        problem = f"no {STATE_FILE} next to " + ", ".join(present)
    for part in STATE_PARTS:
        _remove_part(home, part)
    state = {"next_sample": 1, "parts": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_state(home, state)
    if problem is None:
        return state, None
    return state, (
        f"the demo state in {home} was incomplete ({problem}); reset all of it together: "
        "sandbox database, ingest and export ledgers, webhook dedup store, SFTP folders"
    )


def save_state(home: Path, state: dict[str, Any]) -> None:
    """Record the next sample number and which parts exist now (all must exist next time)."""
    state["parts"] = [part for part in STATE_PARTS if (home / part).exists()]
    tmp = home / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(home / STATE_FILE)


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports(ports: dict[str, int]) -> None:
    taken = [f"{name} port {port}" for name, port in ports.items() if not _free("127.0.0.1", port)]
    if taken:
        raise SystemExit(
            "rossflow demo: already in use: "
            + ", ".join(taken)
            + " (stop what uses it, or choose another with the matching --*-port option)"
        )


def _start_prefect(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        # a run that finds the export busy (deployment concurrency 1) retries after 2 s, not 30
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
    }
    log = (home / "prefect-server.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            # Prefect's server plus a fast retry when SQLite is busy (rossflow/localstack)
            "rossflow.localstack.prefect_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}/api/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"Prefect server exited early; see {home / 'prefect-server.log'}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"Prefect server did not answer on {url} within 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rossflow demo", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="exit when the documents are through")
    parser.add_argument("--files", type=int, default=8, help="sample invoices to drop (default 8)")
    parser.add_argument("--home", type=Path, default=Path(".rossflow/demo"), help="state folder")
    parser.add_argument("--fresh", action="store_true", help="delete --home first")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between ingest runs and new samples"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="--once: seconds to wait for the webhook-triggered export (default 300)",
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="runner poll interval in seconds (default 1)"
    )
    parser.add_argument(
        "--coalesce",
        type=float,
        default=DEFAULT_COALESCE_S,
        help=f"trigger window in seconds (default {DEFAULT_COALESCE_S:g})",
    )
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--sandbox-port", type=int, default=8765)
    parser.add_argument("--erp-port", type=int, default=8085)
    parser.add_argument("--sftp-port", type=int, default=2222)
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--webhook-port", type=int, default=8787)
    args = parser.parse_args(argv)

    home: Path = args.home.resolve()
    if args.fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    state, reset_note = prepare_state(home)
    _check_ports(
        {
            "Prefect": args.prefect_port,
            "sandbox": args.sandbox_port,
            "ERP": args.erp_port,
            "SFTP": args.sftp_port,
            "S3": args.s3_port,
            "webhook": args.webhook_port,
        }
    )
    # Prefect reads its settings on first use: point this process at our server first.
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    print(f"rossflow demo: starting the local stack in {home}")
    if reset_note:
        print(f"  note: {reset_note}")
    elif state["next_sample"] > 1:
        print(
            f"  reusing the demo state (sandbox database + ledgers) in {home}; new samples start "
            f"at invoice {state['next_sample']} (--fresh starts over)"
        )
    args.state = state
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    with ExitStack() as stack:
        prefect = _start_prefect(home, args.prefect_port)
        stack.callback(_stop, prefect)
        print(f"  Prefect server   http://127.0.0.1:{args.prefect_port}  (UI)")
        stack_info = _start_services(stack, home, args)
        try:
            return asyncio.run(_main(args, home, stack_info))
        except KeyboardInterrupt:
            print("\nrossflow demo: stopping")
            return 0
        finally:
            print("rossflow demo: shutting down", flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start_services(stack: ExitStack, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rossflow.localstack.erp import ErpServer
    from rossflow.localstack.s3_server import S3Server
    from rossflow.localstack.sftp_server import LocalSftpServer
    from sandbox.server import SandboxServer

    sandbox = stack.enter_context(
        SandboxServer(db=str(home / "sandbox.db"), port=args.sandbox_port, extraction_delay_s=1.0)
    )
    print(f"  Rossum sandbox   {sandbox.api_url}  (login {sandbox.username} / {sandbox.password})")
    erp = stack.enter_context(ErpServer(port=args.erp_port, config={"latency_s": 0.05}))
    print(f"  ERP stand-in     {erp.url}/_erp/received")
    sftp_root = home / "sftp"
    for sub in ("inbox", "archive"):
        (sftp_root / sub).mkdir(parents=True, exist_ok=True)
    sftp = stack.enter_context(
        LocalSftpServer(
            sftp_root,
            port=args.sftp_port,
            users={"rossflow": "rossflow"},
            host_key_path=home / "sftp_host_key",
        )
    )
    print(f"  SFTP server      sftp://rossflow@127.0.0.1:{sftp.port}  (root {sftp_root})")
    s3 = stack.enter_context(S3Server(port=args.s3_port))
    s3.create_bucket("rossum-inbox")
    print(f"  S3 (moto)        {s3.endpoint_url}  (bucket rossum-inbox)")
    return {"sandbox": sandbox, "erp": erp, "sftp": sftp, "sftp_root": sftp_root, "s3": s3}


async def _save_blocks(home: Path, info: dict[str, Any]) -> None:
    from blocks import RestTarget, RossumCredentials, SftpServer
    from blocks.sources import IngestSource
    from rossflow.ingest.rules import RoutingRule

    sandbox, erp, sftp, s3 = info["sandbox"], info["erp"], info["sftp"], info["s3"]
    await RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=sandbox.password,
        rate_limit_per_s=10,
    ).asave("rossum", overwrite=True)
    await RestTarget(base_url=erp.url).asave("erp", overwrite=True)
    server = SftpServer(
        host="127.0.0.1",
        port=sftp.port,
        username="rossflow",
        password=SecretStr("rossflow"),  # the demo SFTP server's own login
        known_hosts=sftp.known_hosts_line(),
    )
    await server.asave("demo-sftp", overwrite=True)
    rules = [RoutingRule(queue_id=1, pattern="*.pdf", metadata={"channel": "demo"})]
    await IngestSource(sftp_server=server, directory="inbox", rules=rules).asave(
        "sftp-inbox", overwrite=True
    )
    await IngestSource(
        s3_bucket=s3.s3_bucket("rossum-inbox"), directory="inbox", rules=rules
    ).asave("s3-inbox", overwrite=True)
    (home / "pipeline.yaml").write_text(PIPELINE)


def _drop_samples(info: dict[str, Any], start: int, count: int) -> int:
    from rossflow.localstack.samples import invoice_pdf, sample_invoice

    s3 = info["s3"].boto3_client()
    for n in range(start, start + count):
        invoice = sample_invoice(n)
        data = invoice_pdf(invoice)
        if n % 2:
            s3.put_object(Bucket="rossum-inbox", Key=f"inbox/{invoice.filename}", Body=data)
        else:
            path = info["sftp_root"] / "inbox" / invoice.filename
            path.write_bytes(data)
            old = time.time() - 60  # the ingest ignores files younger than min_age_s
            os.utime(path, (old, old))
    return start + count


def _start_receiver(stack: ExitStack, home: Path, args: argparse.Namespace) -> Any:
    from rossflow.webhook.app import WebhookSettings
    from rossflow.webhook.cli import WebhookServer

    settings = WebhookSettings(
        secrets=[secrets.token_urlsafe(24)],  # a new hook secret every start
        prefect_api_url=os.environ["PREFECT_API_URL"],
        dedup_path=str(home / "webhook-dedup.db"),
        jobs_path=str(home / EVENT_JOBS_DB),  # queue 2: export-event mode
        export_queues=[EVENT_QUEUE],
    )
    receiver = stack.enter_context(WebhookServer(settings, port=args.webhook_port))
    return receiver


def _register_hook(sandbox: Any, receiver: Any) -> int:
    """Point a sandbox hook (annotation_status, queue 1, signed) at the receiver."""
    token = sandbox.login()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=sandbox.api_url, headers=auth, timeout=30) as client:
        old = client.get("/v1/hooks", params={"name": HOOK_NAME}).json().get("results", [])
        for hook in old:  # the sandbox DB persists: replace the previous run's hook
            client.delete(f"/v1/hooks/{hook['id']}")
        resp = client.post(
            "/v1/hooks",
            json={
                "name": HOOK_NAME,
                "type": "webhook",
                "queues": [f"{sandbox.api_url}/v1/queues/1"],
                "events": ["annotation_status"],
                "config": {"url": receiver.hook_url, "secret": receiver.settings.secrets[0]},
                "active": True,
            },
        )
        resp.raise_for_status()
        return int(resp.json()["id"])


def _start_runner(home: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """``rossflow serve`` for the demo's deployments, in its own process group and session: the
    flow runs it starts do not get the terminal's Ctrl-C, the demo stops them cleanly."""
    from deployments.serve import export_deployment_name

    command = [
        sys.executable,
        "-m",
        "deployments.serve",
        "--pipeline",
        str(home / "pipeline.yaml"),
        "--queues",
        "1",
        *("--event-queues", str(EVENT_QUEUE), "--jobs-db", str(home / EVENT_JOBS_DB)),
        "--state-dir",
        str(home),
        "--poll",
        str(args.poll),
        "--coalesce",
        str(args.coalesce),
        # --once: the --timeout's in-process export is the safety net; otherwise a schedule
        "--export-interval",
        "0" if args.once else "300",
    ]
    if not args.once:  # the demo ingests its first samples itself
        command += ["--ingest-source", "sftp-inbox", "--ingest-source", "s3-inbox"]
        command += ["--ingest-interval", str(args.interval)]
    log_path = home / "runner.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        command, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + 180
    while b"runner polling every" not in log_path.read_bytes()[-4000:]:
        if proc.poll() is not None:
            raise SystemExit(f"rossflow demo: the runner exited early; see {log_path}")
        if time.monotonic() > deadline:
            _stop_runner(proc)
            raise SystemExit(f"rossflow demo: the runner did not start in 180 s; see {log_path}")
        time.sleep(0.3)
    print(
        f"  Runner           rossum-export/{export_deployment_name([1])} (trigger: "
        f"rossum.annotation.status_changed, {args.coalesce:g}s window)"
        + ("" if args.once else f", rossflow-ingest/scheduled (every {args.interval:g}s)")
        + f"; polls every {args.poll:g}s; log {log_path}"
    )
    return proc


def _stop_runner(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # rossflow serve stops the runner, cancelling in-flight runs
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _run_ingest_now(home: Path) -> None:
    """Start the ingest deployment for both sources now (the runner executes the runs)."""
    from prefect.deployments.flow_runs import arun_deployment

    options = {"ledger_path": str(home / "ingest.db"), "min_age_s": 0}  # complete files
    for source in ("sftp-inbox", "s3-inbox"):
        try:
            await arun_deployment(
                "rossflow-ingest/scheduled",
                parameters={"source": source, "options": options},
                timeout=0,
            )
        except Exception as exc:  # the schedule picks the files up anyway
            print(f"\n  could not start the ingest of {source} now: {exc}")


async def _ingest(home: Path) -> dict[str, int]:
    from flows.ingest import ingest
    from rossflow.ingest.model import IngestOptions

    options = IngestOptions(ledger_path=str(home / "ingest.db"), min_age_s=0)
    ingested: dict[str, int] = {}
    for source in ("sftp-inbox", "s3-inbox"):
        summary = await asyncio.to_thread(ingest, source=source, rossum="rossum", options=options)
        for key, value in (summary.get("counts") or summary).items():
            if isinstance(value, int):
                ingested[key] = ingested.get(key, 0) + value
    return ingested


async def _main(args: argparse.Namespace, home: Path, info: dict[str, Any]) -> int:
    with ExitStack() as stack:
        receiver = _start_receiver(stack, home, args)
        hook_id = _register_hook(info["sandbox"], receiver)
        print(f"  Webhook receiver {receiver.hook_url}  (sandbox hook #{hook_id}, signed)")
        event_hook = await register_export_hook(info["sandbox"], receiver)
        print(
            f"  Export hook      queue {EVENT_QUEUE} (no confirmed state): sandbox hook "
            f"#{event_hook}, annotation_content.export → {receiver.hook_url}"
        )
        await _save_blocks(home, info)
        runner = await asyncio.to_thread(_start_runner, home, args)
        try:
            return await _pipeline(args, home, info, receiver)
        finally:
            if sys.stdout.isatty():
                print()
            await asyncio.to_thread(_stop_runner, runner)
            if args.once:
                await _cancel_leftovers()


async def _cancel_leftovers() -> None:
    """Runs the trigger scheduled for later would show as "Late" in the UI: cancel them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    with contextlib.suppress(Exception):
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                    )
                )
            )
            for run in runs:
                await client.set_flow_run_state(
                    run.id, Cancelled(message="rossflow demo stopped"), force=True
                )


async def _pipeline(
    args: argparse.Namespace, home: Path, info: dict[str, Any], receiver: Any
) -> int:
    from deployments.serve import export_deployment_name

    sandbox = info["sandbox"]
    progress = Progress(info, f"rossum-export/{export_deployment_name([1])}")
    first = int(args.state["next_sample"])
    next_no = _drop_samples(info, first, args.files)
    args.state["next_sample"] = next_no
    save_state(home, args.state)
    print(
        f"rossflow demo: dropped {args.files} sample invoices (numbers {first}–{next_no - 1}) "
        f"into {info['sftp_root'] / 'inbox'} (SFTP) and s3://rossum-inbox/inbox/ (S3)"
    )
    ingested = await _ingest(home)
    save_state(home, args.state)
    for line in ingest_lines(ingested, info):
        print(line)
    uploaded = int(ingested.get("uploaded", 0))
    print(
        "rossflow demo: the operator confirms what is ready; hook → event → trigger → export "
        f"runs by itself · Prefect UI http://127.0.0.1:{args.prefect_port}"
    )
    deadline = time.monotonic() + args.timeout
    next_drop = time.monotonic() + args.interval
    while True:
        await asyncio.to_thread(sandbox.confirm_all, 1)  # the simulated operator
        counts = await asyncio.to_thread(progress.counts)
        await progress.show(counts, receiver)
        done = counts["exported"] - progress.baseline["exported"]
        failed = counts["failed_export"] - progress.baseline["failed_export"]
        pending = sum(counts[s] for s in Progress.PENDING)
        if args.once:
            if pending == 0 and done + failed >= uploaded:
                await progress.show(counts, receiver, final=True)
                code = outcome(info, done, failed, args, via="webhook trigger")
                return max(code, await export_event_queue(args, info))
            if time.monotonic() > deadline:
                await progress.show(counts, receiver, final=True)
                return await _safety_net(args, home, info, progress)
        elif time.monotonic() > next_drop:
            next_no = _drop_samples(info, next_no, 2)
            args.state["next_sample"] = next_no
            save_state(home, args.state)
            next_drop = time.monotonic() + args.interval
            await _run_ingest_now(home)
            print(
                f"\n  dropped 2 more invoices and started the ingest deployment; it also runs "
                f"every {args.interval:g}s for what you drop into {info['sftp_root'] / 'inbox'} "
                "· Ctrl-C stops"
            )
        await asyncio.sleep(1.0)


async def _safety_net(
    args: argparse.Namespace, home: Path, info: dict[str, Any], progress: Progress
) -> int:
    """--once ran out of time on the webhook path: export in-process, like the schedule would."""
    from flows.export import export_confirmed

    hooks = [
        d for d in info["sandbox"].hook_deliveries() if d.get("hook_url", "").endswith("/rossum")
    ]
    failing = [d for d in hooks if d.get("status") == "failed"]
    print(
        f"rossflow demo: WARNING: the webhook path did not finish within {args.timeout:g}s "
        f"({len(hooks)} hook call(s), {len(failing)} failed; see {home / 'prefect-server.log'}); "
        "running the export in-process as the safety net"
    )
    await export_confirmed(
        queues=[1],
        pipeline=str(home / "pipeline.yaml"),
        rossum="rossum",
        state_dir=str(home / "export-state"),
    )
    counts = await asyncio.to_thread(progress.counts)
    done = counts["exported"] - progress.baseline["exported"]
    failed = counts["failed_export"] - progress.baseline["failed_export"]
    return outcome(info, done, failed, args, via="safety net")
