"""Admin routes, persistence across restarts and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sandbox.server import SandboxServer
from tests.sandbox.helpers import ready, upload, wait_status


def test_confirm_all_simulates_operator(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    sandbox.seed(queue=1, count=5, status="to_review")
    sandbox.seed(queue=1, count=2, status="postponed")
    sandbox.seed(queue=2, count=3, status="to_review")
    assert len(sandbox.confirm_all(queue=1)) == 5
    assert len(sandbox.confirm_all(queue=2)) == 3
    counts1 = sandbox_client.get("/v1/queues/1").json()["counts"]
    counts2 = sandbox_client.get("/v1/queues/2").json()["counts"]
    assert counts1["confirmed"] == 5 and counts1["postponed"] == 2
    assert counts2["exported"] == 3
    ann = sandbox_client.get("/v1/annotations", params={"queue": 1, "status": "confirmed"}).json()
    first = ann["results"][0]
    assert first["confirmed_by"] and first["assigned_at"] and first["modifier"]


def test_seed_validation_and_settings(sandbox: SandboxServer) -> None:
    assert (
        httpx.post(f"{sandbox.url}/_sandbox/seed", json={"queue": 1, "count": "x"}).status_code
        == 400
    )
    assert (
        httpx.post(f"{sandbox.url}/_sandbox/seed", json={"queue": 99, "count": 1}).status_code
        == 404
    )
    settings = sandbox.settings(extraction_delay_s=0.2, hook_retry_backoff_s=0.5)
    assert settings["extraction_delay_s"] == 0.2 and settings["hook_retry_backoff_s"] == 0.5
    assert httpx.post(f"{sandbox.url}/_sandbox/settings", json={"bogus": 1}).status_code == 400


def test_extraction_delay_setting(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.settings(extraction_delay_s=0.5)
    started = time.monotonic()
    ann_id = upload(sandbox_client)
    time.sleep(0.25)
    assert sandbox_client.get(f"/v1/annotations/{ann_id}").json()["status"] == "importing"
    wait_status(sandbox_client, ann_id, "to_review")
    assert time.monotonic() - started >= 0.5


def test_state_survives_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "sandbox.db")
    with SandboxServer(db=db, extraction_delay_s=0.05) as first:
        token = first.login()
        client = httpx.Client(base_url=first.api_url, headers={"Authorization": f"Bearer {token}"})
        ann_id = ready(client)
        client.patch("/v1/queues/1", json={"name": "Renamed"})
        pending = upload(client)  # still importing when the server stops? extraction may finish
        client.close()
        first.seed(queue=2, count=3, status="confirmed")
    with SandboxServer(db=db, extraction_delay_s=0.05) as second:
        client = httpx.Client(
            base_url=second.api_url, headers={"Authorization": f"Bearer {token}"}
        )  # token persisted
        assert client.get(f"/v1/annotations/{ann_id}").json()["status"] == "to_review"
        assert client.get("/v1/queues/1").json()["name"] == "Renamed"  # not reseeded
        assert client.get("/v1/queues").json()["pagination"]["total"] == 2
        assert client.get("/v1/users").json()["pagination"]["total"] == 1
        assert client.get("/v1/queues/2").json()["counts"]["confirmed"] == 3
        deadline = time.monotonic() + 5
        while client.get(f"/v1/annotations/{pending}").json()["status"] == "importing":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        new_id = upload(client)
        assert new_id > pending  # id counters persisted
        client.close()


def test_cli_prints_login_and_serves(tmp_path: Path) -> None:
    with socket_port() as port:
        pass
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from sandbox.cli import run; sys.exit(run())",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "cli.db"),
            "--extraction-delay",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        assert proc.stdout is not None
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        assert f"http://127.0.0.1:{port}/api" in out
        assert "admin@rossflow.local / rossflow" in out
        assert "Invoices (auto-export)" in out
        resp = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"username": "admin@rossflow.local", "password": "rossflow"},
        )
        assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_port_in_use(tmp_path: Path, sandbox: SandboxServer) -> None:
    from sandbox.cli import run

    assert run(["--port", str(sandbox.port), "--db", str(tmp_path / "x.db")]) == 2


class socket_port:
    """Context manager yielding a currently free TCP port."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_reset_gives_fresh_state(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.seed(queue=1, count=3, status="confirmed")
    sandbox.set_faults([{"path": "/api/v1/users", "kind": "error", "status": 500}])
    sandbox.settings(extraction_delay_s=5.0)
    sandbox_client.get("/v1/queues")
    sandbox.reset()
    assert sandbox.stats()["total"] == 0
    assert httpx.get(f"{sandbox.url}/_sandbox/faults").json()["rules"] == []
    assert httpx.get(f"{sandbox.url}/_sandbox/settings").json()["extraction_delay_s"] == 0.05
    client = httpx.Client(
        base_url=sandbox.api_url, headers={"Authorization": f"Bearer {sandbox.login()}"}
    )
    assert client.get("/v1/annotations").json()["pagination"]["total"] == 0
    assert client.get("/v1/users").status_code == 200
    assert sandbox_client.get("/v1/queues").status_code == 401  # old token belonged to old DB
    client.close()


def test_fresh_sandbox_fixture(fresh_sandbox: SandboxServer, sandbox: SandboxServer) -> None:
    assert fresh_sandbox.port != sandbox.port
    assert httpx.get(f"{fresh_sandbox.url}/_sandbox/health").json()["status"] == "ok"
