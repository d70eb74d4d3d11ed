"""Shared helpers of the trigger tests: signed hook calls, a recording emitter, payloads."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from rossflow.webhook.signature import signature_headers
from tests.scaleout.processes import Service, free_port, prefect_env, wait_healthy

SECRET = "hook-secret-for-tests"


def status_payload(
    annotation_id: int = 314521,
    queue_id: int = 8236,
    status: str = "confirmed",
    previous: str = "reviewing",
    request_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``annotation_status`` / ``changed`` body shaped like spec §9.2's example."""
    base = "https://example.rossum.app/api/v1"
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "timestamp": "2024-01-01T00:00:00.000000Z",
        "base_url": "https://example.rossum.app",
        "rossum_authorization_token": "1024873d424a007d8eebff7b3684d283abdf7d0d",
        "hook": f"{base}/hooks/789",
        "settings": {},
        "secrets": {"password": "do-not-forward"},
        "action": "changed",
        "event": "annotation_status",
        "annotation": {
            "id": annotation_id,
            "url": f"{base}/annotations/{annotation_id}",
            "queue": f"{base}/queues/{queue_id}",
            "document": f"{base}/documents/{annotation_id + 100}",
            "status": status,
            "previous_status": previous,
        },
        "document": {
            "id": annotation_id + 100,
            "url": f"{base}/documents/{annotation_id + 100}",
            "original_file_name": f"invoice-{annotation_id}.pdf",
        },
        **extra,
    }


def signed(
    payload: Any,
    secret: str = SECRET,
    *,
    which: str = "both",
    content_type: str = "application/json",
) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sigs = signature_headers(secret, body)
    headers = {"Content-Type": content_type}
    if which in ("both", "sha256"):
        headers["X-Rossum-Signature-SHA256"] = sigs["X-Rossum-Signature-SHA256"]
    if which in ("both", "sha1"):
        headers["X-Elis-Signature"] = sigs["X-Elis-Signature"]
    return body, headers


def post(url: str, payload: Any, **kw: Any) -> httpx.Response:
    body, headers = signed(payload, **kw)
    return httpx.post(url, content=body, headers=headers, timeout=30)


class RecordingEmitter:
    """Stands in for the Prefect server where only the receiver's decisions matter."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.fail = False
        self.delay_s = 0.0

    async def emit(self, event: Any) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            from rossflow.webhook.events import EmitError

            raise EmitError("Prefect server unavailable (test)")
        self.events.append(event)

    async def ready(self) -> bool:
        return not self.fail

    async def close(self) -> None:
        pass


def wait_until(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(every)


@contextmanager
def prefect_server_process(command: list[str], home: Path, timeout: float = 180) -> Iterator[str]:
    """A Prefect server (``python -m <command> --no-ui --port N``) with its own home under
    ``home`` and its log in ``home/server.log``; yields its API URL, stops it afterwards."""
    port = free_port()
    server = Service(
        "prefect-server",
        [sys.executable, "-m", *command, "--no-ui", "--port", str(port)],
        prefect_env(home / "prefect", PREFECT_UI_ENABLED="false"),
        home / "server.log",
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(server, f"{api}/health", timeout)
        yield api
    finally:
        server.stop()
