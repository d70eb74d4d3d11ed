"""``rossflow demo``: the whole pipeline on one machine, with nothing but this package.

Starts on 127.0.0.1: a persistent Prefect server (SQLite under ``--home``), the Rossum sandbox,
the ERP stand-in, an SFTP server and an S3-compatible server (moto). Then it drops sample
invoices (PDFs with real text) on SFTP and S3 and runs the real flows:

    ingest (SFTP + S3 → Rossum) → sandbox extraction → operator confirms
    → export (template → ERP REST call → extract the ERP id → evaluate → SFTP archive)

``--once`` exits when the documents are through; otherwise the services keep running (drop
more PDFs into ``<home>/sftp/inbox``) and the cycle repeats every ``--interval`` seconds until
Ctrl-C, which shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

PIPELINE = (Path(__file__).parent / "localstack" / "demo_pipeline.yaml").read_text()


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
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect")}
    log = (home / "prefect-server.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
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
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between cycles")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--sandbox-port", type=int, default=8765)
    parser.add_argument("--erp-port", type=int, default=8085)
    parser.add_argument("--sftp-port", type=int, default=2222)
    parser.add_argument("--s3-port", type=int, default=9000)
    args = parser.parse_args(argv)

    home: Path = args.home.resolve()
    if args.fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    _check_ports(
        {
            "Prefect": args.prefect_port,
            "sandbox": args.sandbox_port,
            "ERP": args.erp_port,
            "SFTP": args.sftp_port,
            "S3": args.s3_port,
        }
    )
    # Prefect reads its settings on first use: point this process at our server first.
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    print(f"rossflow demo: starting the local stack in {home}")
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


def _start_services(stack: ExitStack, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rossflow.localstack.erp import ErpServer
    from rossflow.localstack.s3_server import S3Server
    from rossflow.localstack.sftp_server import SftpServer
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
        SftpServer(
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


async def _cycle(home: Path, info: dict[str, Any]) -> dict[str, Any]:
    from flows.export import export_confirmed
    from flows.ingest import ingest
    from rossflow.ingest.model import IngestOptions

    sandbox = info["sandbox"]
    options = IngestOptions(ledger_path=str(home / "ingest.db"), min_age_s=0)
    ingested: dict[str, Any] = {}
    for source in ("sftp-inbox", "s3-inbox"):
        summary = await asyncio.to_thread(ingest, source=source, rossum="rossum", options=options)
        for key, value in (summary.get("counts") or summary).items():
            if isinstance(value, int):
                ingested[key] = ingested.get(key, 0) + value
    print(f"  ingest:  {ingested}")
    # simulated extraction, then the operator confirms everything that is ready
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        confirmed = sandbox.confirm_all(queue=1)
        pending = _count(sandbox, "importing")
        if not pending:
            break
        await asyncio.sleep(0.5)
    print(f"  review:  operator confirmed {len(confirmed)} annotation(s)")
    exported = await export_confirmed(
        queues=[1],
        pipeline=str(home / "pipeline.yaml"),
        rossum="rossum",
        state_dir=str(home / "export-state"),
    )
    print(f"  export:  {exported or 'nothing confirmed'}")
    return {"ingest": ingested, "export": exported}


def _count(sandbox: Any, status: str) -> int:
    token = sandbox.login()
    resp = httpx.get(
        f"{sandbox.api_url}/v1/annotations",
        params={"status": status, "page_size": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    return int(resp.json()["pagination"]["total"])


async def _main(args: argparse.Namespace, home: Path, info: dict[str, Any]) -> int:
    await _save_blocks(home, info)
    next_no = _drop_samples(info, 1, args.files)
    print(f"rossflow demo: dropped {args.files} sample invoices on SFTP and S3")
    while True:
        result = await _cycle(home, info)
        erp = info["erp"].stats()
        print(
            f"rossflow demo: ERP holds {erp['documents']} invoice(s), "
            f"{erp['duplicates']} duplicate(s) refused · Prefect UI http://127.0.0.1:{args.prefect_port}"
        )
        if args.once:
            failed = sum(v for k, v in result["export"].items() if k != "exported")
            return 1 if failed else 0
        print(
            f"rossflow demo: next cycle in {args.interval:.0f}s; drop PDFs into "
            f"{info['sftp_root'] / 'inbox'}; Ctrl-C stops"
        )
        await asyncio.sleep(args.interval)
        next_no = _drop_samples(info, next_no, 2)
