"""``rossflow setup``: block types and documents from a YAML file or ROSSFLOW_* variables."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from rossflow.setup import (
    EXAMPLE_CONFIG,
    SetupError,
    apply,
    build_blocks,
    config_from_env,
    load_config,
    merge,
)
from rossflow.setup import run as setup_cli

CONFIG = """
rossum:
  {rossum}:
    base_url: http://127.0.0.1:1/api
    username: svc@example.com
    password: ${{TEST_ROSSUM_PASSWORD}}
rest:
  {erp}:
    base_url: http://erp.local
    auth: bearer
    token: ${{TEST_ERP_TOKEN:-fallback-token}}
sftp:
  {sftp}:
    host: 127.0.0.1
    port: 2222
    username: rossflow
    password: pw
s3:
  {s3}:
    bucket_name: inbox
    endpoint_url: http://127.0.0.1:9000
    aws_access_key_id: key
    aws_secret_access_key: secret
ingest_sources:
  {src}-sftp:
    sftp_server: {sftp}
    directory: inbox
    rules: [{{queue_id: 1, pattern: "*.pdf"}}]
"""
# (one Ingest Source only: Prefect renders the block's JSON schema dozens of times per save,
# seconds of CPU for a source; the S3 variant is validated in test_example_config_is_valid)


def _names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {k: f"t-{k}-{tag}" for k in ("rossum", "erp", "sftp", "s3", "src")}


def test_example_config_is_valid(tmp_path: Path) -> None:
    env = {
        "ROSSUM_PASSWORD": "p",
        "ERP_TOKEN": "t",
        "SFTP_PASSWORD": "s",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
    }
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE_CONFIG)
    planned = build_blocks(load_config(path, env))
    assert [f"{s}.{n}" for s, n, _ in planned] == [
        "rossum.rossum",
        "rest.erp",
        "sftp.partner-sftp",
        "s3.inbox-credentials",
        "s3.inbox",
        "secrets.pipeline-secrets",
        "ingest_sources.sftp-inbox",
        "ingest_sources.s3-inbox",
    ]


def test_missing_variable_and_bad_fields_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rossum:\n  r:\n    base_url: ${NOPE_NOT_SET}\n")
    with pytest.raises(SetupError, match="NOPE_NOT_SET is not set"):
        load_config(path, {})
    path.write_text("rest:\n  erp:\n    auth: bearer\n")
    with pytest.raises(SetupError, match=r"rest\.erp: base_url: Field required"):
        build_blocks(load_config(path, {}))
    path.write_text("rossums:\n  r: {}\n")
    with pytest.raises(SetupError, match="unknown section"):
        load_config(path, {})


def test_env_only_config() -> None:
    config = config_from_env(
        {
            "ROSSFLOW_ROSSUM_URL": "https://acme.rossum.app/api",
            "ROSSFLOW_ROSSUM_USERNAME": "u",
            "ROSSFLOW_ROSSUM_PASSWORD": "p",
            "ROSSFLOW_ERP_URL": "https://erp",
            "ROSSFLOW_ERP_TOKEN": "tok",
            "ROSSFLOW_SFTP_HOST": "sftp.local",
            "ROSSFLOW_SFTP_USERNAME": "me",
            "ROSSFLOW_SFTP_PASSWORD": "pw",
            "ROSSFLOW_INGEST_SFTP_DIR": "inbox",
            "ROSSFLOW_INGEST_QUEUE": "7",
        }
    )
    assert config["rossum"]["rossum"]["base_url"] == "https://acme.rossum.app/api"
    assert config["rest"]["erp"]["auth"] == "bearer"
    assert config["ingest_sources"]["sftp-inbox"]["rules"] == [{"queue_id": 7, "pattern": "**"}]
    planned = build_blocks(config)
    assert [n for _, n, _ in planned] == ["rossum", "erp", "sftp", "sftp-inbox"]
    # a file wins over the environment for the blocks it names
    merged = merge({"rest": {"erp": {"base_url": "https://file"}}}, config)
    assert merged["rest"]["erp"] == {"base_url": "https://file"}
    assert "rossum" in merged["rossum"]


async def test_setup_saves_blocks_and_is_idempotent(prefect_harness, tmp_path: Path) -> None:
    from prefect_aws import S3Bucket

    from blocks import IngestSource, RestTarget, RossumCredentials

    names = _names()
    path = tmp_path / "rossflow.yaml"
    path.write_text(CONFIG.format(**names))
    env = {"TEST_ROSSUM_PASSWORD": "first"}
    saved = await apply(load_config(path, env))
    assert f"rossum-credentials/{names['rossum']}" in saved
    assert len(saved) == 6  # 5 + the S3 credentials
    creds = await RossumCredentials.aload(names["rossum"])
    assert creds.password.get_secret_value() == "first"
    assert (await RestTarget.aload(names["erp"])).token.get_secret_value() == "fallback-token"
    source = await IngestSource.aload(f"{names['src']}-sftp")
    assert source.sftp_server.port == 2222
    bucket = await S3Bucket.aload(names["s3"])
    assert bucket.credentials.aws_client_parameters.endpoint_url == "http://127.0.0.1:9000"

    # again, with a changed value: overwritten in place, nothing else changes
    again = await apply(load_config(path, {"TEST_ROSSUM_PASSWORD": "second"}), register=False)
    assert again == saved
    creds = await RossumCredentials.aload(names["rossum"])
    assert creds.password.get_secret_value() == "second"


async def test_source_may_reference_a_block_saved_earlier(prefect_harness, tmp_path) -> None:
    from blocks import IngestSource, SftpServer

    name = f"t-sftp-{uuid.uuid4().hex[:6]}"
    await SftpServer(host="h", username="u", password="p").asave(name, overwrite=True)
    path = tmp_path / "c.yaml"
    path.write_text(f"ingest_sources:\n  {name}-src:\n    sftp_server: {name}\n")
    await apply(load_config(path, {}), register=False)
    assert (await IngestSource.aload(f"{name}-src")).sftp_server.host == "h"
    path.write_text("ingest_sources:\n  x-src:\n    sftp_server: no-such-block\n")
    with pytest.raises(SetupError, match="no-such-block"):
        await apply(load_config(path, {}), register=False)


def test_check_mode_saves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith("ROSSFLOW_"):
            monkeypatch.delenv(key)
    path = tmp_path / "c.yaml"
    path.write_text("rest:\n  erp-check:\n    base_url: http://erp\n")
    assert setup_cli(["--config", str(path), "--check"]) == 0
    assert "ok  rest.erp-check" in capsys.readouterr().out
    path.write_text("rest:\n  erp-check:\n    auth: nope\n")
    assert setup_cli(["--config", str(path), "--check"]) == 2
    assert "rest.erp-check" in capsys.readouterr().err
