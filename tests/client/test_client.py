"""The Rossum client against the running sandbox over real HTTP (no transport mocks)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rossflow.rossum import (
    AuthenticationError,
    DeadlineExceededError,
    NotFoundError,
    RetryPolicy,
    RossumClient,
    RossumTransportError,
    ServerError,
    Timeouts,
    UncertainOutcomeError,
    clear_token_cache,
    id_from_url,
)

INVOICE_TEXT = b"""Invoice number: INV-CLIENT-1
Issue date: 2024-03-01
Due date: 2024-03-31
Vendor name: ACME s.r.o.
Currency: EUR
Total amount: 1210.00
Item: Consulting | 10 | 100.00 | 1000.00
"""

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.2)


def make_client(sandbox, **kw) -> RossumClient:
    # the sandbox fixture resets its database between tests: start without a cached token so
    # that request counts are exact
    clear_token_cache()
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("rate_limit_per_s", None)
    return RossumClient(sandbox.api_url, username=sandbox.username, password=sandbox.password, **kw)


def datapoints(nodes):
    for node in nodes:
        if node.get("category") == "datapoint":
            yield node
        yield from datapoints(node.get("children") or [])


async def test_login_list_queues_and_logout(sandbox):
    async with make_client(sandbox) as client:
        queues = await client.list_queues()
        assert {q["id"] for q in queues} >= {1, 2}
        schema = await client.get_queue_schema(1)
        assert schema["id"] == 1
        await client.logout()
        # after logout the next call logs in again by itself
        again = await client.get_queue(1)
        assert again["id"] == 1
        assert client.stats.by_route["POST /v1/auth/login"] == 2


async def test_relogin_on_expired_token(sandbox):
    async with make_client(sandbox, max_token_lifetime_s=1) as client:
        await client.login()
        await client.get_queue(1)
        await asyncio.sleep(1.2)
        await client.get_queue(1)  # 401 -> one re-login -> retry
        assert client.stats.by_route["POST /v1/auth/login"] == 2
        assert client.stats.by_route["GET /v1/queues/{id}"] == 3


async def test_bad_token_error_carries_code_but_never_the_token(sandbox):
    secret_token = "deadbeef" * 5
    async with RossumClient(sandbox.api_url, token=secret_token, rate_limit_per_s=None) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_queue(1)
    err = info.value
    assert err.status == 401 and err.code == "authentication_failed"
    assert err.method == "GET" and err.url.endswith("/v1/queues/1")
    assert secret_token not in str(err) and secret_token not in repr(err.__dict__)


async def test_unknown_id_is_not_found(sandbox):
    async with make_client(sandbox) as client:
        with pytest.raises(NotFoundError) as info:
            await client.get_annotation(999_999)
    assert info.value.code == "not_found"


async def test_upload_wait_and_extracted_content(sandbox):
    async with make_client(sandbox) as client:
        result = await client.upload_and_wait(
            1,
            INVOICE_TEXT,
            "invoice 1 é.txt",
            metadata={"source": "test", "sha256": "abc"},
            values={"upload:cost_center": "CC-7"},
            content_type="text/plain",
            timeout_s=10,
        )
        assert len(result.annotation_ids) == 1 and len(result.document_ids) == 1
        ann_id = result.annotation_ids[0]
        done = await client.wait_for_annotations([ann_id], timeout_s=10, poll_s=0.05)
        assert done[ann_id]["status"] == "to_review"
        assert done[ann_id]["metadata"] == {"source": "test", "sha256": "abc"}
        values = {
            dp["schema_id"]: dp["content"]["value"]
            for dp in datapoints(await client.get_annotation_content(ann_id))
        }
        assert values["invoice_id"] == "INV-CLIENT-1"
        assert values["cost_center"] == "CC-7"
        original = await client.download_document(result.document_ids[0])
        assert original == INVOICE_TEXT


async def test_legacy_upload(sandbox):
    async with make_client(sandbox) as client:
        body = await client.upload_legacy(1, INVOICE_TEXT, "legacy.txt", content_type="text/plain")
        ann = await client.get_annotation(id_from_url(body["results"][0]["annotation"]))
        assert ann["status"] in {"importing", "to_review"}


async def test_list_follows_next_and_batches_id_lists(sandbox):
    ids = sandbox.seed(queue=1, count=250, status="confirmed")
    async with make_client(sandbox) as client:
        listed = [a["id"] async for a in client.list_annotations(queue=1, status="confirmed")]
        assert sorted(listed) == sorted(ids)
        assert client.stats.by_route["GET /v1/annotations"] == 3  # 100 + 100 + 50
        subset = ids[:150]
        got = [a["id"] async for a in client.list_annotations(ids=subset)]
        assert sorted(got) == sorted(subset)


async def test_export_formats(sandbox):
    ids = sandbox.seed(queue=1, count=3, status="confirmed")
    async with make_client(sandbox) as client:
        items = await client.export(1, ids=ids)
        assert sorted(id_from_url(i["url"]) for i in items) == sorted(ids)
        assert all(i["status"] == "confirmed" for i in items)
        xml = await client.export_file(1, "xml", ids=ids)
        assert xml.startswith(b"<?xml") and xml.count(b"<annotation ") == 3
        csv = await client.export_file(1, "csv", ids=ids[:1])
        assert b"Invoice number" in csv.splitlines()[0]


async def test_move_to_exported_in_id_batches_and_repeat_is_harmless(sandbox):
    ids = sandbox.seed(queue=1, count=150, status="confirmed")
    async with make_client(sandbox) as client:
        outcome = await client.move_to_status(1, ids)
        assert set(outcome) == set(ids) and set(outcome.values()) == {"exported"}
        assert client.stats.by_route["POST /v1/queues/{id}/export"] == 2
        again = await client.move_to_status(1, ids, status=None)
        assert set(again.values()) == {"exported"}
        ann = await client.get_annotation(ids[0])
        assert ann["exported_at"] is not None


async def test_export_pages_survive_moving_items_out_of_the_filter(sandbox):
    """SDK weakness W5: forward paging over a filter you mutate skips items. Ours must not."""
    ids = sandbox.seed(queue=1, count=250, status="confirmed")
    async with make_client(sandbox) as client:
        seen: list[int] = []
        async for page in client.export_pages(1, page_size=100):
            page_ids = [id_from_url(i["url"]) for i in page]
            seen.extend(page_ids)
            await client.move_to_status(1, page_ids)
        assert sorted(seen) == sorted(ids)
        assert await client.count_annotations(1, "confirmed") == 0

    # The naive approach (what the SDK does) loses items against the same server.
    more = sandbox.seed(queue=1, count=250, status="confirmed")
    async with make_client(sandbox) as client:
        naive: list[int] = []
        page_no = 1
        while True:
            body = await client.get_json(
                "/v1/queues/1/export",
                {"format": "json", "status": "confirmed", "page": page_no, "page_size": 100},
            )
            batch = [id_from_url(i["url"]) for i in body["results"]]
            if not batch:
                break
            naive.extend(batch)
            await client.move_to_status(1, batch)
            if not body["pagination"]["next"]:
                break
            page_no += 1
        assert len(naive) < len(more)


async def test_failed_export_with_message_and_back(sandbox):
    (ann_id,) = sandbox.seed(queue=1, count=1, status="confirmed")
    async with make_client(sandbox) as client:
        ann = await client.mark_failed_export(ann_id, "rest_erp: HTTP 422 from ERP: invalid VAT")
        assert ann["status"] == "failed_export"
        assert any("invalid VAT" in m["content"] for m in ann["messages"])
        assert ann["export_failed_at"] is not None
        assert (await client.requeue(ann_id))["status"] == "to_review"


async def test_content_operations_write_values(sandbox):
    (ann_id,) = sandbox.seed(queue=1, count=1, status="confirmed")
    async with make_client(sandbox) as client:
        content = await client.get_annotation_content(ann_id)
        target = next(dp for dp in datapoints(content) if dp["schema_id"] == "erp_document_id")
        await client.replace_values(ann_id, {target["id"]: "ERP-42"})
        after = await client.get_annotation_content(ann_id)
        written = next(dp for dp in datapoints(after) if dp["id"] == target["id"])
        assert written["content"]["value"] == "ERP-42"


async def test_start_confirm_postpone(sandbox):
    async with make_client(sandbox) as client:
        result = await client.upload_and_wait(1, INVOICE_TEXT, "a.txt", content_type="text/plain")
        ann_id = result.annotation_ids[0]
        await client.wait_for_annotations([ann_id], timeout_s=10, poll_s=0.05)
        started = await client.start(ann_id)
        assert started["annotation"].endswith(f"/annotations/{ann_id}")
        await client.confirm(ann_id)
        assert (await client.get_annotation(ann_id))["status"] == "confirmed"  # queue 1
        result2 = await client.upload_and_wait(1, INVOICE_TEXT, "b.txt", content_type="text/plain")
        ann2 = result2.annotation_ids[0]
        await client.wait_for_annotations([ann2], timeout_s=10, poll_s=0.05)
        await client.postpone(ann2)
        assert (await client.get_annotation(ann2))["status"] == "postponed"


# -- resilience against injected faults ------------------------------------------------------


async def test_retry_after_is_honoured(sandbox):
    sandbox.set_faults(
        [
            {
                "method": "GET",
                "path": "/api/v1/queues",
                "kind": "rate_limit",
                "retry_after": 1,
                "times": 1,
            }
        ]
    )
    async with make_client(sandbox) as client:
        started = time.monotonic()
        queues = await client.list_queues()
        waited = time.monotonic() - started
    assert queues
    assert client.stats.rate_limited == 1
    assert 1.0 <= waited < 3.0, f"waited {waited:.2f}s for Retry-After: 1"


async def test_5xx_on_get_is_retried(sandbox):
    sandbox.set_faults(
        [{"method": "GET", "path": "/api/v1/queues/1", "kind": "error", "status": 503, "times": 2}]
    )
    async with make_client(sandbox) as client:
        queue = await client.get_queue(1)
    assert queue["id"] == 1
    assert client.stats.retries == 2
    assert client.stats.by_route["GET /v1/queues/{id}"] == 3


async def test_upload_is_never_duplicated_when_its_response_is_lost(sandbox):
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "drop_after", "times": 1}]
    )
    async with make_client(sandbox) as client:
        with pytest.raises(UncertainOutcomeError) as info:
            await client.upload(1, INVOICE_TEXT, "lost-answer.txt", content_type="text/plain")
        assert info.value.reached_server is True
        assert client.stats.by_route["POST /v1/uploads"] == 1
        docs = [d async for d in client.paginate("/v1/documents", {"page_size": 100})]
    assert [d["original_file_name"] for d in docs].count("lost-answer.txt") == 1


async def test_upload_5xx_is_not_retried_but_429_is(sandbox):
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "error", "status": 503, "times": 1}]
    )
    async with make_client(sandbox) as client:
        with pytest.raises(ServerError):
            await client.upload(1, INVOICE_TEXT, "x.txt")
        assert client.stats.by_route["POST /v1/uploads"] == 1
    sandbox.set_faults(
        [
            {
                "method": "POST",
                "path": "/api/v1/uploads",
                "kind": "rate_limit",
                "retry_after": 0,
                "times": 1,
            }
        ]
    )
    async with make_client(sandbox) as client:
        task_url = await client.upload(1, INVOICE_TEXT, "y.txt")
        assert task_url
        assert client.stats.by_route["POST /v1/uploads"] == 2


async def test_upload_to_unreachable_server_retries_then_reports_not_reached():
    client = RossumClient(
        "http://127.0.0.1:9/api", token="t", retry=FAST_RETRY, rate_limit_per_s=None
    )
    async with client:
        with pytest.raises(RossumTransportError) as info:
            await client.upload(1, b"x", "x.pdf")
    assert info.value.reached_server is False
    assert not isinstance(info.value, UncertainOutcomeError)
    assert client.stats.requests == FAST_RETRY.max_attempts


async def test_read_timeout_is_enforced(sandbox):
    sandbox.set_faults(
        [{"method": "GET", "path": "/api/v1/queues/1", "kind": "latency", "latency_s": 2}]
    )
    policy = RetryPolicy(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.01)
    async with make_client(sandbox, timeouts=Timeouts(read=0.3), retry=policy) as client:
        await client.login()
        started = time.monotonic()
        with pytest.raises(RossumTransportError) as info:
            await client.get_queue(1)
        took = time.monotonic() - started
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert took < 1.5, f"two attempts with a 0.3s read timeout took {took:.2f}s"


async def test_polling_has_a_deadline(sandbox):
    sandbox.settings(extraction_delay_s=30)
    async with make_client(sandbox) as client:
        result = await client.upload_and_wait(1, INVOICE_TEXT, "slow.txt", timeout_s=10)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await client.wait_for_annotations(result.annotation_ids, timeout_s=0.5, poll_s=0.1)
        assert time.monotonic() - started < 1.5


async def test_shared_rate_limiter_bounds_concurrent_work(sandbox):
    rate = 20.0
    clients = [
        RossumClient(
            sandbox.api_url,
            username=sandbox.username,
            password=sandbox.password,
            rate_limit_per_s=rate,
            rate_limit_burst=1,
        )
        for _ in range(2)
    ]
    assert clients[0].limiter is clients[1].limiter
    await clients[0].login()
    started = time.monotonic()
    await asyncio.gather(*(c.get_queue(1) for c in clients for _ in range(15)))
    took = time.monotonic() - started
    for c in clients:
        await c.aclose()
    # 30 requests at 20/s with burst 1 need at least ~1.4 s
    assert took >= 29 / rate - 0.1, f"30 requests took only {took:.2f}s"


async def test_next_link_to_another_origin_is_refused(sandbox):
    async with make_client(sandbox) as client:
        with pytest.raises(ValueError, match="another origin"):
            await client.get_json("http://evil.example.com/api/v1/queues")


async def test_export_pages_survive_another_run_emptying_a_page(sandbox):
    """Overlapping runs: a page that existed when paging started may be gone (404)."""
    ids = sorted(sandbox.seed(queue=1, count=250, status="confirmed"))
    async with make_client(sandbox) as client, make_client(sandbox) as other:
        pages = client.export_pages(1, page_size=100)
        first = [id_from_url(i["url"]) for i in await pages.__anext__()]
        assert sorted(first) == ids[200:]
        await other.move_to_status(1, ids[:150])  # the other run took the oldest 150
        rest = [id_from_url(i["url"]) async for page in pages for i in page]
    assert sorted(rest) == ids[150:200]


# -- blocking I/O mode (the ingest's per-thread clients) --------------------------------------


def _blocking(client: RossumClient) -> RossumClient:
    client.use_blocking_io()
    assert type(client._http._transport).__name__ == "BlockingTransport"
    return client


async def test_blocking_io_streams_a_file_upload_with_metadata(sandbox, tmp_path):
    path = tmp_path / "streamed invoice.txt"
    path.write_bytes(INVOICE_TEXT)
    async with _blocking(make_client(sandbox)) as client:
        with path.open("rb") as stream:
            result = await client.upload_and_wait(
                1,
                stream,
                path.name,
                metadata={"sha256": "f00"},
                content_type="text/plain",
                timeout_s=10,
            )
        ann = await client.get_annotation(result.annotation_ids[0])
        assert ann["metadata"] == {"sha256": "f00"}
        assert await client.download_document(result.document_ids[0]) == INVOICE_TEXT
        # one connection, reused for every request (login, upload, task, upload object, ...)
        assert client.stats.by_route["POST /v1/uploads"] == 1


async def test_blocking_io_keeps_the_lost_answer_and_timeout_semantics(sandbox):
    sandbox.set_faults(
        [{"method": "POST", "path": "/api/v1/uploads", "kind": "drop_after", "times": 1}]
    )
    async with _blocking(make_client(sandbox)) as client:
        with pytest.raises(UncertainOutcomeError) as info:
            await client.upload(1, INVOICE_TEXT, "blocking-lost.txt", content_type="text/plain")
        assert info.value.reached_server is True
        assert client.stats.by_route["POST /v1/uploads"] == 1
    sandbox.set_faults(
        [{"method": "GET", "path": "/api/v1/queues/1", "kind": "latency", "latency_s": 2}]
    )
    policy = RetryPolicy(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.01)
    client = _blocking(make_client(sandbox, timeouts=Timeouts(read=0.3), retry=policy))
    async with client:
        await client.login()
        with pytest.raises(RossumTransportError) as timeout:
            await client.get_queue(1)
    assert isinstance(timeout.value.__cause__, httpx.ReadTimeout)


async def test_blocking_io_must_be_chosen_before_the_first_request(sandbox):
    async with make_client(sandbox) as client:
        await client.get_queue(1)
        with pytest.raises(RuntimeError, match="before the first request"):
            client.use_blocking_io()


@pytest.mark.parametrize("blocking", [False, True])
async def test_cookies_are_neither_kept_nor_sent(hook_receiver, blocking):
    hook_receiver.reply(200, {"id": 1}, {"Set-Cookie": "session=abc; Path=/"})
    hook_receiver.reply(200, {"id": 1})
    client = RossumClient(f"{hook_receiver.url}/api", token="t0ken", rate_limit_per_s=None)
    if blocking:
        client.use_blocking_io()
    async with client:
        await client.get_queue(1)
        await client.get_queue(1)
        assert not list(client._http.cookies.jar)
    first, second = hook_receiver.wait_for(2)
    assert "cookie" not in second.headers
    assert first.headers["authorization"] == second.headers["authorization"] == "Bearer t0ken"
