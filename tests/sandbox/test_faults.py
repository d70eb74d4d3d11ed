"""Checklist 7 and fault injection: latency, 429, errors, dropped connections, stats."""

from __future__ import annotations

import time

import httpx
import pytest

from sandbox.server import SandboxServer

RATE_LIMITED = {
    "detail": "Request was rate limited.",
    "code": "rate_limited",
    "url": "https://rossum.app/api/docs/openapi/guides/overview/#rate-limiting",
}


def _uploads(client: httpx.Client) -> int:
    return int(client.get("/v1/documents").json()["pagination"]["total"])


def test_latency_fault(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults(
        [{"method": "GET", "path": "/api/v1/queues", "kind": "latency", "latency_s": 0.3}]
    )
    started = time.monotonic()
    assert sandbox_client.get("/v1/queues").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    sandbox_client.get("/v1/users")
    assert time.monotonic() - started < 0.3


def test_rate_limit_fault_times(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults(
        [
            {
                "method": "POST",
                "path": "/api/v1/uploads",
                "kind": "rate_limit",
                "retry_after": 2,
                "times": 2,
            }
        ]
    )
    for _ in range(2):
        resp = sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
        assert resp.status_code == 429
        assert resp.json() == RATE_LIMITED
        assert resp.headers["Retry-After"] == "2"
    ok = sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
    assert ok.status_code == 202
    assert _uploads(sandbox_client) == 1


def test_error_fault_regex_and_method(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults([{"path": r"/api/v1/annotations/\d+$", "kind": "error", "status": 503}])
    resp = sandbox_client.get("/v1/annotations/1")
    assert resp.status_code == 503
    assert resp.json() == {"detail": "Service Unavailable.", "code": "service_unavailable"}
    assert sandbox_client.get("/v1/annotations").status_code == 200
    sandbox.set_faults(
        [{"method": "GET", "path": "/api/v1/queues", "kind": "error", "status": 500, "times": 1}]
    )
    err = sandbox_client.get("/v1/queues")
    assert err.status_code == 500 and err.json() == {"detail": "Server error.", "code": "error"}
    assert sandbox_client.get("/v1/queues").status_code == 200
    sandbox.clear_faults()
    assert sandbox_client.get("/v1/annotations/1").status_code == 404


def test_drop_before_does_not_process(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "drop_before", "times": 1}]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
    assert _uploads(sandbox_client) == 0
    assert (
        sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")}).status_code
        == 202
    )


def test_drop_after_processes_request(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "drop_after", "times": 1}]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
    assert _uploads(sandbox_client) == 1  # the upload happened; the client never saw it


def test_probability_zero_never_fires(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.set_faults([{"path": "/api/", "kind": "error", "status": 502, "probability": 0.0}])
    assert all(sandbox_client.get("/v1/queues").status_code == 200 for _ in range(5))


def test_invalid_fault_rules_400(sandbox: SandboxServer) -> None:
    for rules in ([{"kind": "explode"}], [{"kind": "error", "path": "("}], "nope"):
        resp = httpx.post(f"{sandbox.url}/_sandbox/faults", json={"rules": rules})
        assert resp.status_code == 400


def test_global_rate_limit(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.settings(rate_limit_per_s=5)
    codes = [sandbox_client.get("/v1/queues").status_code for _ in range(12)]
    assert codes[:5] == [200] * 5
    limited = [c for c in codes if c == 429]
    assert limited
    resp = sandbox_client.get("/v1/queues")
    if resp.status_code == 429:
        assert resp.json() == RATE_LIMITED
        assert int(resp.headers["Retry-After"]) >= 1
    sandbox.settings(rate_limit_per_s=None)
    assert all(sandbox_client.get("/v1/queues").status_code == 200 for _ in range(10))


def test_stats_by_route_template(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.reset_stats()
    sandbox_client.get("/v1/queues/1")
    sandbox_client.get("/v1/queues/2/")
    sandbox_client.get("/v1/annotations")
    sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
    stats = sandbox.stats()
    assert stats["requests"]["GET /api/v1/queues/{id:int}"] == 2
    assert stats["requests"]["GET /api/v1/annotations"] == 1
    assert stats["requests"]["POST /api/v1/uploads"] == 1
    assert stats["total"] == 4
    assert stats["statuses"]["200"] == 3 and stats["statuses"]["202"] == 1
    sandbox.reset_stats()
    assert sandbox.stats()["total"] == 0
