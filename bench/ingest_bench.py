"""Ingest benchmark: the ``rossflow-ingest`` flow against plain paramiko/boto3 + httpx scripts.

One command::

    python -m bench.ingest_bench                 # 1,000 files from SFTP and from S3, RSS 1k vs 5k
    python -m bench.ingest_bench --files 200 --rss-files 0     # quick run

Every server runs in its own process (sandbox with a 10 ms extraction delay, an asyncssh SFTP
server, moto S3) and every measured run is a separate child process, so the numbers are those of
the flow (or the plain script) alone: wall time of the transfer work, files/s, MB/s and the
peak RSS sampled with psutil (cross-checked with the child's kernel high-water mark, VmHWM).

The plain scripts do the same transfers with the same concurrency: list, read each file
(computing its sha256), ``POST /v1/uploads`` with the same metadata, poll the task, fetch the
upload object, then move the file to an archive folder (SFTP rename / S3 copy + delete). They do
not claim, validate, dedupe, record anything, retry safely or report, which is what the flow
adds.

Each pair runs unthrottled and under a Rossum rate limit (``--rates``; 10 req/s: the sandbox
answers 429 beyond it, the flow's client limiter and a token bucket in the plain script keep
under it), side by side in one command, with the CPU model and the load average printed next to
the numbers. Under 10 req/s the plain script, with three requests per file, cannot pass
3.3 files/s, so those runs use ``--throttled-files`` files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "rossflow-bench"


# ================================================================================ servers
def serve(kind: str, root: str) -> int:
    """Child: start one server, print its coordinates as JSON, run until stdin closes."""
    info: dict[str, Any]
    if kind == "sandbox":
        from sandbox.server import SandboxServer

        server: Any = SandboxServer(db=":memory:", extraction_delay_s=0.01).start()
        info = {"api_url": server.api_url, "username": server.username, "password": server.password}
    elif kind == "sftp":
        from rossflow.localstack.sftp_server import LocalSftpServer

        server = LocalSftpServer(root, users={"bench": "bench"}).start()
        info = {
            "host": server.host,
            "port": server.port,
            "username": "bench",
            "password": "bench",
            "known_hosts": server.known_hosts_line(),
        }
    elif kind == "s3":
        from rossflow.localstack.s3_server import S3Server

        server = S3Server().start()
        server.create_bucket(BUCKET)
        info = {"endpoint_url": server.endpoint_url, **server.client_kwargs()}
    else:
        raise SystemExit(f"unknown server {kind}")
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # until the parent closes the pipe
    server.stop()
    return 0


@contextlib.contextmanager
def server_process(kind: str, root: Path) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest_bench", "--serve", kind, "--root", str(root)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} server did not start")
        yield {**json.loads(line), "pid": proc.pid}
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ================================================================================ children
class Limiter:
    """The plain scripts' client-side rate limit: ``rate`` requests/s shared by all threads."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next)
            self.next = at + 1.0 / self.rate
        if at > now:
            time.sleep(at - now)


LIMIT = Limiter(None)


def _plain_sftp(cfg: dict[str, Any]) -> tuple[int, int]:
    import httpx
    import paramiko
    from paramiko.hostkeys import HostKeyEntry

    sftp_cfg, api = cfg["sftp"], cfg["rossum"]
    token = httpx.post(
        f"{api['api_url']}/v1/auth/login",
        json={"username": api["username"], "password": api["password"]},
    ).json()["key"]
    local = threading.local()
    lock = threading.Lock()
    clients: list[Any] = []

    def session() -> tuple[Any, Any]:
        if not hasattr(local, "sftp"):
            ssh = paramiko.SSHClient()
            entry = HostKeyEntry.from_line(sftp_cfg["known_hosts"])
            for name in entry.hostnames:
                ssh.get_host_keys().add(name, entry.key.get_name(), entry.key)
            ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
            ssh.connect(
                sftp_cfg["host"],
                sftp_cfg["port"],
                sftp_cfg["username"],
                sftp_cfg["password"],
                allow_agent=False,
                look_for_keys=False,
            )
            local.sftp = ssh.open_sftp()
            local.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)
            with lock:
                clients.append((ssh, local.http))
        return local.sftp, local.http

    folder = cfg["directory"]
    archive = f"{folder}/archive-plain"
    first, _ = session()
    first.mkdir(archive)
    names = [a.filename for a in first.listdir_attr(folder) if a.filename.endswith(".pdf")]
    total = [0]

    def one(name: str) -> None:
        sftp, http = session()
        with sftp.open(f"{folder}/{name}", "rb") as fh:
            fh.prefetch()
            data = fh.read()
        total[0] += len(data)
        meta = {
            "source_uri": f"sftp://{folder}/{name}",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "original_file_name": name,
        }
        task = upload_and_wait(http, api["api_url"], name, data, meta)
        assert task
        sftp.rename(f"{folder}/{name}", f"{archive}/{name}")

    with ThreadPoolExecutor(cfg["concurrency"]) as pool:
        list(pool.map(one, names))
    for ssh, http in clients:
        ssh.close()
        http.close()
    return len(names), total[0]


