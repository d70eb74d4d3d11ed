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

import argparse
import asyncio
import os
import secrets as secrets_lib
import sys
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


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow export-hook",
        description="Register the annotation_content.export webhook (export-event mode) for a "
        "queue; never creates a duplicate.",
    )
    parser.add_argument("--queue", type=int, required=True, help="Rossum queue id")
    parser.add_argument("--url", required=True, help="receiver URL, e.g. https://host/rossum")
    parser.add_argument(
        "--secret-file",
        default=".rossflow/hook-secret",
        help="where the hook secret is read from / written to (mode 0600)",
    )
    parser.add_argument("--timeout", type=int, default=30, help="hook timeout_s (max 60)")
    parser.add_argument("--retry-count", type=int, default=4, help="hook retry_count (0-4)")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--rossum", default="rossum", help="Rossum Credentials block name")
    args = parser.parse_args(argv)
    if not 0 <= args.retry_count <= 4 or not 1 <= args.timeout <= 60:
        parser.error("--retry-count must be 0-4 and --timeout 1-60 (Rossum's limits)")
    secret_file = Path(args.secret_file)

    async def main() -> int:
        from blocks import RossumCredentials

        creds = await RossumCredentials.aload(args.rossum)
        async with creds.get_client() as client:
            hook, what, new_secret = await register_export_hook(
                client,
                queue_id=args.queue,
                url=args.url,
                secret=_read_secret(secret_file),
                timeout_s=args.timeout,
                retry_count=args.retry_count,
                name=args.name,
            )
        if new_secret and not _read_secret(secret_file):
            _write_secret(secret_file, new_secret)
            print(f"rossflow export-hook: secret written to {secret_file}")
        print(
            f"rossflow export-hook: hook {hook.get('id')} {what} for queue {args.queue} → "
            f"{args.url}; run `rossflow webhook --secret-file {secret_file} --export-queues "
            f"{args.queue}` and `rossflow serve --event-queues {args.queue} ...`"
        )
        return 0

    try:
        return asyncio.run(main())
    except Exception as exc:  # user-facing: no traceback for a wrong block name or queue id
        print(f"rossflow export-hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
