"""Export-event mode at the receiver: the asynchronous hook protocol over durable jobs.

No Prefect here (a recording emitter stands in); the flow side is played by the job store and
:func:`rossflow.export.event_run.run_jobs`, the code the flow runs.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rossflow.webhook.app import WebhookSettings
from rossflow.webhook.cli import WebhookServer
from rossflow.webhook.jobs import JobStore
from tests.triggers.helpers import SECRET, RecordingEmitter, post, signed

BASE = "https://example.rossum.app/api/v1"


def export_payload(annotation_id: int = 11, queue_id: int = 2, **extra: Any) -> dict[str, Any]:
    """An ``annotation_content.export`` body as Rossum sends it (content tree included)."""
    return {
        "request_id": str(uuid.uuid4()),
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "base_url": "https://example.rossum.app",
        "rossum_authorization_token": "tok-do-not-store",
        "hook": f"{BASE}/hooks/5",
        "settings": {},
        "secrets": {"password": "do-not-store"},
        "action": "export",
        "event": "annotation_content",
        "updated_datapoints": [],
        "annotation": {
            "id": annotation_id,
            "url": f"{BASE}/annotations/{annotation_id}",
            "queue": f"{BASE}/queues/{queue_id}",
            "status": "exporting",
            "document": f"{BASE}/documents/{annotation_id + 100}",
            "content": [
                {
                    "id": 1,
                    "category": "section",
                    "schema_id": "basic_info",
                    "children": [
                        {
                            "id": 2,
                            "category": "datapoint",
                            "schema_id": "invoice_id",
                            "content": {"value": f"INV-{annotation_id}"},
                        }
                    ],
                }
            ],
        },
        "document": {
            "id": annotation_id + 100,
            "url": f"{BASE}/documents/{annotation_id + 100}",
            "original_file_name": f"invoice-{annotation_id}.pdf",
        },
        **extra,
    }


@contextmanager
def receiver(tmp_path: Path, **settings: Any) -> Iterator[tuple[WebhookServer, RecordingEmitter]]:
    settings.setdefault("secrets", [SECRET])
    settings.setdefault("jobs_path", str(tmp_path / "jobs.db"))
    emitter = RecordingEmitter()
    server = WebhookServer(WebhookSettings(**settings), emitter=emitter).start()
    try:
        yield server, emitter
    finally:
        server.stop()


def finish_all(tmp_path: Path, *, ok: bool = True, text: str = "ERP document 1") -> list[Any]:
    """Play the flow: claim every pending job and store a result."""
    store = JobStore(tmp_path / "jobs.db")
    claimed = store.claim([2], lease_s=30)
    for job in claimed:
        kind = "info" if ok else "error"
        store.finish(
            job.job_id,
            job.generation,
            ok=ok,
            result={"messages": [{"type": kind, "content": text}], "operations": []},
        )
    store.close()
    return claimed


def test_export_call_answers_202_location_then_polling_gives_201(tmp_path: Path) -> None:
    with receiver(tmp_path) as (server, emitter):
        payload = export_payload()
        resp = post(server.hook_url, payload)
        assert resp.status_code == 202, resp.text
        location = resp.headers["location"]
        assert location.startswith(server.hook_url + "/jobs/")
        (event,) = emitter.events
        assert event.event == "rossum.annotation.export_requested"
        assert event.related[0]["prefect.resource.id"] == "rossum.queue.2"
        assert httpx.get(location).status_code == 202
        (job,) = finish_all(tmp_path)
        # credentials of the call are never stored
        assert "rossum_authorization_token" not in job.payload and "secrets" not in job.payload
        assert job.payload["annotation"]["content"] == payload["annotation"]["content"]
        done = httpx.get(location)
        assert done.status_code == 201
        assert done.json()["messages"][0]["content"] == "ERP document 1"
        # Rossum retries the same call (e.g. its polling failed): the stored answer, nothing new
        again = post(server.hook_url, payload)
        assert again.status_code == 200 and again.json() == done.json()
        assert len(emitter.events) == 1
        assert httpx.get(server.hook_url + "/jobs/" + uuid.uuid4().hex).status_code == 404


def test_same_content_reuses_the_job_and_a_failed_job_reopens(tmp_path: Path) -> None:
    with receiver(tmp_path) as (server, _):
        first = export_payload()
        resp = post(server.hook_url, first)
        second = {**copy.deepcopy(first), "request_id": str(uuid.uuid4())}
        attached = post(server.hook_url, second)
        assert attached.headers["location"] == resp.headers["location"]  # same job
        finish_all(tmp_path, ok=False, text="[post] HTTP 422")
        assert httpx.get(resp.headers["location"]).json()["messages"][0]["type"] == "error"
        # PATCH exporting in Rossum = a new call for the failed job: it runs again
        retry = {**copy.deepcopy(first), "request_id": str(uuid.uuid4())}
        reopened = post(server.hook_url, retry)
        assert reopened.status_code == 202
        assert reopened.headers["location"] == resp.headers["location"]
        assert httpx.get(reopened.headers["location"]).status_code == 202
        (job,) = finish_all(tmp_path)
        assert job.generation == 2
        assert httpx.get(reopened.headers["location"]).status_code == 201
        # changed content: a new job
        changed = export_payload()
        changed["annotation"]["content"][0]["children"][0]["content"]["value"] = "INV-NEW"
        assert post(server.hook_url, changed).headers["location"] != resp.headers["location"]


def test_fast_path_answers_200_when_done_in_time(tmp_path: Path) -> None:
    import threading

    with receiver(tmp_path, fast_path_s=5.0) as (server, _):
        timer = threading.Timer(0.5, finish_all, args=(tmp_path,))
        timer.start()
        resp = post(server.hook_url, export_payload())
        timer.join()
        assert resp.status_code == 200
        assert resp.json()["messages"][0]["content"] == "ERP document 1"


def test_dead_worker_job_is_queued_again_when_polled(tmp_path: Path) -> None:
    with receiver(tmp_path) as (server, emitter):
        location = post(server.hook_url, export_payload()).headers["location"]
        store = JobStore(tmp_path / "jobs.db")
        (job,) = store.claim([2], lease_s=0.2)  # a worker that dies holding the job
        time.sleep(0.4)
        assert httpx.get(location).status_code == 202
        assert len(emitter.events) == 2  # emitted again for a new run
        (again,) = store.claim([2], lease_s=30)
        assert again.job_id == job.job_id
        store.close()


def test_unclaimed_job_is_answered_with_an_error(tmp_path: Path) -> None:
    with receiver(tmp_path, claim_timeout_s=0.3) as (server, _):
        location = post(server.hook_url, export_payload(queue_id=7)).headers["location"]
        time.sleep(0.5)
        resp = httpx.get(location)
        assert resp.status_code == 201
        (message,) = resp.json()["messages"]
        assert message["type"] == "error" and "queue 7" in message["content"]


def test_queue_without_pipeline_gets_an_error_message_naming_it(tmp_path: Path) -> None:
    with receiver(tmp_path, export_queues=[2]) as (server, emitter):
        resp = post(server.hook_url, export_payload(queue_id=9))
        assert resp.status_code == 200
        (message,) = resp.json()["messages"]
        assert message["type"] == "error"
        assert "queue 9 has no export pipeline" in message["content"]
        assert not emitter.events


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p.pop("annotation"), "without an 'annotation' object"),
        (lambda p: p["annotation"].pop("queue"), "needs 'id'"),
        (lambda p: p["annotation"].update(content="x"), "must be the content tree"),
        (lambda p: p.pop("request_id"), "request_id missing"),
    ],
)
def test_malformed_export_call_is_400(tmp_path: Path, mutate: Any, reason: str) -> None:
    with receiver(tmp_path) as (server, emitter):
        payload = export_payload()
        mutate(payload)
        resp = post(server.hook_url, payload)
        assert resp.status_code == 400
        assert reason in resp.json()["reason"]
        assert not emitter.events


def test_bad_signature_is_401(tmp_path: Path) -> None:
    with receiver(tmp_path) as (server, emitter):
        body, headers = signed(export_payload(), secret="wrong")
        assert httpx.post(server.hook_url, content=body, headers=headers).status_code == 401
        body, headers = signed(export_payload(), which="sha1")  # legacy signature alone: fine
        assert httpx.post(server.hook_url, content=body, headers=headers).status_code == 202
        body, _ = signed(export_payload())
        unsigned = httpx.post(
            server.hook_url, content=body, headers={"Content-Type": "application/json"}
        )
        assert unsigned.status_code == 401
        assert len(emitter.events) == 1


def test_without_job_store_the_call_gets_an_actionable_error(tmp_path: Path) -> None:
    with receiver(tmp_path, jobs_path=None) as (server, _):
        resp = post(server.hook_url, export_payload())
        assert resp.status_code == 200
        assert "--jobs-db" in resp.json()["messages"][0]["content"]


# ------------------------------------------------------------------ the run (no Prefect)

RUN_PIPELINE = """
name: two-calls
defaults: {retries: 0}
steps:
  - name: render
    type: template
    outputs:
      - {key: doc, format: json, template: '{"number": {{ field.invoice_id | tojson }}}'}
  - name: invoice
    type: rest
    after: [render]
    export_reference_key: doc
    request: {url: "ERP/api/invoices", method: POST, content: "#{file_content}"}
  - name: payment
    type: rest
    after: [invoice]
    request: {url: "ERP/api/payments", method: POST, content: {"n": 1}}
