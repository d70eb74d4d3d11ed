"""The webhook receiver over real HTTP (uvicorn on 127.0.0.1): signatures, bad input, replays.

The Prefect side is a recording emitter here, so each test sees exactly what would have been
emitted; tests/triggers/test_prefect.py covers the real Prefect server.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rossflow.webhook.app import WebhookSettings
from rossflow.webhook.cli import WebhookServer
from rossflow.webhook.cli import run as webhook_cli
from rossflow.webhook.events import STATUS_CHANGED, event_id
from rossflow.webhook.signature import verify
from sandbox.server import SandboxServer
from tests.triggers.helpers import SECRET, RecordingEmitter, post, signed, status_payload


class Receiver:
    def __init__(self, server: WebhookServer, emitter: RecordingEmitter) -> None:
        self.server, self.emitter = server, emitter

    @property
    def url(self) -> str:
        return self.server.hook_url

    @property
    def events(self) -> list:
        return self.emitter.events


def _start(tmp_path: Path | None = None, **settings) -> tuple[WebhookServer, RecordingEmitter]:
    emitter = RecordingEmitter()
    settings.setdefault("secrets", [SECRET])
    server = WebhookServer(WebhookSettings(**settings), emitter=emitter).start()
    return server, emitter


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server, emitter = _start(max_body_bytes=64 * 1024)
    try:
        yield Receiver(server, emitter)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("which", ["both", "sha256", "sha1"])
def test_valid_signature_emits_one_event(receiver: Receiver, which: str) -> None:
    payload = status_payload(annotation_id=41, queue_id=7)
    resp = post(receiver.url, payload, which=which)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "status": "accepted",
        "event": STATUS_CHANGED,
        "event_id": str(event_id(payload["request_id"])),
    }
    assert len(receiver.events) == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing signature"),
        ({"X-Rossum-Signature-SHA256": "sha256=" + "0" * 64}, "signature mismatch"),
        ({"X-Elis-Signature": "sha1=" + "0" * 40}, "signature mismatch"),
        ({"X-Rossum-Signature-SHA256": "md5=abc"}, "malformed signature header"),
        ({"X-Rossum-Signature-SHA256": "deadbeef"}, "malformed signature header"),
    ],
)
def test_missing_or_wrong_signature_is_401(receiver: Receiver, headers, reason) -> None:
    body = json.dumps(status_payload()).encode()
    resp = httpx.post(
        receiver.url, content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert resp.status_code == 401
    assert reason in resp.json()["reason"]
    assert receiver.events == []


def test_wrong_secret_and_tampered_body_are_401(receiver: Receiver) -> None:
    assert post(receiver.url, status_payload(), secret="not-the-secret").status_code == 401
    body, headers = signed(status_payload())
    tampered = body.replace(b'"confirmed"', b'"exported"')
    resp = httpx.post(receiver.url, content=tampered, headers=headers)
    assert resp.status_code == 401
    assert receiver.events == []


def test_sha256_decides_when_both_headers_are_sent(receiver: Receiver) -> None:
    body, headers = signed(status_payload())
    _, wrong = signed(status_payload(), secret="other")
    headers["X-Rossum-Signature-SHA256"] = wrong["X-Rossum-Signature-SHA256"]
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 401
    assert receiver.events == []


def test_rotated_secrets_are_all_accepted() -> None:
    server, emitter = _start(secrets=["old-secret", "new-secret"])
    try:
        assert post(server.hook_url, status_payload(), secret="old-secret").status_code == 200
        assert post(server.hook_url, status_payload(), secret="new-secret").status_code == 200
        assert post(server.hook_url, status_payload(), secret="third").status_code == 401
        assert len(emitter.events) == 2
    finally:
        server.stop()


def test_verify_is_case_insensitive_on_hex() -> None:
    body = b'{"a": 1}'
    _, headers = signed(body, which="sha256")
    upper = {"x-rossum-signature-sha256": headers["X-Rossum-Signature-SHA256"].upper()}
    upper["x-rossum-signature-sha256"] = "sha256=" + upper["x-rossum-signature-sha256"][7:]
    assert verify(upper, body, [SECRET]) is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"event": "annotation_status", "action": "changed"}).encode(), "request_id"),
        (
            json.dumps(
                {"request_id": "r1", "event": "annotation_status", "action": "changed"}
            ).encode(),
            "annotation",
        ),
        (
            json.dumps(
                {
                    "request_id": "r2",
                    "event": "annotation_status",
                    "action": "changed",
                    "annotation": {"id": 5, "status": "confirmed"},
                }
            ).encode(),
            "queue",
        ),
    ],
)
def test_malformed_body_is_400(receiver: Receiver, body: bytes, reason: str) -> None:
    signed_body, headers = signed(body)
    resp = httpx.post(receiver.url, content=signed_body, headers=headers)
    assert resp.status_code == 400
    assert reason in resp.json()["reason"]
    assert receiver.events == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(receiver: Receiver, content_type: str) -> None:
    body, headers = signed(status_payload(), content_type=content_type)
    if not content_type:
        headers.pop("Content-Type")
    resp = httpx.post(receiver.url, content=body, headers=headers)
    assert resp.status_code == 415
    assert receiver.events == []


def test_json_with_charset_is_accepted(receiver: Receiver) -> None:
    body, headers = signed(status_payload(), content_type="application/json; charset=utf-8")
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 200


def test_oversize_body_is_413_by_length_and_while_streaming(receiver: Receiver) -> None:
    payload = status_payload(padding="x" * (70 * 1024))  # limit is 64 KiB in this fixture
    body, headers = signed(payload)
    assert httpx.post(receiver.url, content=body, headers=headers).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted as read
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    resp = httpx.post(receiver.url, content=chunks(), headers=headers)
    assert resp.status_code == 413
    assert receiver.events == []


def test_oversize_limit_is_configurable() -> None:
    server, emitter = _start(max_body_bytes=200)
    try:
        assert post(server.hook_url, status_payload()).status_code == 413
        assert emitter.events == []
    finally:
        server.stop()


def test_unknown_event_is_ignored_with_200(receiver: Receiver) -> None:
    for event, action in [
        ("annotation_content", "initialize"),
        ("upload", "created"),
        (None, None),
    ]:
        payload = {"request_id": str(uuid.uuid4()), "event": event, "action": action}
        resp = post(receiver.url, payload)
        assert resp.status_code == 200
        assert resp.json()["status"] == "ignored"
    assert receiver.events == []
    assert receiver.server.counters()["ignored"] == 3


# ----------------------------------------------------------------------------- replays


def test_replayed_request_id_emits_once(receiver: Receiver) -> None:
    payload = status_payload()
    first = post(receiver.url, payload)
    second = post(receiver.url, payload)
    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "event_id": first.json()["event_id"]}
    assert len(receiver.events) == 1


def test_concurrent_replays_emit_once(receiver: Receiver) -> None:
    receiver.emitter.delay_s = 0.2  # the first one is still emitting when the others arrive
    payload = status_payload()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(receiver.url, payload), range(8)))
    statuses = sorted(a.json()["status"] for a in answers)
    assert [a.status_code for a in answers] == [200] * 8
    assert statuses == ["accepted"] + ["duplicate"] * 7
    assert len(receiver.events) == 1


def test_request_ids_survive_a_restart_with_sqlite(tmp_path: Path) -> None:
    db = str(tmp_path / "dedup.db")
    payload = status_payload()
    server, emitter = _start(dedup_path=db)
    try:
        assert post(server.hook_url, payload).json()["status"] == "accepted"
    finally:
        server.stop()
    server, emitter = _start(dedup_path=db)
    try:
        assert post(server.hook_url, payload).json()["status"] == "duplicate"
        assert emitter.events == []
    finally:
        server.stop()


def test_prefect_unavailable_is_503_and_the_retry_goes_through(receiver: Receiver) -> None:
    receiver.emitter.fail = True
    payload = status_payload()
    resp = post(receiver.url, payload)
    assert resp.status_code == 503  # Rossum retries 503 (spec §9.5)
    assert resp.headers["retry-after"] == "5"
    assert httpx.get(receiver.server.url + "/ready").status_code == 503
    receiver.emitter.fail = False
    resp = post(receiver.url, payload)  # Rossum's retry: same request_id, not a duplicate
    assert resp.json()["status"] == "accepted"
    assert len(receiver.events) == 1


# ----------------------------------------------------------------------------- the event


def test_event_shape_and_no_secrets_forwarded(receiver: Receiver) -> None:
    payload = status_payload(annotation_id=314521, queue_id=8236, status="confirmed")
    post(receiver.url, payload)
    (event,) = receiver.events
    assert event.event == "rossum.annotation.status_changed"
    assert event.id == event_id(payload["request_id"])
    assert event.resource.id == "rossum.annotation.314521"
    assert event.resource["rossum.annotation.status"] == "confirmed"
    assert event.resource["rossum.annotation.previous_status"] == "reviewing"
    assert event.resource["rossum.queue.id"] == "8236"
    assert event.resource.name == "invoice-314521.pdf"
    roles = {r.role: r.id for r in event.related}
    assert roles == {
        "queue": "rossum.queue.8236",
        "document": "rossum.document.314621",
        "hook": "rossum.hook.789",
    }
    assert event.payload["status"] == "confirmed"
    assert event.payload["request_id"] == payload["request_id"]
    dumped = event.model_dump_json()
    assert "do-not-forward" not in dumped
    assert payload["rossum_authorization_token"] not in dumped


def test_health(receiver: Receiver) -> None:
    post(receiver.url, status_payload())
    resp = httpx.get(receiver.server.url + "/health")
    assert resp.status_code == 200
    assert resp.json()["counters"]["emitted"] == 1
    assert httpx.get(receiver.server.url + "/ready").status_code == 200


def test_cli_refuses_to_start_without_a_secret(monkeypatch, capsys) -> None:
    monkeypatch.delenv("ROSSFLOW_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("ROSSFLOW_WEBHOOK_SECRET_FILE", raising=False)
    assert webhook_cli(["--port", "0", "--prefect-api-url", "http://127.0.0.1:9/api"]) == 2
    assert "no hook secret" in capsys.readouterr().err


def test_cli_names_a_port_in_use(tmp_path: Path, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = webhook_cli(
            [
                "--port",
                str(port),
                "--secret",
                "x",
                "--prefect-api-url",
                "http://127.0.0.1:9/api",
                "--dedup-db",
                str(tmp_path / "d.db"),
            ]
        )
    assert code == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the sandbox


def test_sandbox_hook_reaches_the_receiver_on_confirm(sandbox: SandboxServer) -> None:
    """Rossum sandbox → receiver: the real signature verifies, one event per status change."""
    server, emitter = _start()
    try:
        token = sandbox.login()
        auth = {"Authorization": f"Bearer {token}"}
        hook = httpx.post(
            f"{sandbox.api_url}/v1/hooks",
            headers=auth,
            json={
                "name": "rossflow-webhook",
                "queues": [f"{sandbox.api_url}/v1/queues/1"],
                "events": ["annotation_status"],
                "config": {"url": server.hook_url, "secret": SECRET},
                "active": True,
            },
        )
        assert hook.status_code == 201, hook.text
        ids = sandbox.seed(queue=1, count=3, status="to_review")
        confirmed = sandbox.confirm_all(queue=1)
        assert sorted(confirmed) == sorted(ids)
        sandbox.wait_idle()
        deliveries = [d for d in sandbox.hook_deliveries() if d["hook"] == hook.json()["id"]]
        assert deliveries and all(d["response_status"] == 200 for d in deliveries)
        confirmed_events = [
            e for e in emitter.events if e.resource["rossum.annotation.status"] == "confirmed"
        ]
        assert sorted(int(e.resource["rossum.annotation.id"]) for e in confirmed_events) == sorted(
            ids
        )
        assert {r.id for e in confirmed_events for r in e.related if r.role == "queue"} == {
            "rossum.queue.1"
        }
        assert len(emitter.events) == len(deliveries)  # every status change, each once
    finally:
        server.stop()
