"""``rossflow doctor`` against a real installation: the session's Prefect server with real
deployments and blocks, the sandbox, the ERP stand-in, SFTP, S3 and the webhook receiver."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from rossflow.doctor import FAIL, OK, Check, diagnose, queue_export_check
from rossflow.doctor import run as doctor_cli
from rossflow.localstack.erp import ErpServer
from sandbox.server import SandboxServer
from tests.fixtures.servers import SftpServerInfo
from tests.scaleout.processes import free_port

pytestmark = pytest.mark.usefixtures("prefect_harness")

PIPELINE = """
name: doctor-check
steps:
  - name: render
    type: template
    outputs:
      - {{key: doc, format: json, template: '{{"id": {{{{ annotation.id }}}}}}'}}
  - name: post
    type: rest
    after: [render]
    target: {erp}
    export_reference_key: doc
    request: {{url: /api/invoices, method: POST, content: "#{{file_content}}"}}
  - name: archive
    type: sftp
    after: [post]
    target: {sftp}
    export_rules:
      - path_to_directory: "/archive"
        export_object_configurations:
          - {{type: custom_format, export_reference_key: doc, filename_template: "{{annotation_id}}.json"}}
"""


class Install:
    """Blocks + deployments named uniquely for one test on the shared Prefect server."""

    def __init__(self, tag: str, tmp_path: Path) -> None:
        self.rossum = f"doctor-rossum-{tag}"
        self.erp = f"doctor-erp-{tag}"
        self.sftp = f"doctor-sftp-{tag}"
        self.source = f"doctor-s3-inbox-{tag}"
        self.export_name = f"doctor-export-{tag}"
        self.ingest_name = f"doctor-ingest-{tag}"
        self.pipeline = tmp_path / "pipeline.yaml"
        self.pipeline.write_text(PIPELINE.format(erp=self.erp, sftp=self.sftp))

    @property
    def export(self) -> str:
        return f"rossum-export/{self.export_name}"

    @property
    def ingest(self) -> str:
        return f"rossflow-ingest/{self.ingest_name}"


async def save_rossum(
    install: Install, sandbox: SandboxServer, password: str | None = None
) -> None:
    from blocks import RossumCredentials

    await RossumCredentials(
        base_url=sandbox.api_url,
        username=sandbox.username,
        password=SecretStr(password or sandbox.password),
        rate_limit_per_s=None,
        max_attempts=1,
    ).asave(install.rossum, overwrite=True)


async def save_erp(install: Install, url: str) -> None:
    from blocks import RestTarget

    await RestTarget(base_url=url).asave(install.erp, overwrite=True)


async def apply_export(install: Install, queue: int) -> None:
    from deployments.serve import export_deployment

    deployment = await export_deployment(
        [queue], str(install.pipeline), rossum=install.rossum, interval_s=None, coalesce_s=None
    )
    deployment.name = install.export_name
    await deployment.apply()


@pytest.fixture
def install(
    tmp_path: Path,
    sandbox: SandboxServer,
    erp_server: ErpServer,
    sftp_server: SftpServerInfo,
    s3_bucket: Any,
) -> Install:
    from blocks import SftpServer
    from blocks.sources import IngestSource

    inst = Install(uuid.uuid4().hex[:8], tmp_path)
    asyncio.run(save_rossum(inst, sandbox))
    asyncio.run(save_erp(inst, erp_server.url))
    SftpServer(
        host=sftp_server.host,
        port=sftp_server.port,
        username=sftp_server.username,
        password=SecretStr(sftp_server.password),
        known_hosts=sftp_server.known_hosts,
    ).save(inst.sftp, overwrite=True)
    IngestSource(s3_bucket=s3_bucket, directory="inbox", rules=[]).save(inst.source, overwrite=True)
    return inst


@pytest.fixture
def receiver(tmp_path: Path, sandbox: SandboxServer) -> Any:
    """The webhook receiver, with a signed sandbox hook on queue 1 pointing at it."""
    from rossflow.webhook.app import WebhookSettings
    from rossflow.webhook.cli import WebhookServer

    settings = WebhookSettings(
        secrets=["doctor-secret"],
        prefect_api_url=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:1/api"),
        dedup_path=str(tmp_path / "dedup.db"),
    )
    with WebhookServer(settings) as server:
        token = sandbox.login()
        with httpx.Client(
            base_url=sandbox.api_url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            client.post(
                "/v1/hooks",
                json={
                    "name": "rossflow",
                    "type": "webhook",
                    "queues": [f"{sandbox.api_url}/v1/queues/1"],
                    "events": ["annotation_status"],
                    "config": {"url": server.hook_url, "secret": "doctor-secret"},
                    "active": True,
                },
            ).raise_for_status()
        yield server


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def failures(checks: list[Check]) -> list[str]:
    return [c.line() for c in checks if c.status == FAIL]


async def test_doctor_all_pass_then_each_fault_has_its_own_line(
    install: Install, receiver: Any, sandbox: SandboxServer, erp_server: ErpServer
) -> None:
    from deployments.serve import ingest_deployment

    await apply_export(install, queue=1)
    ingest = await ingest_deployment(
        [install.source], rossum=install.rossum, name=install.ingest_name
    )
    await ingest.apply()

    checks = await diagnose(install.export)
    assert failures(checks) == [], "\n".join(c.line() for c in checks)
    names = by_name(checks)
    assert names["Prefect API"].status == OK
    assert names[f"deployment {install.export}"].status == OK
    assert names[f"block {install.rossum}"].status == OK
    assert names[f"Rossum login ({install.rossum})"].status == OK
    assert names["queue 1 (Invoices)"].status == OK
    assert names["webhook"].status == OK and receiver.hook_url in names["webhook"].detail
    assert names[f"ERP ({install.erp})"].status == OK
    assert names[f"SFTP ({install.sftp})"].status == OK
    assert "host key known" in names[f"SFTP ({install.sftp})"].detail

    checks = await diagnose(install.ingest)
    assert failures(checks) == [], "\n".join(c.line() for c in checks)
    assert by_name(checks)[f"S3 ({install.source})"].status == OK

    # 1. A wrong password: the login line says so and names the block to fix.
    await save_rossum(install, sandbox, password="wrong-password")
    bad = by_name(await diagnose(install.export))[f"Rossum login ({install.rossum})"]
    assert bad.status == FAIL
    assert "refused the login" in bad.detail and "HTTP 401" in bad.detail, bad.line()
    assert f"Rossum Credentials block '{install.rossum}'" in bad.fix
    await save_rossum(install, sandbox)

    # 2. A default queue: no confirmed state, no export hook → nothing will ever be exported.
    await apply_export(install, queue=2)
    checks = await diagnose(install.export)
    queue = by_name(checks)["queue 2 (Invoices (auto-export))"]
    assert queue.status == FAIL
    assert "use_confirmed_state is off" in queue.detail
    assert "Nothing will ever be exported" in queue.detail
    assert '"use_confirmed_state": true' in queue.fix
    assert [c.name for c in checks if c.status == FAIL] == [queue.name]
    await apply_export(install, queue=1)

    # 3. An ERP that does not answer.
    dead = f"http://127.0.0.1:{free_port()}"
    await save_erp(install, dead)
    checks = await diagnose(install.export)
    erp = by_name(checks)[f"ERP ({install.erp})"]
    assert erp.status == FAIL and dead in erp.detail and "does not answer" in erp.detail
    assert f"REST Target block '{install.erp}'" in erp.fix
    assert [c.name for c in checks if c.status == FAIL] == [erp.name]


def test_doctor_cli_prints_one_line_per_check_and_exits_1_on_failure(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(apply_export(install, queue=2))
    code = doctor_cli(["--deployment", install.export])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  queue 2" in out and "fix: PATCH" in out
    assert "ok    Rossum login" in out
    assert "rossflow doctor:" in out and ", 1 failed" in out

    code = doctor_cli(["--deployment", "rossum-export/no-such-deployment"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  deployment rossum-export/no-such-deployment" in out


def test_queue_check_with_export_hook_but_no_confirmed_state() -> None:
    hook = {
        "id": 7,
        "name": "SFTP export",
        "active": True,
        "events": ["annotation_content.export"],
        "queues": ["https://x.rossum.app/api/v1/queues/5"],
    }
    queue = {"id": 5, "name": "AP", "use_confirmed_state": False}
    check = queue_export_check(queue, [hook], "https://x.rossum.app/api")
    assert check.status == FAIL and "'SFTP export'" in check.detail
    assert "never sees them" in check.detail
    other_queue = {**hook, "queues": ["https://x.rossum.app/api/v1/queues/6"]}
    check = queue_export_check(queue, [other_queue], "https://x.rossum.app/api")
    assert "Nothing will ever be exported" in check.detail
    check = queue_export_check({**queue, "use_confirmed_state": True}, [], "")
    assert check.status == OK
