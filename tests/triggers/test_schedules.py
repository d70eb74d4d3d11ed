"""The schedules are the safety net: a real ``prefect server start`` must turn them into runs.

The session's test server (``prefect_harness``) runs no scheduler service, so this test starts
a full server of its own. It guards the installed stack: with SQLAlchemy 2.1, Prefect 3.8's
scheduler fails on every loop ("Can't evaluate bulk DML statement") and no scheduled run is ever
created, silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.triggers.helpers import prefect_server_process


@pytest.fixture
def full_prefect_server(tmp_path: Path) -> Iterator[str]:
    with prefect_server_process(["prefect", "server", "start"], tmp_path) as api:
        yield api


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
