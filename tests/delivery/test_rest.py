"""REST delivery against the real ERP stand-in (no transport mocks)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import SecretStr

from rossflow.delivery.rest import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    RestEndpoint,
    RestRetryPolicy,
    deliver,
    deliver_once,
    idempotency_key,
    open_rest_client,
)
from rossflow.delivery.rest_auth import (
    OAuth2TokenCache,
)
from rossflow.delivery.rest_bodies import (
    FormBody,
    JsonBody,
    MultipartBody,
    RawBody,
)
from rossflow.delivery.rest_result import (
    DeliveryError,
)
from rossflow.http import Timeouts
from rossflow.localstack.erp import ErpServer

FAST_RETRY = RestRetryPolicy(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05)


def endpoint(erp: ErpServer, path: str = "/api/invoices", **kwargs: object) -> RestEndpoint:
    kwargs.setdefault("retry", FAST_RETRY)
    return RestEndpoint(url=f"{erp.url}{path}", name="erp-test", **kwargs)


def key(n: int | str = 1, payload: bytes = b"x") -> str:
    return idempotency_key(n, "erp-test", payload)


def test_idempotency_key_is_stable_and_payload_sensitive() -> None:
    a = idempotency_key(123, "erp", b"<doc/>")
    assert a == idempotency_key("123", "erp", b"<doc/>")
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != idempotency_key(123, "erp", b"<doc v='2'/>")
    assert a != idempotency_key(123, "sftp", b"<doc/>")
    assert a != idempotency_key(124, "erp", b"<doc/>")


async def test_json_body(erp_server: ErpServer) -> None:
    result = await deliver_once(
        endpoint(erp_server), JsonBody({"invoice": "INV-1", "amount": 12.5}), idempotency_key=key()
    )
    assert result.status_code == 201 and result.ok and result.attempts == 1
    assert result.json() == {"id": "ERP-000001", "status": "created"}
    assert (
        result.header(
            "content-type",
        )
        == "application/json"
    )
    assert result.url == f"{erp_server.url}/api/invoices"
    [record] = erp_server.received()
    assert record["path"] == "/api/invoices" and record["method"] == "POST"
    assert record["content_type"] == "application/json"
    assert record["json"] == {"invoice": "INV-1", "amount": 12.5}
    assert record["idempotency_key"] == key()


async def test_xml_body_and_xml_answer(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "routes": {
                "PUT /api/orders/*": {
                    "status": 200,
                    "body": "<result><id>{{id}}</id><path>{{path}}</path></result>",
                    "content_type": "application/xml",
                }
            }
        }
    )
    ep = endpoint(erp_server, "/api/orders/42", method="PUT")
    xml = b"<?xml version='1.0'?><order><no>42</no></order>"
    result = await deliver_once(ep, RawBody(xml, "application/xml"), idempotency_key=key())
    assert result.status_code == 200
    assert result.text == "<result><id>ERP-000001</id><path>/api/orders/42</path></result>"
    assert result.header(
        "Content-Type",
    ).startswith("application/xml")
    [record] = erp_server.received()
    assert record["method"] == "PUT" and record["body"] == xml.decode()


async def test_malformed_xml_is_rejected_by_the_erp(erp_server: ErpServer) -> None:
    result = await deliver_once(
        endpoint(erp_server), RawBody(b"<order>", "application/xml"), idempotency_key=key()
    )
    assert result.status_code == 400 and "invalid XML" in result.text


async def test_multipart_body(erp_server: ErpServer) -> None:
    pdf = b"%PDF-1.4 fake" * 100
    body = MultipartBody(
        pdf, "invoice 1.pdf", "application/pdf", field_name="document", fields={"ref": "INV-1"}
    )
    result = await deliver_once(
        endpoint(erp_server, "/api/attachments"), body, idempotency_key=key()
    )
    assert result.status_code == 201
    [record] = erp_server.received()
    assert record["content_type"].startswith("multipart/form-data")
    parts = {p["name"]: p for p in record["parts"]}
    assert parts["ref"]["value"] == "INV-1"
    assert parts["document"]["filename"] == "invoice 1.pdf"
    assert parts["document"]["content_type"] == "application/pdf"
    assert parts["document"]["size"] == len(pdf)


async def test_form_body(erp_server: ErpServer) -> None:
    result = await deliver_once(
        endpoint(erp_server), FormBody({"vendor": "ACME", "total": "10.00"}), idempotency_key=key()
    )
    assert result.status_code == 201
    [record] = erp_server.received()
    assert record["form"] == {"vendor": "ACME", "total": "10.00"}


async def test_endpoint_headers_override_body_content_type(erp_server: ErpServer) -> None:
    ep = endpoint(erp_server, headers={"content-type": "application/vnd.erp+json", "X-Tenant": "7"})
    await deliver_once(ep, JsonBody({"a": 1}), idempotency_key=key())
    [record] = erp_server.received()
    assert record["content_type"] == "application/vnd.erp+json"
    assert record["headers"]["x-tenant"] == "7"


# -- auth ---------------------------------------------------------------------------------------
async def test_basic_auth(erp_server: ErpServer) -> None:
    erp_server.configure({"require_auth": {"type": "basic", "username": "u", "password": "p@ss"}})
    good = endpoint(erp_server, auth=BasicAuth(username="u", password=SecretStr("p@ss")))
    bad = endpoint(erp_server, auth=BasicAuth(username="u", password=SecretStr("nope")))
    assert (await deliver_once(good, JsonBody({}), idempotency_key=key(1))).status_code == 201
    result = await deliver_once(bad, JsonBody({}), idempotency_key=key(2))
    assert result.status_code == 401 and result.attempts == 1  # 401 is not retried
    assert all("authorization" not in r["headers"] for r in erp_server.received())


async def test_bearer_auth(erp_server: ErpServer) -> None:
    erp_server.configure({"require_auth": {"type": "bearer", "token": "static-token"}})
    ep = endpoint(erp_server, auth=BearerAuth(token=SecretStr("static-token")))
    assert (await deliver_once(ep, JsonBody({}), idempotency_key=key())).status_code == 201
    ep_bad = endpoint(erp_server, auth=BearerAuth(token=SecretStr("other")))
    assert (await deliver_once(ep_bad, JsonBody({}), idempotency_key=key(2))).status_code == 401


async def test_api_key_auth(erp_server: ErpServer) -> None:
    erp_server.configure(
        {"require_auth": {"type": "api_key", "header": "X-Api-Key", "value": "k1"}}
    )
    ep = endpoint(erp_server, auth=ApiKeyAuth(header="X-Api-Key", value=SecretStr("k1")))
    assert (await deliver_once(ep, JsonBody({}), idempotency_key=key())).status_code == 201
    assert erp_server.received()[0]["headers"]["x-api-key"] == "***"
    missing = await deliver_once(endpoint(erp_server), JsonBody({}), idempotency_key=key(2))
    assert missing.status_code == 401


def oauth(erp: ErpServer, secret: str = "s3cr3t", **kwargs: object) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        token_url=erp.token_url, client_id="rossflow-app", client_secret=SecretStr(secret), **kwargs
    )


async def test_oauth2_token_is_fetched_once_and_cached(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "require_auth": {"type": "oauth2"},
            "oauth": {"client_id": "rossflow-app", "client_secret": "s3cr3t"},
        }
    )
    ep = endpoint(erp_server, auth=oauth(erp_server, scope="invoices:write"))
    cache = OAuth2TokenCache()
    async with open_rest_client(ep) as client:
        # Concurrent deliveries must share one token fetch.
        results = await asyncio.gather(
            *(
                deliver(client, ep, JsonBody({"n": i}), idempotency_key=key(i), token_cache=cache)
                for i in range(10)
            )
        )
    async with open_rest_client(ep) as client:  # a later batch reuses the cached token
        results.append(
            await deliver(client, ep, JsonBody({}), idempotency_key=key(99), token_cache=cache)
        )
    assert {r.status_code for r in results} == {201}
    assert erp_server.stats()["token_requests"] == 1
    assert cache.fetches == 1


async def test_oauth2_refreshes_once_on_401(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "require_auth": {"type": "oauth2"},
            "oauth": {"client_id": "rossflow-app", "client_secret": "s3cr3t"},
        }
    )
    ep = endpoint(erp_server, auth=oauth(erp_server))
    cache = OAuth2TokenCache()
    async with open_rest_client(ep) as client:
        first = await deliver(client, ep, JsonBody({}), idempotency_key=key(1), token_cache=cache)
        erp_server.revoke_tokens()  # the ERP forgets the token: next call gets a 401
        second = await deliver(client, ep, JsonBody({}), idempotency_key=key(2), token_cache=cache)
    assert first.status_code == second.status_code == 201
    assert second.attempts == 2
    stats = erp_server.stats()
    assert stats["token_requests"] == 2
    assert stats["by_status"] == {"201": 2, "401": 1}


async def test_oauth2_refreshes_before_expiry(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "require_auth": {"type": "oauth2"},
            "oauth": {"client_id": "rossflow-app", "client_secret": "s3cr3t", "expires_in": 0.4},
        }
    )
    ep = endpoint(erp_server, auth=oauth(erp_server))
    cache = OAuth2TokenCache()
    async with open_rest_client(ep) as client:
        await deliver(client, ep, JsonBody({}), idempotency_key=key(1), token_cache=cache)
        await asyncio.sleep(0.4)
        result = await deliver(client, ep, JsonBody({}), idempotency_key=key(2), token_cache=cache)
    assert result.status_code == 201 and result.attempts == 1  # no 401: refreshed proactively
    assert erp_server.stats()["token_requests"] == 2


async def test_oauth2_bad_client_secret_raises_without_leaking_it(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "require_auth": {"type": "oauth2"},
            "oauth": {"client_id": "rossflow-app", "client_secret": "s3cr3t"},
        }
    )
    ep = endpoint(erp_server, auth=oauth(erp_server, secret="wrong-secret-value"))
    with pytest.raises(DeliveryError) as info:
        await deliver_once(ep, JsonBody({}), idempotency_key=key())
    message = str(info.value)
    assert erp_server.token_url in message and "invalid_client" in message
    assert "wrong-secret-value" not in message
    assert erp_server.stats()["requests"] == 0  # nothing reached the API


async def test_oauth2_basic_client_auth(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "require_auth": {"type": "oauth2"},
            "oauth": {"client_id": "rossflow-app", "client_secret": "s3cr3t"},
        }
    )
    ep = endpoint(erp_server, auth=oauth(erp_server, client_auth="basic"))
    result = await deliver_once(ep, JsonBody({}), idempotency_key=key())
    assert result.status_code == 201


# -- retries --------------------------------------------------------------------------------
async def test_retries_503_then_succeeds(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 503, "body": {"error": "busy"}, "times": 2}]})
    result = await deliver_once(endpoint(erp_server), JsonBody({}), idempotency_key=key())
    assert result.status_code == 201 and result.attempts == 3
    stats = erp_server.stats()
    assert stats["by_status"] == {"201": 1, "503": 2}
    assert stats["documents"] == 1 and stats["duplicates"] == 0
    assert {r["idempotency_key"] for r in erp_server.received()} == {key()}


async def test_retries_exhausted_returns_last_answer(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 502, "times": 10}]})
    result = await deliver_once(endpoint(erp_server), JsonBody({}), idempotency_key=key())
    assert result.status_code == 502 and result.attempts == FAST_RETRY.max_attempts
    assert not result.ok


async def test_business_error_is_returned_not_retried(erp_server: ErpServer) -> None:
    erp_server.configure(
        {
            "fail_when_body_contains": {
                "INV-BAD": {"status": 422, "body": {"errors": [{"field": "vat", "msg": "bad"}]}}
            }
        }
    )
    result = await deliver_once(
        endpoint(erp_server), JsonBody({"number": "INV-BAD"}), idempotency_key=key()
    )
    assert result.status_code == 422 and result.attempts == 1
    assert result.json()["errors"][0]["field"] == "vat"
    assert erp_server.stats()["documents"] == 0


async def test_retry_after_is_honoured(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 429, "headers": {"Retry-After": "1"}, "times": 1}]})
    started = time.monotonic()
    result = await deliver_once(endpoint(erp_server), JsonBody({}), idempotency_key=key())
    elapsed = time.monotonic() - started
    assert result.status_code == 201 and result.attempts == 2
    assert elapsed >= 0.95  # backoff alone would be ~0.01 s
    assert result.elapsed_s >= 0.95


async def test_retry_after_longer_than_cap_returns_answer(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 503, "headers": {"Retry-After": "3600"}}]})
    ep = endpoint(erp_server, retry=FAST_RETRY.model_copy(update={"max_retry_after_s": 5}))
    result = await deliver_once(ep, JsonBody({}), idempotency_key=key())
    assert result.status_code == 503 and result.attempts == 1
    assert result.header("retry-after") == "3600"


async def test_same_idempotency_key_is_a_duplicate(erp_server: ErpServer) -> None:
    ep = endpoint(erp_server)
    async with open_rest_client(ep) as client:
        first = await deliver(client, ep, JsonBody({"a": 1}), idempotency_key=key("A"))
        again = await deliver(client, ep, JsonBody({"a": 1}), idempotency_key=key("A"))
        other = await deliver(client, ep, JsonBody({"a": 1}), idempotency_key=key("B"))
    assert first.status_code == again.status_code == 201
    assert first.body == again.body
    assert other.json()["id"] != first.json()["id"]
    stats = erp_server.stats()
    assert stats["documents"] == 2 and stats["duplicates"] == 1 and stats["requests"] == 3
    assert [r["duplicate"] for r in erp_server.received()] == [False, True, False]


async def test_transient_failure_is_not_pinned_to_the_key(erp_server: ErpServer) -> None:
    erp_server.configure({"script": [{"status": 503, "times": 1}]})
    ep = endpoint(erp_server)
    first = await deliver_once(ep, JsonBody({}), idempotency_key=key())
    again = await deliver_once(ep, JsonBody({}), idempotency_key=key())
    assert first.status_code == again.status_code == 201 and first.attempts == 2
    assert again.body == first.body
    assert erp_server.stats()["duplicates"] == 1


async def test_timeout_raises_delivery_error_with_clear_message(erp_server: ErpServer) -> None:
    erp_server.configure({"latency_s": 0.8})
    ep = endpoint(
        erp_server,
        timeouts=Timeouts(read=0.2),
        retry=RestRetryPolicy(max_attempts=2, backoff_initial_s=0.01),
    )
    started = time.monotonic()
    with pytest.raises(DeliveryError) as info:
        await deliver_once(ep, JsonBody({}), idempotency_key=key())
    assert time.monotonic() - started < 1.5
    message = str(info.value)
    assert f"POST {erp_server.url}/api/invoices" in message
    assert "after 2 attempt(s)" in message and "ReadTimeout" in message and "0.2s" in message
    assert info.value.attempts == 2


async def test_connection_refused_raises_without_credentials_in_message() -> None:
    with ErpServer() as erp:
        port = erp.port  # stopped on exit: the port is now closed
    ep = RestEndpoint(
        url=f"http://user:hunter2@127.0.0.1:{port}/api/invoices",
        auth=BasicAuth(username="user", password=SecretStr("hunter2")),
        retry=RestRetryPolicy(max_attempts=2, backoff_initial_s=0.01),
    )
    with pytest.raises(DeliveryError) as info:
        await deliver_once(ep, JsonBody({}), idempotency_key=key())
    message = str(info.value)
    assert "ConnectError" in message and f"127.0.0.1:{port}/api/invoices" in message
    assert "hunter2" not in message and info.value.url == f"http://127.0.0.1:{port}/api/invoices"


async def test_latency_is_applied(erp_server: ErpServer) -> None:
    erp_server.configure({"latency_s": 0.2})
    result = await deliver_once(endpoint(erp_server), JsonBody({}), idempotency_key=key())
    assert result.elapsed_s >= 0.2


# -- an ERP that ignores the Idempotency-Key: hooks of the retry loop ---------------------------


async def test_before_resend_runs_after_a_5xx_and_a_found_record_ends_the_delivery(
    erp_server: ErpServer,
) -> None:
    from rossflow.delivery.rest import fetch

    erp_server.configure(
        {
            "ignore_idempotency_key": True,
            "script": [{"status": 503, "books": True, "times": 1, "path": "/api/invoices"}],
        }
    )
    target = endpoint(erp_server)
    seen: list[tuple[str, ...]] = []
    async with open_rest_client(target) as client:

        async def lookup(history: tuple[str, ...]):
            seen.append(history)
            reply = await fetch(client, target, url=f"{target.url}?ref=A-1")
            found = reply.json()["results"]
            return reply if found else None

        result = await deliver(
            client, target, JsonBody({"ref": "A-1"}), idempotency_key=key(), before_resend=lookup
        )
    assert seen == [("HTTP 503",)]
    assert result.json()["results"][0]["ref"] == "A-1"
    assert result.history == ("HTTP 503",) and result.maybe_processed
    assert [r["method"] for r in erp_server.received()] == ["POST", "GET"]  # no resend
    assert erp_server.stats()["documents"] == 1


async def test_before_resend_finding_nothing_resends(erp_server: ErpServer) -> None:
    erp_server.configure(
        {"script": [{"status": 503, "times": 1, "path": "/api/invoices"}]}  # booked nothing
    )
    calls: list[tuple[str, ...]] = []

    async def lookup(history: tuple[str, ...]):
        calls.append(history)
        return None

    target = endpoint(erp_server)
    async with open_rest_client(target) as client:
        result = await deliver(
            client, target, JsonBody({"ref": "B"}), idempotency_key=key(), before_resend=lookup
        )
    assert result.status_code == 201 and len(calls) == 1
    assert erp_server.stats()["documents"] == 1


async def test_resend_uncertain_false_stops_after_a_5xx_and_after_a_timeout(
    erp_server: ErpServer,
) -> None:
    erp_server.configure({"ignore_idempotency_key": True, "default": {"status": 502}})
    target = endpoint(erp_server)
    async with open_rest_client(target) as client:
        result = await deliver(
            client, target, JsonBody({}), idempotency_key=key(), resend_uncertain=False
        )
    assert result.status_code == 502 and result.attempts == 1 and result.maybe_processed

    erp_server.configure({"default": {"status": 201, "latency_s": 1.0}})
    slow = endpoint(erp_server, timeouts=Timeouts(read=0.2, write=0.2))
    async with open_rest_client(slow) as client:
        with pytest.raises(DeliveryError) as caught:
            await deliver(client, slow, JsonBody({}), idempotency_key=key(), resend_uncertain=False)
    assert caught.value.attempts == 1 and caught.value.maybe_processed
    assert "not resent" in caught.value.history[-1]


def test_erp_stand_in_ignoring_the_key_books_twice_and_lookup_finds_by_field(
    erp_server: ErpServer,
) -> None:
    import httpx

    erp_server.configure({"ignore_idempotency_key": True})
    with httpx.Client(base_url=erp_server.url) as http:
        for _ in range(2):
            http.post("/api/invoices", json={"ref": "X"}, headers={"Idempotency-Key": "same"})
        http.post("/api/invoices", json={"ref": "Y"})
        found = http.get("/api/invoices", params={"ref": "X"}).json()
        none = http.get("/api/invoices", params={"ref": "Z"}).json()
    assert [r["ref"] for r in found["results"]] == ["X", "X"] and found["count"] == 2
    assert none == {"count": 0, "results": []}
    assert erp_server.stats()["documents"] == 3 and erp_server.stats()["duplicates"] == 0


async def test_a_session_cookie_set_by_the_target_is_sent_back() -> None:
    """The delivery client skips cookie parsing for replies without Set-Cookie (CPU), and still
    keeps a cookie a target sets, sending it on later calls."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from rossflow.localstack.uvicorn_thread import UvicornThread

    seen: list[str | None] = []

    async def login(request: Request) -> JSONResponse:
        resp = JSONResponse({"ok": True}, status_code=201)
        resp.set_cookie("session", "s-42", path="/")
        return resp

    async def invoices(request: Request) -> JSONResponse:
        seen.append(request.cookies.get("session"))
        return JSONResponse({"id": len(seen)}, status_code=201)

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/api", invoices, methods=["POST"])]
    )
    with UvicornThread(app, name="cookie-target") as server:
        ep = RestEndpoint(url=f"{server.url}/api", name="cookie-target", retry=FAST_RETRY)
        async with open_rest_client(ep) as client:
            before = await deliver(client, ep, JsonBody({}), idempotency_key=key(1))
            assert not client.cookies  # a reply without Set-Cookie adds nothing
            await deliver(
                client, ep, JsonBody({}), idempotency_key=key(2), url=f"{server.url}/login"
            )
            after = await deliver(client, ep, JsonBody({}), idempotency_key=key(3))
    assert before.status_code == after.status_code == 201
    assert seen == [None, "s-42"]
    assert client.cookies.get("session") == "s-42"
