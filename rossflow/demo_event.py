"""``rossflow demo``, queue 2: the export-event mode (Rossum waits for rossflow's answer).

Next to queue 1's confirmed-state webhook, queue 2 has no confirmed state: confirming moves an
annotation to ``exporting`` and the sandbox calls the ``annotation_content.export`` hook.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

#: Queue 2 has no confirmed state: Rossum itself calls the export hook (export-event mode).
EVENT_QUEUE = 2


async def register_export_hook(sandbox: Any, receiver: Any) -> int:
    """``rossflow export-hook`` for queue 2, against the sandbox (idempotent across starts)."""
    from rossflow.rossum import RossumClient
    from rossflow.webhook.register import DEFAULT_NAME, register_export_hook

    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password
    ) as client:
        # A reused demo state still holds the export hook of an earlier demo run, pointing at
        # that run's receiver (another port): Rossum would call it, fail, and move every
        # annotation to failed_export. The demo owns these hooks, so it switches them off.
        for old in await client.list_hooks():
            config = old.get("config") or {}
            if (
                old.get("name") == DEFAULT_NAME
                and old.get("active", True)
                and config.get("url") != receiver.hook_url
                and "annotation_content.export" in (old.get("events") or [])
            ):
                await client.update_hook(int(old["id"]), {"active": False})
        hook, _, _ = await register_export_hook(
            client, queue_id=EVENT_QUEUE, url=receiver.hook_url, secret=receiver.settings.secrets[0]
        )
    return int(hook["id"])


async def export_event_queue(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """Queue 2 next to queue 1: confirming moves the annotations to ``exporting``, the sandbox
    calls the export hook, rossflow answers 202 and later 201, the sandbox moves them to
    ``exported`` with the ERP id written back through the answer's operations."""
    sandbox = info["sandbox"]
    count = max(1, min(args.files, 4))
    ids = await asyncio.to_thread(sandbox.seed, queue=EVENT_QUEUE, count=count, status="to_review")
    erp_before = info["erp"].stats()["documents"]
    print(
        f"rossflow demo: queue {EVENT_QUEUE} (export event): the operator confirms {count} "
        "annotation(s); Rossum calls the export hook and polls rossflow for the answer"
    )
    await asyncio.to_thread(sandbox.confirm_all, EVENT_QUEUE)
    token = sandbox.login()
    deadline = time.monotonic() + args.timeout
    with httpx.Client(
        base_url=sandbox.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        while True:
            anns = [client.get(f"/v1/annotations/{i}").json() for i in ids]
            statuses = [a["status"] for a in anns]
            if all(s in ("exported", "failed_export") for s in statuses):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    exported = statuses.count("exported")
    failed = statuses.count("failed_export")
    erp = info["erp"].stats()
    print(
        f"rossflow demo: queue {EVENT_QUEUE} (export event): exported {exported}, failed "
        f"{failed}, still exporting {len(ids) - exported - failed}; ERP received "
        f"{erp['documents'] - erp_before} more invoice(s), {erp['duplicates']} duplicate(s)"
    )
    for ann in anns:
        for message in ann.get("messages") or []:
            if message.get("type") == "error":
                print(f"  annotation {ann['id']}: {message.get('content')}")
    return 0 if exported == len(ids) else 1