def upload_and_wait(http: Any, api_url: str, name: str, data: bytes, meta: dict[str, Any]) -> Any:
    LIMIT.wait()
    resp = http.post(
        f"{api_url}/v1/uploads",
        params={"queue": 1},
        files={"content": (name, data, "application/pdf")},
        data={"metadata": json.dumps(meta)},
    )
    resp.raise_for_status()
    task_url = resp.json()["url"]
    delay = 0.2
    while True:
        LIMIT.wait()
        task = http.get(task_url, params={"no_redirect": "true"}).json()
        if task["status"] == "succeeded":
            break
        if task["status"] == "failed":
            raise RuntimeError(task)
        time.sleep(delay)
        delay = min(5.0, delay * 1.5)
    LIMIT.wait()
    return http.get(task["content"]["upload"]).json()


def _plain_s3(cfg: dict[str, Any]) -> tuple[int, int]:
    import boto3
    import httpx

    s3cfg, api = cfg["s3"], cfg["rossum"]
    token = httpx.post(
        f"{api['api_url']}/v1/auth/login",
        json={"username": api["username"], "password": api["password"]},
    ).json()["key"]
    s3 = boto3.client(
        "s3",
        **{k: v for k, v in s3cfg.items() if k != "endpoint_url"},
        endpoint_url=s3cfg["endpoint_url"],
    )
    prefix = cfg["directory"] + "/"
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix, Delimiter="/"
        )
        for o in page.get("Contents", [])
    ]
    local = threading.local()
    total = [0]

    def one(key: str) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        total[0] += len(data)
        name = key.rsplit("/", 1)[1]
        meta = {
            "source_uri": f"s3://{BUCKET}/{key}",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "original_file_name": name,
        }
        assert upload_and_wait(local.http, api["api_url"], name, data, meta)
        s3.copy_object(
            Bucket=BUCKET,
            Key=f"{prefix}archive-plain/{name}",
            CopySource={"Bucket": BUCKET, "Key": key},
        )
        s3.delete_object(Bucket=BUCKET, Key=key)

    with ThreadPoolExecutor(cfg["concurrency"]) as pool:
        list(pool.map(one, keys))
    return len(keys), total[0]


