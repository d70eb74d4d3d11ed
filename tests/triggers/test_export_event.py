"""Export-event mode end to end, all real: the sandbox (queue 2, no confirmed state) calls its
``annotation_content.export`` hook → ``rossflow webhook`` (jobs) → Prefect event → deployment
trigger → runner → ``rossum-export-event`` flow run → ERP stand-in → result polled by the sandbox
→ ``exported`` / ``failed_export`` with the operations applied."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.export_event import export_event_deployment
from rossflow.localstack.erp import ErpServer
from rossflow.webhook.app import WebhookSettings
from rossflow.webhook.cli import WebhookServer
from rossflow.webhook.jobs import JobStore
from sandbox.server import SandboxServer
from tests.triggers.helpers import SECRET, wait_until
from tests.triggers.test_prefect import serving

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

QUEUE = 2  # seeded with use_confirmed_state: false

PIPELINE = """
name: erp-event
steps:
  - name: render
    type: template
    outputs:
      - key: invoice_json
        format: json
        template: >-
          {"number": {{ field.invoice_id | tojson }}, "annotation": {{ payload.annotation.id }},
           "file": {{ payload.document.original_file_name | tojson }}}
  - name: post_invoice
    type: rest
    after: [render]
    target: TARGET
    export_reference_key: invoice_json
    request: {url: /api/invoices, method: POST, content: "#{file_content}"}
  - name: keep_erp_id
    type: extract
    after: [post_invoice]
    sources:
      - source_step: post_invoice
        rules:
          - {value_path: body.id, target_schema_id: erp_document_id}
  - name: post_payment
    type: rest
    after: [keep_erp_id]
    target: TARGET
    request:
      url: /api/payments
      method: POST
      content: {"invoice": "@{erp_document_id}"}
