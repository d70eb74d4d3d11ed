"""OAuth2 client-credentials tokens for REST delivery: one process-wide cache, refreshed before
expiry, and the Basic header the token request (and Basic auth) use."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import weakref
from typing import TYPE_CHECKING

import httpx

from rossflow.delivery.rest_result import DeliveryError
from rossflow.http import safe_url

if TYPE_CHECKING:
    from rossflow.delivery.rest import OAuth2ClientCredentials

__all__ = ["TOKEN_CACHE", "OAuth2TokenCache", "RetryableTokenError", "basic_header"]


class RetryableTokenError(Exception):
    """Token endpoint answered 429/5xx: retried like a transport error."""


_TokenKey = tuple[str, str, str]


class OAuth2TokenCache:
    """Process-wide cache of client-credentials tokens, keyed by (token_url, client_id, scope).

    Thread-safe: the dict is guarded by a lock; concurrent refreshes are collapsed per event loop
    (coroutines of one loop wait for the first fetch). Tokens are refreshed ``skew`` before they
    expire (10 % of their lifetime, at most 60 s) and whenever a request using them got a 401.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[_TokenKey, tuple[str, float]] = {}
        self._loop_locks: dict[
            _TokenKey, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        ] = {}
        self.fetches = 0

    @staticmethod
    def key(auth: OAuth2ClientCredentials) -> _TokenKey:
        return (auth.token_url, auth.client_id, auth.scope or "")

    def _cached(self, key: _TokenKey) -> str | None:
        with self._lock:
            entry = self._tokens.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    def _loop_lock(self, key: _TokenKey) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lock:
            locks = self._loop_locks.setdefault(key, weakref.WeakKeyDictionary())
            lock = locks.get(loop)
            if lock is None:
                lock = locks[loop] = asyncio.Lock()
            return lock

    def invalidate(self, auth: OAuth2ClientCredentials, token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``token``, when given)."""
        key = self.key(auth)
        with self._lock:
            entry = self._tokens.get(key)
            if entry and (token is None or entry[0] == token):
                del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    async def get(self, client: httpx.AsyncClient, auth: OAuth2ClientCredentials) -> str:
        key = self.key(auth)
        token = self._cached(key)
        if token:
            return token
        async with self._loop_lock(key):
            token = self._cached(key)
            if token:
                return token
            token, expires_in = await self._fetch(client, auth)
            skew = min(60.0, expires_in * 0.1)
            with self._lock:
                self._tokens[key] = (token, time.monotonic() + expires_in - skew)
                self.fetches += 1
            return token

    @staticmethod
    async def _fetch(client: httpx.AsyncClient, auth: OAuth2ClientCredentials) -> tuple[str, float]:
        data: dict[str, str] = {"grant_type": "client_credentials", **auth.extra}
        if auth.scope:
            data["scope"] = auth.scope
        headers = {"Accept": "application/json"}
        secret = auth.client_secret.get_secret_value()
        if auth.client_auth == "basic":
            headers["Authorization"] = basic_header(auth.client_id, secret)
        else:
            data.update(client_id=auth.client_id, client_secret=secret)
        response = await client.post(auth.token_url, data=data, headers=headers)
        where = f"OAuth2 token request to {safe_url(auth.token_url)} (client_id {auth.client_id})"
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableTokenError(f"{where} answered HTTP {response.status_code}")
        if response.status_code != 200:
            error = _oauth_error(response)
            raise DeliveryError(
                f"{where} failed: HTTP {response.status_code}{error}",
                url=auth.token_url,
                attempts=1,
            )
        try:
            payload = response.json()
            token = str(payload["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DeliveryError(
                f"{where} returned no access_token", url=auth.token_url, attempts=1, cause=exc
            ) from exc
        try:
            expires_in = float(payload.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600.0
        return token, expires_in


def basic_header(username: str, password: str) -> str:
    pair = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _oauth_error(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return ""
    if isinstance(payload, dict) and payload.get("error"):
        return f" ({payload['error']})"
    return ""


TOKEN_CACHE = OAuth2TokenCache()