def _source_block(cfg: dict[str, Any]) -> Any:
    from blocks.sftp import SftpServer
    from blocks.sources import IngestSource

    if cfg["source"] == "sftp":
        return IngestSource(sftp_server=SftpServer(**cfg["sftp"]), directory=cfg["directory"])
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    s3cfg = cfg["s3"]
    credentials = AwsCredentials(
        aws_access_key_id=s3cfg["aws_access_key_id"],
        aws_secret_access_key=s3cfg["aws_secret_access_key"],
        region_name=s3cfg["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=s3cfg["endpoint_url"]),
    )
    return IngestSource(
        s3_bucket=S3Bucket(bucket_name=BUCKET, credentials=credentials),
        directory=cfg["directory"],
    )


def _options(cfg: dict[str, Any]) -> Any:
    from rossflow.ingest import IngestOptions

    return IngestOptions(
        ledger_path=cfg["ledger"],
        min_age_s=0,
        batch_size=cfg["batch_size"],
        batches_in_flight=cfg.get("in_flight", 2),
        io_concurrency=cfg["concurrency"],
        upload_concurrency=cfg["concurrency"],
        report_max_rows=100,
        files_per_upload=cfg.get("files_per_upload", 20),
    )


def _rossum(cfg: dict[str, Any]) -> Any:
    from blocks.rossum import RossumCredentials

    api = cfg["rossum"]
    return RossumCredentials(
        base_url=api["api_url"],
        username=api["username"],
        password=api["password"],
        rate_limit_per_s=cfg.get("rate"),
    )


RULES = [{"pattern": "*.pdf", "queue_id": 1}]


def _domain(cfg: dict[str, Any]) -> tuple[int, int]:
    """The same pipeline without Prefect (rossflow.ingest.run_ingest)."""
    from rossflow.ingest import run_ingest

    report = run_ingest(
        _source_block(cfg).open_source(), RULES, _rossum(cfg).get_client, _options(cfg)
    )
    summary = report.summary()
    if summary["uploaded"] != summary["processed"]:
        raise RuntimeError(f"not everything uploaded: {summary}")
    return int(summary["uploaded"]), int(summary["bytes_uploaded"])


def _flow(cfg: dict[str, Any]) -> tuple[int, int]:
    from flows.ingest import ingest

    summary = ingest(
        source=_source_block(cfg), rossum=_rossum(cfg), rules=RULES, options=_options(cfg)
    )
    if summary["uploaded"] != summary["processed"]:
        raise RuntimeError(f"not everything uploaded: {summary}")
    return int(summary["uploaded"]), int(summary["bytes_uploaded"])


def _vmhwm_mb() -> float:
    """The kernel's peak RSS of this process (``VmHWM``; unlike ``ru_maxrss`` it is not
    inherited from the parent across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _preload(mode: str, source: str) -> None:
    """Import what a mode needs before the clock starts (prefect and prefect-aws take seconds
    to import; that is start-up, reported separately, not transfer time)."""
    import boto3  # noqa: F401
    import httpx  # noqa: F401
    import paramiko  # noqa: F401

    if mode != "plain":
        import prefect.flow_engine
        import prefect.task_engine  # noqa: F401

        import blocks.sources  # noqa: F401
        import flows.ingest  # noqa: F401
        import rossflow.ingest  # noqa: F401


def child(mode: str, cfg: dict[str, Any]) -> int:
    import logging

    started = time.perf_counter()
    logging.getLogger("prefect").setLevel(logging.WARNING)
    _preload(mode, cfg["source"])
    LIMIT.rate = cfg.get("rate")
    plain = _plain_sftp if cfg["source"] == "sftp" else _plain_s3
    work = {"plain": plain, "flow": _flow, "domain": _domain}[mode]
    ready, cpu = time.perf_counter(), time.process_time()
    files, size = work(cfg)
    elapsed = time.perf_counter() - ready
    cpu = time.process_time() - cpu
    result = {
        "files": files,
        "bytes": size,
        "seconds": elapsed,
        "startup_s": ready - started,
        "cpu_s": cpu,
        "vmhwm_mb": _vmhwm_mb(),
    }
    print(json.dumps(result), flush=True)
    return 0


def _sandbox_stats(api: dict[str, Any], *, reset: bool = False) -> dict[str, Any]:
    import httpx

    method = "DELETE" if reset else "GET"
    return dict(
        httpx.request(
            method, f"{api['api_url'].removesuffix('/api')}/_sandbox/stats", timeout=30
        ).json()
    )


def measure(mode: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one child; sample its RSS with psutil while it runs. Also counts the Rossum
    requests (server side) and the CPU the sandbox and the file server used meanwhile."""
    import psutil

    from bench._common import tree_cpu_s

    servers = {"sandbox": cfg["pids"]["sandbox"], "files": cfg["pids"][cfg["source"]]}
    if cfg["pids"].get("prefect"):
        servers["prefect"] = cfg["pids"]["prefect"]
    _sandbox_stats(cfg["rossum"], reset=True)
    cpu_before = {name: tree_cpu_s(pid) for name, pid in servers.items()}

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest_bench", "--child", mode, "--config", json.dumps(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, ps.memory_info().rss)
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    for name, pid in servers.items():
        result[f"{name}_cpu_s"] = tree_cpu_s(pid) - cpu_before[name]
    stats = _sandbox_stats(cfg["rossum"])
    result["rossum_requests"] = stats["total"]
    result["rossum_routes"] = stats["requests"]
    result["peak_rss_mb"] = peak / 2**20
    result["files_per_s"] = result["files"] / result["seconds"]
    result["mb_per_s"] = result["bytes"] / 2**20 / result["seconds"]
    return result


# ================================================================================ scenarios
def make_files(
    kind: str,
    n: int,
    size: int,
    tag: str,
    *,
    sftp_root: Path,
    s3cfg: dict[str, Any],
    directory: str,
) -> None:
    def content(i: int) -> bytes:
        head = f"%PDF-1.4\n% bench {tag} {i}\n".encode()
        return head + os.urandom(max(0, size - len(head) - 6)) + b"\n%%EOF"

    if kind == "sftp":
        folder = sftp_root / directory.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"doc-{tag}-{i:05d}.pdf").write_bytes(content(i))
        old = time.time() - 60
        for path in folder.iterdir():
            os.utime(path, (old, old))
        return
    import boto3

    s3 = boto3.client(
        "s3",
        **{k: v for k, v in s3cfg.items() if k != "endpoint_url"},
        endpoint_url=s3cfg["endpoint_url"],
    )
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(
                    Bucket=BUCKET, Key=f"{directory}/doc-{tag}-{i:05d}.pdf", Body=content(i)
                ),
                range(n),
            )
        )