"""


class Rig:
    def __init__(self, tmp: Path, erp: ErpServer, target: str) -> None:
        self.tmp = tmp
        self.erp = erp
        self.target = target
        self.jobs_db = str(tmp / "export-jobs.db")
        self.state_dir = str(tmp / "state")
        self.pipeline = tmp / "pipeline.yaml"
        self.pipeline.write_text(PIPELINE.replace("TARGET", target))
        self.port = 0
        self.server: WebhookServer | None = None

    def start_receiver(self) -> WebhookServer:
        from prefect.settings import PREFECT_API_URL

        settings = WebhookSettings(
            secrets=[SECRET],
            prefect_api_url=str(PREFECT_API_URL.value()),
            jobs_path=self.jobs_db,
            dedup_path=str(self.tmp / "dedup.db"),
        )
        self.server = WebhookServer(settings, port=self.port).start()
        self.port = self.server.port
        return self.server

    def forget(self) -> None:
        """Drop the jobs and ledger entries of earlier tests."""
        import sqlite3

        with sqlite3.connect(self.jobs_db) as db:
            db.execute("DELETE FROM export_jobs")
            db.execute("DELETE FROM export_job_calls")
        ledger = Path(self.state_dir) / "ledger.db"
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                for table in ("effects", "sequences", "sequence_heads"):
                    db.execute(f"DELETE FROM {table}")

    def stop_receiver(self) -> None:
        assert self.server is not None
        self.server.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from blocks import RestTarget

    tmp = tmp_path_factory.mktemp("export-event")
    with ErpServer() as erp:
        target = f"erp-{uuid.uuid4().hex[:8]}"
        asyncio.run(RestTarget(base_url=erp.url, max_attempts=3).asave(target, overwrite=True))
        rig = Rig(tmp, erp, target)
        rig.start_receiver()

        async def deployment() -> Any:
            return await export_event_deployment(
                [QUEUE],
                str(rig.pipeline),
                jobs_db=rig.jobs_db,
                state_dir=rig.state_dir,
                interval_s=None,
                lease_s=3.0,
            )

        with serving([asyncio.run(deployment())], poll_s=0.5):
            time.sleep(2)  # the triggers service loads the new automation
            yield rig
        if rig.server is not None:
            rig.stop_receiver()


def setup_hook(sandbox: SandboxServer, rig: Rig) -> str:
    """The export hook Rossum would have, pointing at the receiver; returns an API token."""
    assert rig.server is not None
    rig.forget()  # the sandbox is reset per test: annotation ids (and contents) repeat
    sandbox.settings(hook_poll_interval_s=0.2)
    rig.erp.reset()
    rig.erp.configure({})
    token = sandbox.login()
    created = httpx.post(
        f"{sandbox.api_url}/v1/hooks",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "name": "rossflow export",
            "queues": [f"{sandbox.api_url}/v1/queues/{QUEUE}"],
            "events": ["annotation_content.export"],
            "config": {"url": rig.server.hook_url, "secret": SECRET, "timeout_s": 30},
            "active": True,
        },
    )
    assert created.status_code == 201, created.text
    return token


def annotations(sandbox: SandboxServer, token: str, ids: list[int]) -> list[dict[str, Any]]:
    with httpx.Client(
        base_url=sandbox.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        return [client.get(f"/v1/annotations/{i}").json() for i in ids]


def wait_statuses(
    sandbox: SandboxServer, token: str, ids: list[int], wanted: set[str], timeout: float = 120
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        anns = annotations(sandbox, token, ids)
        return anns if all(a["status"] in wanted for a in anns) else None

    return wait_until(check, timeout, 0.5)


def posted(rig: Rig, path: str) -> list[dict[str, Any]]:
    return [r for r in rig.erp.received() if r.get("path") == path]


def erp_value(sandbox: SandboxServer, token: str, ann_id: int) -> Any:
    content = httpx.get(
        f"{sandbox.api_url}/v1/annotations/{ann_id}/content",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["content"]
    stack = list(content)
    while stack:
        node = stack.pop()
        if node.get("schema_id") == "erp_document_id":
            return node["content"]["value"]
        stack.extend(node.get("children") or [])
    return None


def test_all_succeed_with_write_back_and_no_rossum_requests(sandbox, rig: Rig) -> None:
    token = setup_hook(sandbox, rig)
    ids = sandbox.seed(queue=QUEUE, count=5, status="to_review")
    sandbox.reset_stats()
    sandbox.confirm_all(queue=QUEUE)
    sandbox.wait_idle(timeout=120)  # every hook call answered (after polling)
    stats = sandbox.stats()
    anns = wait_statuses(sandbox, token, ids, {"exported", "failed_export"})
    assert {a["status"] for a in anns} == {"exported"}, [a["messages"] for a in anns]
    # the ERP holds each invoice once, and the payment that used the extracted id
    invoices = posted(rig, "/api/invoices")
    assert len(invoices) == len(ids) and rig.erp.stats()["duplicates"] == 0
    assert len(posted(rig, "/api/payments")) == len(ids)
    # write-back rode on the answer's operations: Rossum applied them
    values = {erp_value(sandbox, token, i) for i in ids}
    assert all(v and v.startswith("ERP-") for v in values) and len(values) == len(ids)
    assert any("written back: erp_document_id" in m["content"] for m in anns[0]["messages"])
    # the only Rossum API request was the test's confirm_all (admin, not counted): none at all
    assert stats["total"] == 0, stats["requests"]


def test_erp_4xx_fails_export_with_the_message(sandbox, rig: Rig) -> None:
    token = setup_hook(sandbox, rig)
    rig.erp.configure(
        {"routes": {"POST /api/invoices": {"status": 422, "body": {"error": "vendor unknown"}}}}
    )
    ids = sandbox.seed(queue=QUEUE, count=2, status="to_review")
    sandbox.confirm_all(queue=QUEUE)
    anns = wait_statuses(sandbox, token, ids, {"failed_export", "exported"})
    for ann in anns:
        assert ann["status"] == "failed_export"
        (error,) = [m for m in ann["messages"] if m["type"] == "error"]
        text = error["content"]
        assert "[post_invoice]" in text and "HTTP 422" in text and "vendor unknown" in text
    assert posted(rig, "/api/payments") == []


def test_erp_5xx_then_success(sandbox, rig: Rig) -> None:
    token = setup_hook(sandbox, rig)
    rig.erp.configure({"script": [{"status": 503, "path": "/api/invoices", "times": 2}]})
    ids = sandbox.seed(queue=QUEUE, count=2, status="to_review")
    sandbox.confirm_all(queue=QUEUE)
    anns = wait_statuses(sandbox, token, ids, {"failed_export", "exported"})
    assert {a["status"] for a in anns} == {"exported"}, [a["messages"] for a in anns]
    created = [r for r in posted(rig, "/api/invoices") if r.get("status") == 201]
    assert len(created) == 2 and len(posted(rig, "/api/invoices")) == 4


def test_patch_exporting_retries_only_the_failed_step(sandbox, rig: Rig) -> None:
    token = setup_hook(sandbox, rig)
    rig.erp.configure({"routes": {"POST /api/payments": {"status": 503}}})
    ids = sandbox.seed(queue=QUEUE, count=2, status="to_review")
    sandbox.confirm_all(queue=QUEUE)
    anns = wait_statuses(sandbox, token, ids, {"failed_export", "exported"})
    assert {a["status"] for a in anns} == {"failed_export"}
    assert all("[post_payment]" in a["messages"][0]["content"] for a in anns)
    assert len(posted(rig, "/api/invoices")) == 2
    rig.erp.configure({})  # the payments endpoint is back
    for ann_id in ids:  # Rossum's "retry export"
        resp = httpx.patch(
            f"{sandbox.api_url}/v1/annotations/{ann_id}",
            headers={"Authorization": f"Bearer {token}"},
            json={"status": "exporting"},
        )
        assert resp.status_code == 200, resp.text
    anns = wait_statuses(sandbox, token, ids, {"failed_export", "exported"} - {"failed_export"})
    assert len(posted(rig, "/api/invoices")) == 2  # not delivered a second time
    assert len([r for r in posted(rig, "/api/payments") if r.get("status") == 201]) == 2
    reused = [m["content"] for m in anns[0]["messages"] if "already delivered" in m["content"]]
    assert reused and reused[0].startswith("post_invoice")


def test_receiver_restarted_mid_job(sandbox, rig: Rig) -> None:
    token = setup_hook(sandbox, rig)
    rig.erp.configure({"latency_s": 3.0})
    ids = sandbox.seed(queue=QUEUE, count=2, status="to_review")
    sandbox.confirm_all(queue=QUEUE)
    wait_until(lambda: JobStore(rig.jobs_db).counts().get("running"), 60, 0.1)
    rig.stop_receiver()  # Rossum's polls fail meanwhile (tolerated, not a polling failure)
    time.sleep(1.5)
    rig.start_receiver()
    anns = wait_statuses(sandbox, token, ids, {"failed_export", "exported"})
    assert {a["status"] for a in anns} == {"exported"}, [a["messages"] for a in anns]
    assert len(posted(rig, "/api/invoices")) == 2 and rig.erp.stats()["duplicates"] == 0


def test_worker_killed_mid_job_then_rossum_retries(sandbox, rig: Rig) -> None:
    """A worker claims the job, delivers, and dies before storing the result: Rossum's polling
    runs out, it calls again, the lease expires, another run reuses the recorded delivery."""
    from blocks import RestTarget
    from flows.export import load_pipeline_source
    from rossflow.artifacts import ArtifactStore
    from rossflow.export.event_run import EventExportEngine, run_jobs
    from rossflow.export.targets import Targets
    from rossflow.ledger import Ledger

    token = setup_hook(sandbox, rig)
    # Rossum gives up polling after 6 s and calls again (5 calls in all). The lease (4 s) ends in
    # the first call, so a second call is certain, and the calls leave a new run ~25 s to start and
    # finish after the lease expires (a shorter window failed on a loaded 2-CPU CI machine).
    sandbox.settings(hook_max_polling_time_s=6.0)
    ids = sandbox.seed(queue=QUEUE, count=1, status="to_review")
    store = JobStore(rig.jobs_db)
    sandbox.confirm_all(queue=QUEUE)
    claimed = wait_until(lambda: store.claim([QUEUE], lease_s=4.0), 20, 0.01)

    async def dying_worker() -> None:
        target = await RestTarget.aload(rig.target)
        ledger = Ledger(Path(rig.state_dir) / "ledger.db")
        async with EventExportEngine(
            load_pipeline_source(str(rig.pipeline)),
            None,  # type: ignore[arg-type]
            ledger=ledger,
            artifacts=ArtifactStore(rig.tmp / "dead-worker"),
            targets=Targets(rest={rig.target: target}),
        ) as engine:
            await run_jobs(engine, claimed)  # delivered; the result is never stored
        ledger.close()

    asyncio.run(dying_worker())
    assert len(posted(rig, "/api/invoices")) == 1
    (ann,) = wait_statuses(sandbox, token, ids, {"failed_export", "exported"})
    (record,) = [r for r in sandbox.hook_deliveries() if r["event"] == "annotation_content"]
    tried = [(a["at"], a["status_code"], a.get("body")) for a in record["attempts"]]
    assert ann["status"] == "exported", (ann["messages"], tried)
    assert len(posted(rig, "/api/invoices")) == 1  # the recorded delivery was reused
    assert rig.erp.stats()["duplicates"] == 0
    assert len(record["attempts"]) >= 2  # Rossum called again after its polling ran out
    store.close()
