"""The same files on two hosts' sources (two ingest flow processes with their own home folders
and ledger paths, sharing the state store on PostgreSQL): each content is uploaded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.server import SandboxServer
from tests.fixtures.postgres import StateBackend
from tests.fixtures.servers import SftpServerInfo
from tests.ingest.helpers import pdf, put, sha, tree, uploads_by_sha

ROOT = Path(__file__).resolve().parents[2]
SHARED = 40  # files present on both hosts
OWN = 5  # files only one host has


@pytest.mark.slow
def test_same_file_on_two_hosts_is_uploaded_once(
    prefect_harness: None,
    pg_state: StateBackend,
    sftp_server: SftpServerInfo,
    sandbox: SandboxServer,
    sandbox_client: httpx.Client,
    tmp_path: Path,
) -> None:
    from prefect.settings import PREFECT_API_URL

    hosts = ("host-a", "host-b")
    for index, host in enumerate(hosts):
        for i in range(SHARED):
            # Host b lists the shared contents in the opposite order, so the runs meet midway.
            content = i if index == 0 else SHARED - 1 - i
            put(sftp_server.root / host, f"invoice {i:03d}.pdf", pdf(content, size=3000))
        for i in range(OWN):
            put(sftp_server.root / host, f"own {i}.pdf", pdf(f"{host}-{i}", size=3000))
    # Slow uploads a little so that the two runs overlap for most of their files.
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "latency", "latency_s": 0.3}]
    )
    procs = []
    start_at = time.time() + 12  # both children past their imports: the runs start together
    for host in hosts:
        home = tmp_path / host
        home.mkdir()
        config = {
            "sftp": {
                "host": sftp_server.host,
                "port": sftp_server.port,
                "username": sftp_server.username,
                "password": sftp_server.password,
                "known_hosts": sftp_server.known_hosts,
            },
            "rossum": {
                "base_url": sandbox.api_url,
                "username": sandbox.username,
                "password": sandbox.password,
                "rate_limit_per_s": None,
            },
            "directory": f"/{host}",
            "options": {
                "ledger_path": str(home / ".rossflow" / "ingest.db"),
                "min_age_s": 0,
                "batch_size": 5,
                "io_concurrency": 3,
                "upload_concurrency": 3,
                "reconcile_delay_s": 0.05,
                "task_deadline_s": 60,
            },
            "rules": [{"pattern": "*.pdf", "queue_id": 1}],
            "start_at": start_at,
        }
        env = {
            **os.environ,
            **pg_state.env,
            "HOME": str(home),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PYTHONPATH": str(ROOT),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.ingest.flow_child", json.dumps(config)],
                cwd=home,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    sandbox.clear_faults()

    expected = {sha(pdf(i, size=3000)): 1 for i in range(SHARED)}
    expected.update({sha(pdf(f"{h}-{i}", size=3000)): 1 for h in hosts for i in range(OWN)})
    assert uploads_by_sha(sandbox_client) == expected, summaries
    assert all(s["failed"] == 0 for s in summaries), summaries
    # Every distinct file was sent exactly once between the two hosts (a file the other host
    # had already sent is a duplicate, not an upload), each host sent its own files, and every
    # file of both sources is archived. Which host sends which shared file depends on timing.
    assert sum(s["uploaded"] for s in summaries) == SHARED + len(hosts) * OWN, summaries
    assert all(s["uploaded"] >= OWN for s in summaries), summaries
    assert sum(s["duplicate"] for s in summaries) == SHARED, summaries
    files = tree(sftp_server.root)
    for host in hosts:
        archived = [f for f in files if f.startswith(f"{host}/") and "/archive/" in f]
        assert len(archived) == SHARED + OWN, summaries
    assert not [f for f in files if "/archive/" not in f]
    # No host kept a ledger of its own: the state is in PostgreSQL.
    assert not list(tmp_path.glob("host-*/.rossflow/*.db"))