def machine_line() -> str:
    """CPU model, CPU count and load average (the machine may be shared)."""
    from bench._common import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU(s), load average before: {_load()}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _sandbox_settings(api: dict[str, Any], **values: Any) -> None:
    import httpx

    httpx.post(
        f"{api['api_url'].removesuffix('/api')}/_sandbox/settings", json=values, timeout=30
    ).raise_for_status()


def _prefect_server_pid() -> int | None:
    """The Prefect test server this process started (a uvicorn child), to count its CPU."""
    import psutil

    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "prefect.server.api.server" in " ".join(proc.cmdline()):
                return proc.pid
    return None


def row(name: str, r: dict[str, Any]) -> str:
    files = max(1, r["files"])
    prefect = r.get("prefect_cpu_s")
    return (
        f"| {name} | {r['files']} | {r['seconds']:.1f} | {r['files_per_s']:.1f} | "
        f"{r['mb_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['vmhwm_mb']:.0f} | "
        f"{r['rossum_requests'] / files:.2f} | {1000 * r['cpu_s'] / files:.1f} | "
        f"{1000 * r['sandbox_cpu_s'] / files:.1f} | {1000 * r['files_cpu_s'] / files:.1f} | "
        + (f"{1000 * prefect / files:.1f} |" if prefect is not None else "– |")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=1000, help="files per throughput run")
    parser.add_argument(
        "--rss-files", type=int, default=5000, help="files for the RSS-vs-count run (0: skip)"
    )
    parser.add_argument("--size", type=int, default=20_000, help="bytes per file")
    parser.add_argument("--sources", default="sftp,s3", help="comma list: sftp,s3")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--batch-size", type=int, default=100, help="files per batch (IngestOptions default)"
    )
    parser.add_argument(
        "--domain",
        action="store_true",
        help="also run the pipeline without Prefect (rossflow.ingest.run_ingest)",
    )
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight")
    parser.add_argument(
        "--rates",
        default="none,10",
        help="comma list of Rossum rate limits in req/s ('none': unthrottled)",
    )
    parser.add_argument(
        "--throttled-files", type=int, default=150, help="files per rate-limited run"
    )
    parser.add_argument(
        "--files-per-upload",
        type=int,
        default=20,
        help="IngestOptions.files_per_upload of the flow (1: one file per upload request)",
    )
    parser.add_argument("--modes", default="plain,flow", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.root)
    if args.child:
        return child(args.child, json.loads(args.config))

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="rossflow-bench-"))
    sftp_root = work / "sftp"
    sftp_root.mkdir()
    results: dict[str, Any] = {}
    sources = [s for s in args.sources.split(",") if s]
    rates = [None if r.strip() in ("none", "0", "") else float(r) for r in args.rates.split(",")]
    machine = machine_line()
    print(
        f"ingest benchmark: {args.files} files x {args.size} B, concurrency "
        f"{args.concurrency}, files per upload {args.files_per_upload}; {machine}; "
        f"working in {work}",
        flush=True,
    )
    try:
        with (
            prefect_test_harness(server_startup_timeout=180),
            server_process("sandbox", work) as api,
            server_process("sftp", sftp_root) as sftp,
            server_process("s3", work) as s3cfg,
        ):
            env = {
                **os.environ,
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "PYTHONPATH": str(ROOT),
            }
            pids = {
                "sandbox": api.pop("pid"),
                "sftp": sftp.pop("pid"),
                "s3": s3cfg.pop("pid"),
                "prefect": _prefect_server_pid(),
            }
            base = {
                "pids": pids,
                "rossum": api,
                "sftp": sftp,
                "s3": s3cfg,
                "concurrency": args.concurrency,
                "batch_size": args.batch_size,
                "in_flight": args.in_flight,
                "files_per_upload": args.files_per_upload,
            }
            runs: list[tuple[str, str, str, int, float | None]] = []
            for rate in rates:
                suffix = f"-{rate:g}rps" if rate else ""
                n = args.throttled_files if rate else args.files
                for source in sources:
                    if "plain" in args.modes:
                        runs.append((source, "plain", f"{source}-plain{suffix}", n, rate))
                    if "flow" in args.modes:
                        runs.append((source, "flow", f"{source}-flow{suffix}", n, rate))
                    if args.domain:
                        runs.append((source, "domain", f"{source}-no-prefect{suffix}", n, rate))
            if args.rss_files:
                runs.append(
                    (
                        sources[0],
                        "flow",
                        f"{sources[0]}-flow-{args.rss_files}",
                        args.rss_files,
                        None,
                    )
                )
            for index, (source, mode, name, n, rate) in enumerate(runs):
                _sandbox_settings(api, rate_limit_per_s=rate)
                directory = f"/in{index}" if source == "sftp" else f"in{index}"
                print(f"  {name}: preparing {n} files…", flush=True)
                make_files(
                    source,
                    n,
                    args.size,
                    name,
                    sftp_root=sftp_root,
                    s3cfg=s3cfg,
                    directory=directory,
                )
                cfg = {
                    **base,
                    "rate": rate,
                    "source": source,
                    "directory": directory,
                    "ledger": str(work / f"{name}.db"),
                }
                results[name] = measure(mode, cfg, env)
                r = results[name]
                print(
                    f"  {name}: {r['files']} files in {r['seconds']:.1f} s, "
                    f"{r['files_per_s']:.1f} files/s, peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "",
        "| run | files | seconds | files/s | MB/s | peak RSS MB (psutil) | VmHWM MB "
        "| Rossum req/file | CPU ms/file | sandbox CPU ms/file | file server CPU ms/file "
        "| Prefect server CPU ms/file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(name, r) for name, r in results.items()]
    lines.append("")
    for rate in rates:
        suffix = f"-{rate:g}rps" if rate else ""
        limit = f"Rossum limit {rate:g} req/s" if rate else "unthrottled"
        for source in sources:
            plain = results.get(f"{source}-plain{suffix}")
            flow = results.get(f"{source}-flow{suffix}")
            if plain and flow:
                lines.append(
                    f"{source}, {limit}: flow/plain throughput = "
                    f"{flow['files_per_s'] / plain['files_per_s']:.2f}x "
                    f"({flow['files_per_s']:.1f} vs {plain['files_per_s']:.1f} files/s), "
                    f"Rossum requests/file {flow['rossum_requests'] / max(1, flow['files']):.2f}"
                    f" vs {plain['rossum_requests'] / max(1, plain['files']):.2f}, "
                    f"peak RSS flow/plain = {flow['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"
                )
    lines.append(f"{machine}; load average after: {_load()}")
    if args.rss_files and f"{sources[0]}-flow" in results:
        small = results[f"{sources[0]}-flow"]
        big = results[f"{sources[0]}-flow-{args.rss_files}"]
        lines.append(
            f"peak RSS {args.files} vs {args.rss_files} files ({sources[0]} flow): "
            f"{small['peak_rss_mb']:.0f} MB vs {big['peak_rss_mb']:.0f} MB "
            f"({big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x)"
        )
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
