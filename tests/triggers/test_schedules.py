"""The schedules are the safety net: a real ``prefect server start`` must turn them into runs.

The session's test server (``prefect_harness``) runs no scheduler service, so this test starts
a full server of its own. It guards the installed stack: with SQLAlchemy 2.1, Prefect 3.8's
scheduler fails on every loop ("Can't evaluate bulk DML statement") and no scheduled run is ever
created, silently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


@pytest.fixture
def full_prefect_server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--no-ui", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start"
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
async def test_schedules_create_runs_with_their_own_parameters(
    full_prefect_server: str, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.serve import ingest_deployment

    with temporary_settings(updates={PREFECT_API_URL: full_prefect_server}):
        deployment = await ingest_deployment(["sftp-inbox", "s3-inbox"], interval_s=60)
        await deployment.apply()
    deadline = time.monotonic() + 60
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = httpx.post(f"{full_prefect_server}/flow_runs/filter", json={}, timeout=30).json()
        if {r["parameters"].get("source") for r in runs if r["auto_scheduled"]} >= {
            "sftp-inbox",
            "s3-inbox",
        }:
            break
        time.sleep(1)
    log = (tmp_path / "server.log").read_text()
    assert "Can't evaluate bulk DML statement" not in log, (
        "Prefect's scheduler is broken by SQLAlchemy 2.1: pin sqlalchemy[asyncio]>=2.0,<2.1"
    )
    sources = {r["parameters"].get("source") for r in runs if r["auto_scheduled"]}
    assert sources == {"sftp-inbox", "s3-inbox"}, "no scheduled runs were created"
