"""The local stand-ins themselves: ERP control API, SFTP confinement, port handling."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import paramiko
import pytest

from rossflow.localstack.erp import ErpServer
from rossflow.localstack.s3_server import S3Server
from rossflow.localstack.uvicorn_thread import PortInUseError
from tests.fixtures.servers import SftpServerInfo


def test_erp_control_api_over_http(erp_server: ErpServer) -> None:
    with httpx.Client(base_url=erp_server.url) as http:
        config = http.post(
            "/_erp/config",
            json={
                "default": {"status": 200, "body": {"doc": "{{id}}", "key": "{{idempotency_key}}"}},
                "routes": {"/api/ping": {"status": 204, "body": None}},
            },
        ).json()
        assert config["default"]["status"] == 200 and config["latency_s"] == 0.0
        answer = http.post("/api/orders", json={"a": 1}, headers={"Idempotency-Key": "k1"})
        assert answer.status_code == 200
        assert answer.json() == {"doc": "ERP-000001", "key": "k1"}
        assert http.post("/api/ping", content=b"").status_code == 204
        assert (
            http.post(
                "/api/orders", content=b"{oops", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        http.patch("/_erp/config", json={"latency_s": 0.01})
        assert http.get("/_erp/config").json()["routes"] == {
            "/api/ping": {"status": 204, "body": None}
        }
        stats = http.get("/_erp/stats").json()
        assert stats == {
            "requests": 3,
            "documents": 2,  # every new 2xx answer counts as an accepted document
            "duplicates": 0,
            "token_requests": 0,
            "by_status": {"200": 1, "204": 1, "400": 1},
            "max_in_flight": 1,  # one request after the other
        }
        received = http.get("/_erp/received").json()
        assert [r["path"] for r in received] == ["/api/orders", "/api/ping", "/api/orders"]
        assert received[0]["idempotency_key"] == "k1" and received[0]["document_id"] == "ERP-000001"
        assert http.delete("/_erp/received").status_code == 204
        assert http.get("/_erp/received").json() == []
        assert http.get("/_erp/stats").json()["requests"] == 0


def test_erp_script_path_filter_and_oauth_errors(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 500, "path": "/api/attachments", "times": 1}]})
    with httpx.Client(base_url=erp_server.url) as http:
        assert http.post("/api/invoices", json={}).status_code == 201
        assert http.post("/api/attachments", json={}).status_code == 500
        assert http.post("/api/attachments", json={}).status_code == 201
        bad_grant = http.post("/oauth/token", data={"grant_type": "password"})
        assert (
            bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"
        )
        token = http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "rossflow",
                "client_secret": "secret",
            },
        ).json()
        assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
        assert token["access_token"]


def test_erp_port_in_use_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=str(port)):
            ErpServer(port=port)
        with pytest.raises(PortInUseError, match=str(port)):
            S3Server(port=port)


def test_sftp_server_refuses_paths_outside_its_root(
    sftp_server: SftpServerInfo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("nope")
    (sftp_server.root / "escape").symlink_to(outside)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        sftp_server.host,
        sftp_server.port,
        username=sftp_server.username,
        password=sftp_server.password,
        allow_agent=False,
        look_for_keys=False,
    )
    try:
        sftp = client.open_sftp()
        with pytest.raises(PermissionError):
            sftp.listdir("/escape")
        with pytest.raises(PermissionError):
            sftp.open("/escape/secret.txt").read()
        sftp.open("/../../x.txt", "wb").close()  # ".." is clamped at the root
        assert (sftp_server.root / "x.txt").exists()
        assert sftp.normalize("..") == "/"
    finally:
        client.close()


def test_sftp_known_hosts_line(sftp_server: SftpServerInfo) -> None:
    line = sftp_server.server.known_hosts_line()
    host, algorithm, blob = line.split()
    assert host == f"[127.0.0.1]:{sftp_server.port}" and algorithm == "ssh-ed25519"
    assert blob.startswith("AAAA")


def test_sftp_host_key_file_is_stable(tmp_path: Path) -> None:
    from rossflow.localstack.sftp_server import LocalSftpServer

    key_path = tmp_path / "keys" / "host_ed25519"
    first = LocalSftpServer(tmp_path / "root", host_key_path=key_path).public_host_key()
    second = LocalSftpServer(tmp_path / "root", host_key_path=key_path).public_host_key()
    assert first == second and key_path.stat().st_mode & 0o777 == 0o600


def test_s3_server_exposes_fake_credentials(s3_server: S3Server) -> None:
    kwargs = s3_server.client_kwargs()
    assert kwargs["endpoint_url"].startswith("http://127.0.0.1:")
    assert s3_server.create_bucket("idempotent-bucket") == "idempotent-bucket"
    assert s3_server.create_bucket("idempotent-bucket") == "idempotent-bucket"