"""


async def _run_once(tmp_path: Path, pipeline: str, erp_url: str) -> list[Any]:
    from rossflow.artifacts import ArtifactStore
    from rossflow.export.event_run import EventExportEngine, run_jobs
    from rossflow.export.loading import load_pipeline
    from rossflow.ledger import Ledger

    store = JobStore(tmp_path / "jobs.db")
    claimed = store.claim([2], lease_s=30)
    ledger = Ledger(tmp_path / "ledger.db")
    async with EventExportEngine(
        load_pipeline(pipeline.replace("ERP", erp_url)),
        None,  # type: ignore[arg-type]
        ledger=ledger,
        artifacts=ArtifactStore(tmp_path / "artifacts"),
    ) as engine:
        outcomes = await run_jobs(engine, claimed)
    for o in outcomes:
        store.finish(o.job_id, o.generation, ok=o.ok, result=o.result)
    ledger.close()
    store.close()
    return outcomes


@pytest.mark.parametrize("force", ["none", "call", "pipeline"])
async def test_retry_reuses_succeeded_steps_unless_forced(
    tmp_path: Path, erp_server: Any, force: str
) -> None:
    import asyncio

    pipeline = RUN_PIPELINE
    if force == "pipeline":
        pipeline = pipeline.replace(
            "defaults: {retries: 0}", "defaults: {retries: 0, resend_on_retry: true}"
        )
    erp_server.configure({"routes": {"POST /api/payments": {"status": 503, "body": "down"}}})
    with receiver(tmp_path) as (server, _):
        payload = export_payload()
        location = (await asyncio.to_thread(post, server.hook_url, payload)).headers["location"]
        (failed,) = await _run_once(tmp_path, pipeline, erp_server.url)
        assert not failed.ok
        error = failed.result["messages"][0]
        assert error["type"] == "error" and "[payment]" in error["content"]
        assert "503" in error["content"]
        assert len(failed.result["messages"]) == 2
        assert "invoice: delivered to" in failed.result["messages"][1]["content"]
        erp_server.configure({})
        retry = {**copy.deepcopy(payload), "request_id": str(uuid.uuid4())}
        if force == "call":
            retry["settings"] = {"force_resend": True}
        assert (await asyncio.to_thread(post, server.hook_url, retry)).status_code == 202
        (done,) = await _run_once(tmp_path, pipeline, erp_server.url)
        assert done.ok
        assert (await asyncio.to_thread(httpx.get, location)).status_code == 201
    invoices = [r for r in erp_server.received() if r["path"] == "/api/invoices"]
    assert len(invoices) == (1 if force == "none" else 2)
    texts = [m["content"] for m in done.result["messages"]]
    assert any("already delivered" in t for t in texts) == (force == "none")
