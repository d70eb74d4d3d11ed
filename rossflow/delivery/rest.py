"""REST delivery to an ERP with httpx: auth, TLS, timeouts, safe retries.

Every request carries an ``Idempotency-Key`` derived from (annotation id, target, payload), which
is what makes retrying a POST safe: an ERP that honours the key answers a repeat with the first
result instead of creating a second document. Retries cover transport errors and 408/429/5xx with
exponential backoff and jitter (``Retry-After`` wins). Non-2xx answers are *returned*, not raised:
whether a 409 or a 422 means success, a business error or a retry is the caller's evaluator's call.
Only a transport failure that outlives the retries raises :class:`DeliveryError`.

Request bodies are in :mod:`~rossflow.delivery.rest_bodies`, the result and error in
:mod:`~rossflow.delivery.rest_result`, the OAuth2 token cache in
:mod:`~rossflow.delivery.rest_auth`.

Usage::

    endpoint = RestEndpoint(url="https://erp.example.com/api/invoices", auth=BearerAuth(token=t))
    async with open_rest_client(endpoint) as client:       # one client per batch
        for doc in batch:
            key = idempotency_key(doc.annotation_id, "erp-invoices", doc.payload)
            result = await deliver(client, endpoint, RawBody(doc.payload, "application/xml"),
                                   idempotency_key=key)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from rossflow.delivery.rest_auth import (
    TOKEN_CACHE,
    OAuth2TokenCache,
    RetryableTokenError,
    basic_header,
)
from rossflow.delivery.rest_bodies import RequestBody
from rossflow.delivery.rest_result import DeliveryError, DeliveryResult
from rossflow.http import (
    AiohttpTransport,
    RetryPolicy,
    Timeouts,
    may_have_arrived,
    parse_retry_after,
    safe_url,
)
from rossflow.redaction import Redactor

IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoAuth(_Model):
    kind: Literal["none"] = "none"


class BasicAuth(_Model):
    kind: Literal["basic"] = "basic"
    username: str
    password: SecretStr


class BearerAuth(_Model):
    """A static bearer token (for OAuth2-issued tokens use :class:`OAuth2ClientCredentials`)."""

    kind: Literal["bearer"] = "bearer"
    token: SecretStr


class ApiKeyAuth(_Model):
    kind: Literal["api_key"] = "api_key"
    header: str = "X-API-Key"
    value: SecretStr


class OAuth2ClientCredentials(_Model):
    """OAuth2 client-credentials grant; the token is cached in-process and shared by batches.

    ``client_auth="body"`` sends the client id/secret as form fields, ``"basic"`` as an HTTP Basic
    header (RFC 6749 allows both; IdPs differ). ``extra`` adds form fields such as ``audience`` or
    ``resource``. The token request uses the delivery's client, hence its TLS settings.
    """

    kind: Literal["oauth2"] = "oauth2"
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    client_auth: Literal["body", "basic"] = "body"


RestAuth = Annotated[
    NoAuth | BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials,
    Field(discriminator="kind"),
]


class TlsConfig(_Model):
    """Server verification and optional client certificate (mutual TLS).

    ``verify`` is ``True`` (system CAs), ``False`` (no verification: explicit opt-out) or the path
    of a CA bundle, which then is the *only* trust anchor (like ``requests``' ``verify=path``).
    """

    verify: bool | str = True
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: SecretStr | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if isinstance(self.verify, str):
            ctx = ssl.create_default_context(cafile=self.verify)
        else:
            ctx = ssl.create_default_context()
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            password = (
                self.client_key_password.get_secret_value() if self.client_key_password else None
            )
            ctx.load_cert_chain(self.client_cert, self.client_key, password)
        return ctx


class RestRetryPolicy(RetryPolicy):
    """REST delivery's preset of the shared policy: every 5xx is retried (the
    ``Idempotency-Key`` makes a repeat safe). A ``Retry-After`` longer than
    ``max_retry_after_s`` ends the retries and the answer is returned as is: waiting that long
    inside one delivery would only hold a worker."""

    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES


def rest_timeouts() -> Timeouts:
    """Generous read/write timeouts by default: ERPs are slow to book a document."""
    return Timeouts(read=120.0, write=120.0)


class RestEndpoint(_Model):
    """One REST target: where to send, how to authenticate, and how patient to be."""

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    name: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    auth: RestAuth = Field(default_factory=NoAuth)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    timeouts: Timeouts = Field(default_factory=rest_timeouts)
    retry: RestRetryPolicy = Field(default_factory=RestRetryPolicy)

    @property
    def display_name(self) -> str:
        """How messages name the target: block name and URL (never its credentials)."""
        url = safe_url(self.url)
        return f"{self.name} ({url})" if self.name and self.name != url else url


def idempotency_key(annotation_id: int | str, target: str, payload: bytes) -> str:
    """Stable key for one (document, target, payload): same export -> same key -> no duplicate.

    A changed payload (e.g. the annotation was corrected and re-exported) yields a new key, so a
    genuine update is not swallowed as a duplicate.
    """
    payload_hash = hashlib.sha256(payload).hexdigest()
    material = f"{annotation_id}\n{target}\n{payload_hash}".encode()
    return hashlib.sha256(material).hexdigest()


#: Awaited before a resend of an attempt the target may have processed (see :func:`deliver`).
BeforeResend = Callable[[tuple[str, ...]], Awaitable[DeliveryResult | None]]


# --------------------------------------------------------------------------------------------
# Client and delivery
# --------------------------------------------------------------------------------------------
@asynccontextmanager
async def open_rest_client(
    endpoint: RestEndpoint,
    *,
    max_connections: int = 10,
    max_keepalive_connections: int = 10,
) -> AsyncIterator[httpx.AsyncClient]:
    """One pooled client per batch (connection reuse), with the endpoint's TLS and timeouts.

    Endpoints delivered through the same client must share TLS settings.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    verify = endpoint.tls.ssl_context()
    async with httpx.AsyncClient(
        verify=verify,
        timeout=endpoint.timeouts.to_httpx(),
        limits=limits,
        transport=AiohttpTransport(verify=verify, limits=limits),
        follow_redirects=False,
    ) as client:
        client._cookies = SetCookieOnly()  # no public switch in httpx; harmless if it moves
        yield client


