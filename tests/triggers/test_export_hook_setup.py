"""``rossflow export-hook``: the export hook is registered once, against the sandbox over HTTP."""

from __future__ import annotations

import pytest

from rossflow.rossum import RossumClient, RossumError
from rossflow.webhook.register import register_export_hook

URL = "http://127.0.0.1:8787/rossum"


async def test_registers_the_export_hook_once_and_adds_queues(sandbox) -> None:
    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password
    ) as client:
        hook, what, secret = await register_export_hook(client, queue_id=2, url=URL)
        assert what == "created" and secret and len(secret) >= 32
        assert hook["events"] == ["annotation_content.export"]
        assert hook["config"]["url"] == URL
        assert hook["config"]["timeout_s"] == 30 and hook["config"]["retry_count"] == 4
        assert hook["queues"] == [client.url("/v1/queues/2")]
        # again: nothing new
        again, what, secret = await register_export_hook(client, queue_id=2, url=URL)
        assert (again["id"], what, secret) == (hook["id"], "unchanged", None)
        # another queue: the same hook, subscribed to both
        more, what, _ = await register_export_hook(client, queue_id=1, url=URL, timeout_s=45)
        assert more["id"] == hook["id"] and what == "updated"
        assert len(more["queues"]) == 2 and more["config"]["timeout_s"] == 45
        hooks = [h for h in await client.list_hooks() if h["config"].get("url") == URL]
        assert len(hooks) == 1


async def test_unknown_queue_is_a_clear_error(sandbox) -> None:
    async with RossumClient(
        sandbox.api_url, username=sandbox.username, password=sandbox.password
    ) as client:
        with pytest.raises(RossumError) as info:
            await register_export_hook(client, queue_id=999, url=URL)
        assert info.value.status == 404
        assert not [h for h in await client.list_hooks() if h["config"].get("url") == URL]
