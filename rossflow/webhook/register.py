"""``rossflow export-hook``: register the export hook of the export-event mode in Rossum.

    rossflow export-hook --queue 2 --url https://rossflow.example.com/rossum \\
                         --secret-file /run/secrets/rossum_hook

creates (or updates) one webhook with ``events: ["annotation_content.export"]``, the receiver
URL, a secret, ``timeout_s`` and ``retry_count``, subscribed to the queue. Never a duplicate:
a hook with the same URL subscribed to the export event is reused and the queue added to it.
A new hook gets a generated secret, written to ``--secret-file`` (mode 0600) for ``rossflow
webhook --secret-file``; an existing hook keeps its secret unless the file already holds one.
"""

from __future__ import annotations

import os
import secrets as secrets_lib
from pathlib import Path
from typing import Any

from rossflow.rossum import RossumClient, id_from_url

EXPORT_EVENT = "annotation_content.export"
DEFAULT_NAME = "rossflow export"


def _subscribed(hook: dict[str, Any]) -> bool:
    events = set(hook.get("events") or [])
    return EXPORT_EVENT in events or "annotation_content" in events


async def register_export_hook(
    client: RossumClient,
    *,
    queue_id: int,
    url: str,
    secret: str | None = None,
    timeout_s: int = 30,
    retry_count: int = 4,
    name: str = DEFAULT_NAME,
) -> tuple[dict[str, Any], str, str | None]:
    """Create or update the hook; returns (hook, "created" | "updated" | "unchanged", secret
    of a new hook or None)."""
    queue_url = client.url(f"/v1/queues/{queue_id}")
    await client.get_queue(queue_id)  # a clear 404 for a wrong queue id
    existing = [
        h
        for h in await client.list_hooks()
        if (h.get("config") or {}).get("url") == url and _subscribed(h)
    ]
    if existing:
        hook = min(existing, key=lambda h: h["id"])
        queues = list(hook.get("queues") or [])
        changes: dict[str, Any] = {}
        if not any(id_from_url(q) == queue_id for q in queues):
            changes["queues"] = [*queues, queue_url]
        config = dict(hook.get("config") or {})
        wanted = {"timeout_s": timeout_s, "retry_count": retry_count}
        if any(config.get(k) != v for k, v in wanted.items()) or secret:
            changes["config"] = {**config, **wanted, **({"secret": secret} if secret else {})}
        if not hook.get("active", True):
            changes["active"] = True
        if not changes:
            return hook, "unchanged", None
        return await client.update_hook(int(hook["id"]), changes), "updated", None
    secret = secret or secrets_lib.token_urlsafe(32)
    hook = await client.create_hook(
        {
            "name": name,
            "type": "webhook",
            "queues": [queue_url],
            "events": [EXPORT_EVENT],
            "active": True,
            "config": {
                "url": url,
                "secret": secret,
                "timeout_s": timeout_s,
                "retry_count": retry_count,
            },
        }
    )
    return hook, "created", secret


def _read_secret(path: Path) -> str | None:
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return lines[0] if lines else None
    return None


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