class SetCookieOnly(httpx.Cookies):
    """httpx's cookie jar, parsing a response only when it sets a cookie.

    httpx hands every response to ``http.cookiejar`` (a urllib request and response built around
    it), ~5 % of the export's CPU per delivered document; almost no ERP reply sets a cookie. A
    target that does keep its session cookie exactly as before.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


async def _auth_headers(
    client: httpx.AsyncClient, auth: RestAuth, token_cache: OAuth2TokenCache
) -> tuple[dict[str, str], str | None]:
    """Headers for ``auth``; second item is the OAuth2 token used (to invalidate on 401)."""
    if isinstance(auth, BasicAuth):
        return {
            "Authorization": basic_header(auth.username, auth.password.get_secret_value())
        }, None
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {auth.token.get_secret_value()}"}, None
    if isinstance(auth, ApiKeyAuth):
        return {auth.header: auth.value.get_secret_value()}, None
    if isinstance(auth, OAuth2ClientCredentials):
        token = await token_cache.get(client, auth)
        return {"Authorization": f"Bearer {token}"}, token
    return {}, None


def _describe(exc: BaseException, endpoint: RestEndpoint) -> str:
    timeouts = endpoint.timeouts
    hints = {
        httpx.ConnectTimeout: f"could not connect within {timeouts.connect:g}s",
        httpx.ReadTimeout: f"no response within the {timeouts.read:g}s read timeout",
        httpx.WriteTimeout: f"could not send the body within {timeouts.write:g}s",
        httpx.PoolTimeout: f"no free connection within {timeouts.pool:g}s",
    }
    for kind, hint in hints.items():
        if isinstance(exc, kind):
            return f"{type(exc).__name__} ({hint})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def deliver(
    client: httpx.AsyncClient,
    endpoint: RestEndpoint,
    body: RequestBody,
    *,
    idempotency_key: str,
    headers: Mapping[str, str] | None = None,
    url: str | None = None,
    token_cache: OAuth2TokenCache | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    redactor: Redactor | None = None,
    before_resend: BeforeResend | None = None,
    resend_uncertain: bool = True,
) -> DeliveryResult:
    """Send ``body`` to ``endpoint`` (or ``url``, e.g. with a document id filled in).

    Retries transport errors and ``endpoint.retry.retry_statuses``; with OAuth2, a 401 triggers
    one token refresh and an immediate repeat that does not use up a retry. Returns the last
    answer whatever its status; raises :class:`DeliveryError` when no answer could be obtained.
    ``redactor`` learns every credential sent (OAuth2 tokens are only known at run time).

    For a target that ignores the ``Idempotency-Key``: after an attempt the target may have
    processed (timeout, dropped connection, 5xx), ``before_resend`` is awaited before the
    repeat; a result it returns (the record found by a lookup) ends the delivery as if the
    attempt had answered it. ``resend_uncertain=False`` never repeats such an attempt: its
    answer is returned, or its error raised, with ``maybe_processed`` set.
    """
    target_url = url or endpoint.url
    shown_url = safe_url(target_url)
    policy = endpoint.retry
    cache = token_cache or TOKEN_CACHE
    kwargs = body.request_kwargs()
    body_headers: dict[str, str] = kwargs.pop("headers", {})
    started = time.monotonic()
    sent = 0
    policy_attempt = 0
    refreshed_after_401 = False
    history: list[str] = []
    maybe_processed = False
    while True:
        policy_attempt += 1
        sent += 1
        used_token: str | None = None
        try:
            auth_headers, used_token = await _auth_headers(client, endpoint.auth, cache)
            if redactor is not None:
                for value in auth_headers.values():
                    redactor.add_auth_header(value)
            # Later sources win, case-insensitively: body defaults < endpoint < call < auth.
            request_headers = httpx.Headers(body_headers)
            for extra in (endpoint.headers, headers or {}, auth_headers):
                request_headers.update(extra)
            request_headers[IDEMPOTENCY_HEADER] = idempotency_key
            response = await client.request(
                endpoint.method, target_url, headers=request_headers, **kwargs
            )
        except (httpx.TransportError, RetryableTokenError) as exc:
            history.append(_describe(exc, endpoint))
            # a refused token request means the request itself was never sent
            sent_it = not isinstance(exc, RetryableTokenError) and may_have_arrived(exc)
            maybe_processed = maybe_processed or sent_it
            # the Idempotency-Key makes any method safe to repeat
            retry = policy.retry_error(exc, attempt=policy_attempt, idempotent=True)
            if not retry or (sent_it and not resend_uncertain):
                if retry:
                    history.append("not resent: the outcome of the attempt is unknown")
                raise DeliveryError(
                    f"{endpoint.method} {shown_url} failed after {sent} attempt(s): "
                    f"{_describe(exc, endpoint)}",
                    url=target_url,
                    method=endpoint.method,
                    attempts=sent,
                    cause=exc,
                    history=tuple(history),
                    maybe_processed=maybe_processed,
                ) from exc
            await sleep(policy.backoff(policy_attempt))
            if sent_it and before_resend is not None:
                found = await before_resend(tuple(history))
                if found is not None:
                    return _adopted(found, history, sent, maybe_processed)
            continue
        except DeliveryError as exc:
            history.append(str(exc))
            exc.attempts = sent
            exc.history = tuple(history)
            exc.maybe_processed = maybe_processed
            raise

        status = response.status_code
        history.append(f"HTTP {status}")
        maybe_processed = maybe_processed or status >= 500
        if (
            status == 401
            and isinstance(endpoint.auth, OAuth2ClientCredentials)
            and not refreshed_after_401
        ):
            refreshed_after_401 = True
            cache.invalidate(endpoint.auth, used_token)
            policy_attempt -= 1
            continue
        uncertain = status >= 500
        if policy.retry_status(status, attempt=policy_attempt, idempotent=True) and not (
            uncertain and not resend_uncertain
        ):
            delay = parse_retry_after(response.headers.get("Retry-After"))
            if delay is None:
                delay = policy.backoff(policy_attempt)
            if delay <= policy.max_retry_after_s:
                await sleep(delay)
                if uncertain and before_resend is not None:
                    found = await before_resend(tuple(history))
                    if found is not None:
                        return _adopted(found, history, sent, maybe_processed)
                continue
        return DeliveryResult(
            status_code=status,
            headers=list(response.headers.multi_items()),
            body=response.content,
            elapsed_s=time.monotonic() - started,
            attempts=sent,
            url=shown_url,
            idempotency_key=idempotency_key,
            history=tuple(history),
            maybe_processed=maybe_processed,
        )


def _adopted(
    found: DeliveryResult, history: list[str], sent: int, maybe_processed: bool
) -> DeliveryResult:
    """The reply a lookup found, standing in for the attempt that may have created it."""
    return dataclasses.replace(
        found,
        attempts=sent,
        history=(*history, *found.history),
        maybe_processed=maybe_processed,
    )


async def fetch(
    client: httpx.AsyncClient,
    endpoint: RestEndpoint,
    *,
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    token_cache: OAuth2TokenCache | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    redactor: Redactor | None = None,
) -> DeliveryResult:
    """A read-only request to ``endpoint``'s host with its auth and TLS (a reconcile lookup):
    retried on transport errors and the policy's statuses, since it changes nothing."""
    policy = endpoint.retry
    cache = token_cache or TOKEN_CACHE
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            auth_headers, _ = await _auth_headers(client, endpoint.auth, cache)
            if redactor is not None:
                for value in auth_headers.values():
                    redactor.add_auth_header(value)
            request_headers = httpx.Headers(endpoint.headers)
            for extra in (headers or {}, auth_headers):
                request_headers.update(extra)
            response = await client.request(method, url, headers=request_headers)
        except (httpx.TransportError, RetryableTokenError) as exc:
            if not policy.retry_error(exc, attempt=attempt, idempotent=True):
                raise DeliveryError(
                    f"{method} {safe_url(url)} failed after {attempt} attempt(s): "
                    f"{_describe(exc, endpoint)}",
                    url=url,
                    method=method,
                    attempts=attempt,
                    cause=exc,
                ) from exc
            await sleep(policy.backoff(attempt))
            continue
        if policy.retry_status(response.status_code, attempt=attempt, idempotent=True):
            await sleep(policy.backoff(attempt))
            continue
        return DeliveryResult(
            status_code=response.status_code,
            headers=list(response.headers.multi_items()),
            body=response.content,
            elapsed_s=time.monotonic() - started,
            attempts=attempt,
            url=safe_url(url),
        )


async def deliver_once(
    endpoint: RestEndpoint,
    body: RequestBody,
    *,
    idempotency_key: str,
    headers: Mapping[str, str] | None = None,
) -> DeliveryResult:
    """Convenience for a single document: opens and closes its own client."""
    async with open_rest_client(endpoint, max_connections=1) as client:
        return await deliver(
            client, endpoint, body, idempotency_key=idempotency_key, headers=headers
        )
