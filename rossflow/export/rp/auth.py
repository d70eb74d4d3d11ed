"""Request Processor auth: tokens for ``bearer``-style auth and ``oauth2_private_certificate``.

Tokens are cached per run, keyed by the filled ``auth`` block (Rossum persists them in hook
secrets; rossflow never writes secrets back). ``oauth1`` needs no token: it signs each request
(:func:`~rossflow.export.rp.http.oauth1_header`, applied when the request is rendered).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from rossflow.export.config import RpCallStep
from rossflow.export.errors import DeliveryError
from rossflow.export.rp.http import encode_request, jwt_assertion, safe_url, token_from_reply

AUTH_TIMEOUT_S = 10.0


class TokenCache:
    """Tokens fetched in this run, one per distinct ``auth`` block."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._tokens: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def values(self) -> list[str]:
        """The tokens fetched so far (to redact them)."""
        return list(self._tokens.values())

    async def get(
        self,
        step: RpCallStep,
        auth: Mapping[str, Any],
        secret_list: Callable[[Any], list[str]],
        *,
        refresh: bool = False,
    ) -> str:
        """The token for ``auth``; ``refresh`` drops a cached one first (after a 401)."""
        kind = auth.get("type") or "bearer"
        key = hashlib.sha256(json.dumps(auth, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
        async with self._lock:
            if refresh:
                self._tokens.pop(key, None)
            if key in self._tokens:
                return self._tokens[key]
            if kind == "oauth2_private_certificate":
                url, method = str(auth["url"]), "POST"
                body = {
                    "grant_type": auth.get("grant_type") or "client_credentials",
                    "client_assertion_type": auth.get("client_assertion_type")
                    or "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": jwt_assertion(auth),
                    **(auth.get("additional_token_params") or {}),
                }
                encoded = encode_request(
                    method=method,
                    url=url,
                    content=body,
                    content_type="form",
                    headers={},
                    params=None,
                    timeout_s=AUTH_TIMEOUT_S,
                    step=step.name,
                )
                credential_key = str(auth.get("credential_key") or "access_token")
            else:
                encoded = encode_request(
                    method=str(auth.get("method") or "POST"),
                    url=str(auth["url"]),
                    content=auth.get("content"),
                    content_type="json" if auth.get("content_type") == "json" else "form",
                    headers=auth.get("headers"),
                    params=auth.get("params"),
                    timeout_s=AUTH_TIMEOUT_S,
                    step=step.name,
                )
                credential_key = str(auth["credential_key"])
            try:
                reply = await self._http.send(encoded.build())
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise DeliveryError(
                    f"token request failed: {type(exc).__name__}: {exc}",
                    step=step.name,
                    target=safe_url(encoded.url),
                    retryable=True,
                    secrets=secret_list(step),
                ) from exc
            token = token_from_reply(reply, credential_key, step.name, secret_list(step))
            self._tokens[key] = token
            return token
