"""The local stack's Prefect server re-runs a request SQLite refused, inside the server.

Prefect's own server answers 503 to a write that meets a concurrent commit on SQLite, and its
client then waits 2 s; that wait was most of the webhook → ERP latency (docs/triggers.md). The
middleware is checked on a small ASGI app (what it re-runs, what it passes through) and on a real
server started by ``rossflow prefect-server``: concurrent ``create_flow_run`` calls, sent with
plain httpx (no client retries), all succeed, where ``prefect server start`` answers some of them
503.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from rossflow.localstack.prefect_server import SqliteBusyRetry
from tests.triggers.helpers import prefect_server_process

HEADER = "x-rossflow-sqlite-retries"


def api_with_failures(failures: int, error_status: int = 503) -> tuple[Starlette, list[Any]]:
    """Prefect's shape: an API app mounted under /api whose Exception handler answers 503."""
    bodies: list[Any] = []

    async def create(request: Request) -> JSONResponse:
        bodies.append(await request.json())
        if len(bodies) <= failures:
            raise sqlite3.OperationalError("database is locked")
        return JSONResponse({"echo": bodies[-1], "calls": len(bodies)}, status_code=201)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("true")

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"exception_message": "Service Unavailable"}, error_status)

    api = Starlette(
        routes=[
            Route("/deployments/d/create_flow_run", create, methods=["POST"]),
            Route("/health", health),
        ],
        exception_handlers={Exception: unavailable},
    )
    app = Starlette(routes=[Mount("/api", app=api)])
    app.add_middleware(SqliteBusyRetry, delays=(0, 0, 0))
    return app, bodies


def client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://local")


async def test_a_refused_write_is_run_again_with_its_body() -> None:
    app, bodies = api_with_failures(2)
    async with client(app) as http:
        resp = await http.post("/api/deployments/d/create_flow_run", json={"n": 7})
    assert resp.status_code == 201
    assert resp.json() == {"echo": {"n": 7}, "calls": 3}
    assert bodies == [{"n": 7}] * 3
    assert resp.headers[HEADER] == "2"


async def test_a_body_sent_in_chunks_is_replayed_whole() -> None:
    app, bodies = api_with_failures(1)
    payload = json.dumps({"lines": ["x" * 1000] * 50}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    async with client(app) as http:
        resp = await http.post(
            "/api/deployments/d/create_flow_run",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert resp.status_code == 201
    assert bodies[0] == bodies[1] == json.loads(payload)


async def test_a_database_that_stays_busy_still_answers_503_to_the_client() -> None:
    app, bodies = api_with_failures(100)
    async with client(app) as http:
        resp = await http.post("/api/deployments/d/create_flow_run", json={})
    assert resp.status_code == 503
    assert resp.json() == {"exception_message": "Service Unavailable"}
    assert len(bodies) == 4  # the first call and three re-runs, then Prefect's client decides
    assert resp.headers[HEADER] == "3"


async def test_other_answers_pass_through_once() -> None:
    app, bodies = api_with_failures(100, error_status=500)
    async with client(app) as http:
        failed = await http.post("/api/deployments/d/create_flow_run", json={})
        ok = await http.get("/api/health")
    assert failed.status_code == 500 and len(bodies) == 1
    assert HEADER not in failed.headers
    assert ok.status_code == 200 and ok.text == "true" and HEADER not in ok.headers


def _middlewares(env: dict[str, str]) -> list[str]:
    code = (
        "from prefect.server.api.server import create_app\n"
        "from rossflow.localstack.prefect_server import build_app\n"
        "app = build_app()\n"
        "assert create_app() is app, 'the in-process client would get another app'\n"
        "print(','.join(m.cls.__name__ for m in app.user_middleware))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().split(",")


def test_the_retry_sits_in_the_app_prefects_own_services_use(tmp_path: Path) -> None:
    """The triggered run's creation goes through Prefect's cached app: the retry must be in it."""
    home = {"PREFECT_HOME": str(tmp_path / "prefect")}
    assert _middlewares(home)[0] == "SqliteBusyRetry"
    postgres = {**home, "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u:p@x/db"}
    assert "SqliteBusyRetry" not in _middlewares(postgres)


@pytest.mark.slow
async def test_concurrent_run_creations_all_succeed_on_sqlite(tmp_path: Path) -> None:
    with prefect_server_process(["rossflow.localstack.prefect_server"], tmp_path) as api:
        async with httpx.AsyncClient(base_url=api, timeout=60) as http:
            flow = (await http.post("/flows/", json={"name": "f"})).json()
            dep = await http.post("/deployments/", json={"name": "d", "flow_id": flow["id"]})
            path = f"/deployments/{dep.json()['id']}/create_flow_run"
            answers: list[httpx.Response] = []
            for _ in range(6):
                answers += await asyncio.gather(*(http.post(path, json={}) for _ in range(4)))
        log = (tmp_path / "server.log").read_text()
    assert [a.status_code for a in answers] == [201] * 24, log[-3000:]
    assert len({a.json()["id"] for a in answers}) == 24
    # SQLite refused some of them at first (prefect server start answers those 503)
    retried = sum(int(a.headers.get(HEADER, 0)) for a in answers)
    assert retried > 0, "no write met a concurrent one: the test did not exercise the retry"
    assert "SQLite busy" in log
