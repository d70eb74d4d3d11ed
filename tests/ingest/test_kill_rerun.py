"""SIGKILL the ingest flow mid-run, run it again: nothing uploaded twice, nothing lost, nothing
left claimed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from blocks.rossum import RossumCredentials
from blocks.sftp import SftpServer as SftpBlock
from blocks.sources import IngestSource
from rossflow.ingest import IngestOptions
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import pdf, put, sha, tree, uploads_by_sha

ROOT = Path(__file__).resolve().parents[2]
N = 90


def uploads_posted(sandbox: SandboxServer) -> int:
    return int(sandbox.stats()["requests"].get("POST /api/v1/uploads", 0))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(
    prefect_harness: None,
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.ingest import ingest

    inbox = sftp_server.root / "inbox"
    for i in range(N):
        put(inbox, f"doc {i:03d}.pdf", pdf(i, size=4000))
    put(inbox, "copy of doc 000.pdf", pdf(0, size=4000))  # a duplicate too
    # Slow Rossum down so the kill lands in the middle of the run.
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "latency", "latency_s": 0.1}]
    )
    sftp = {
        "host": sftp_server.host,
        "port": sftp_server.port,
        "username": sftp_server.username,
        "password": sftp_server.password,
        "known_hosts": sftp_server.known_hosts,
    }
    rossum = {
        "base_url": sandbox.api_url,
        "username": sandbox.username,
        "password": sandbox.password,
        "rate_limit_per_s": None,
    }
    opts = {
        "ledger_path": str(tmp_path / "ingest.db"),
        "min_age_s": 0,
        "batch_size": 10,
        "io_concurrency": 4,
        "upload_concurrency": 4,
        "reconcile_delay_s": 0.05,
        "files_per_upload": 3,  # multi-file uploads: the kill lands between them
    }
    config = {
        "sftp": sftp,
        "rossum": rossum,
        "directory": "/inbox",
        "options": opts,
        "rules": [{"pattern": "*.pdf", "queue_id": 1}],
    }
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.ingest.flow_child", json.dumps(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while uploads_posted(sandbox) < N // 9:
            assert child.poll() is None, child.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    killed_at = uploads_posted(sandbox)
    assert 0 < killed_at < N // 3, killed_at
    files = tree(sftp_server.root)
    claimed = [f for f in files if "/processing/" in f and not f.endswith(".owner.json")]
    assert claimed, "the kill should leave claimed files behind"
    sandbox.clear_faults()

    summary = ingest(
        source=IngestSource(
            sftp_server=SftpBlock(**sftp), directory="/inbox", rules=config["rules"]
        ),
        rossum=RossumCredentials(**rossum),
        options=IngestOptions(**opts),
    )
    assert summary["recovered"] >= len(claimed)
    assert summary["failed"] == 0 and summary["deferred"] == 0, summary
    # Every content exactly once in Rossum.
    assert uploads_by_sha(sandbox_client) == {sha(pdf(i, size=4000)): 1 for i in range(N)}
    # Every file archived, none lost, none left claimed.
    files = tree(sftp_server.root)
    archived = [f for f in files if "/archive/" in f]
    assert len(archived) == N + 1, [f for f in files if "/archive/" not in f]
    assert [f for f in files if "/archive/" not in f] == []
