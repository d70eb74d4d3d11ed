"""Checklist 1-3: login, token schemes, expiry, logout, Basic auth."""

from __future__ import annotations

import re
import time

import httpx

from sandbox.server import SandboxServer
from tests.sandbox.helpers import INVOICE_TEXT

INVALID_TOKEN = {"detail": "Invalid token.", "code": "authentication_failed"}


def test_login_returns_40_hex_key_and_domain(sandbox: SandboxServer) -> None:
    resp = httpx.post(
        f"{sandbox.api_url}/v1/auth/login",
        json={"username": sandbox.username, "password": sandbox.password},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert re.fullmatch(r"[0-9a-f]{40}", body["key"])
    assert "domain" in body


def test_login_wrong_credentials_is_401(sandbox: SandboxServer) -> None:
    resp = httpx.post(
        f"{sandbox.api_url}/v1/auth/login", json={"username": sandbox.username, "password": "nope"}
    )
    assert resp.status_code == 401
    assert set(resp.json()) == {"detail", "code"}
    assert resp.json()["code"] == "authentication_failed"


def test_bearer_and_token_schemes_case_insensitive(
    sandbox: SandboxServer, sandbox_token: str
) -> None:
    for scheme in ("Bearer", "Token", "bearer", "token", "BEARER"):
        resp = httpx.get(
            f"{sandbox.api_url}/v1/queues", headers={"Authorization": f"{scheme} {sandbox_token}"}
        )
        assert resp.status_code == 200, scheme


def test_unknown_token_401_exact_body(sandbox: SandboxServer) -> None:
    resp = httpx.get(
        f"{sandbox.api_url}/v1/queues", headers={"Authorization": "Bearer " + "0" * 40}
    )
    assert resp.status_code == 401
    assert resp.json() == INVALID_TOKEN


def test_missing_credentials_403(sandbox: SandboxServer) -> None:
    resp = httpx.get(f"{sandbox.api_url}/v1/annotations")
    assert resp.status_code == 403
    assert resp.json() == {
        "detail": "Access to the requested resource is forbidden.",
        "code": "access_forbidden",
    }


def test_logout_invalidates_token(sandbox: SandboxServer, sandbox_token: str) -> None:
    headers = {"Authorization": f"Token {sandbox_token}"}
    resp = httpx.post(f"{sandbox.api_url}/v1/auth/logout", headers=headers)
    assert resp.status_code == 200
    assert resp.json() == {"detail": "Successfully logged out."}
    again = httpx.get(f"{sandbox.api_url}/v1/queues", headers=headers)
    assert again.status_code == 401
    assert again.json() == INVALID_TOKEN


def test_token_expires_after_max_lifetime(sandbox: SandboxServer) -> None:
    resp = httpx.post(
        f"{sandbox.api_url}/v1/auth/login",
        json={
            "username": sandbox.username,
            "password": sandbox.password,
            "max_token_lifetime_s": 3,
        },
    )
    headers = {"Authorization": f"Bearer {resp.json()['key']}"}
    # generous lifetime: on a loaded CI machine the first call may take a while
    assert httpx.get(f"{sandbox.api_url}/v1/queues", headers=headers).status_code == 200
    time.sleep(3.2)
    expired = httpx.get(f"{sandbox.api_url}/v1/queues", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == INVALID_TOKEN


def test_token_lifetime_setting(sandbox: SandboxServer) -> None:
    sandbox.settings(token_lifetime_s=0.2)
    headers = {"Authorization": f"Bearer {sandbox.login()}"}
    time.sleep(0.3)
    assert httpx.get(f"{sandbox.api_url}/v1/queues", headers=headers).status_code == 401


def test_basic_auth_on_upload_and_export_only(sandbox: SandboxServer) -> None:
    auth = (sandbox.username, sandbox.password)
    up = httpx.post(
        f"{sandbox.api_url}/v1/uploads?queue=1",
        auth=auth,
        files={"content": ("a.txt", INVOICE_TEXT.encode())},
    )
    assert up.status_code == 202
    exp = httpx.get(f"{sandbox.api_url}/v1/queues/1/export?format=json", auth=auth)
    assert exp.status_code == 200
    docs = httpx.post(
        f"{sandbox.api_url}/v1/documents",
        auth=auth,
        files={"content": ("x.pdf", b"%PDF-1.4 nothing")},
    )
    assert docs.status_code == 201
    assert docs.json()["annotations"] == []
    listing = httpx.get(f"{sandbox.api_url}/v1/annotations", auth=auth)
    assert listing.status_code == 401
    bad = httpx.post(
        f"{sandbox.api_url}/v1/uploads?queue=1",
        auth=(sandbox.username, "wrong"),
        files={"content": ("a.txt", b"x")},
    )
    assert bad.status_code == 401
    assert bad.json()["code"] == "authentication_failed"


def test_auth_user_returns_caller(sandbox: SandboxServer, sandbox_token: str) -> None:
    resp = httpx.get(
        f"{sandbox.api_url}/v1/auth/user", headers={"Authorization": f"Bearer {sandbox_token}"}
    )
    assert resp.status_code == 200
    assert resp.json()["username"] == sandbox.username
    assert resp.json()["organization"] == f"{sandbox.api_url}/v1/organizations/1"
