"""What every Request Processor job needs: the per-document state and the shared scope.

:class:`RpBase` holds the clients and the helpers (secrets, placeholder scope, Rossum fetches,
conditions) used by the get_content, call_api and handler modules; :class:`RequestProcessor`
(``runner.py``) combines them.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from rossflow.export.config import RpCompat
from rossflow.export.errors import StepError
from rossflow.export.rp.auth import TokenCache
from rossflow.export.rp.filters import evaluate_filter
from rossflow.export.rp.templates import FieldTree, Scope, fill, resolve_path
from rossflow.rossum import RossumClient, RossumError


class DocLike(Protocol):
    """What the runner needs of the engine's per-document state."""

    annotation_id: int
    queue_id: int
    ctx: Any
    warnings: list[str]
    deliveries: list[dict[str, Any]]
    last_target: str | None
    last_http_status: int | None
    dry_stopped: bool


Store = Callable[[DocLike, str, list[tuple[str, bytes]], list[str]], Awaitable[None]]
FileUpload = Callable[[str, Any, str, bytes, str, str], Awaitable[str]]


@dataclass
class RpDoc:
    """One annotation's Request Processor state for the run."""

    payload: dict[str, Any]
    fields: FieldTree
    properties: dict[str, Any] = field(default_factory=dict)
    writes: dict[str, list[Any]] = field(default_factory=dict)
    gates: dict[str, str] = field(default_factory=dict)  # failed evaluate step -> condition
    relations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SkipCall(Exception):
    """``compat.unresolved_placeholder: skip_call``: abandon this call_api entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RpBase:
    """Attributes and helpers shared by the Request Processor's jobs."""

    client: RossumClient
    ledger: Any
    store: Store
    upload: FileUpload
    compat: RpCompat
    dry_run: bool
    base_url: str
    _secrets: Callable[[Any], dict[str, Any]]
    _tokens: TokenCache
    _http: httpx.AsyncClient

    def _plain_secrets(self, step: Any) -> dict[str, Any]:
        return {
            k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in self._secrets(step).items()
        }

    def _secret_list(self, step: Any) -> list[str]:
        """Values to redact: secrets, tokens, and their base64 forms (``base64(...)``)."""
        values = [str(v) for v in self._plain_secrets(step).values() if v]
        values += self._tokens.values()
        rossum_token = self._rossum_token()
        if rossum_token:
            values.append(rossum_token)
        values += [base64.b64encode(v.encode()).decode() for v in values if len(v) >= 4]
        return values

    def _rossum_token(self) -> str | None:
        current = getattr(self.client, "_current_token", None)
        return current() if callable(current) else None

    def _scope(self, step: Any, state: RpDoc, **extra: Any) -> Scope:
        secrets = self._plain_secrets(step)
        payload = {**state.payload, "secrets": secrets}
        return Scope(
            payload=payload,
            fields=state.fields,
            properties=state.properties,
            secrets=secrets,
            extra=extra,
            base_url=self.base_url,
        )

    async def _fetch(self, url: str) -> Any:
        try:
            reply = await self.client.request("GET", url)
        except RossumError as exc:
            raise StepError(f"fetching {url} failed: {exc}", target="rossum") from exc
        if "json" in reply.headers.get("content-type", "").lower():
            try:
                return reply.json()
            except ValueError:
                return reply.content
        return reply.content

    async def _condition(self, condition: Mapping[str, Any], scope: Scope) -> bool:
        filled = await fill(condition, scope, fetch=None, strict=False)
        paths: dict[str, Any] = {}

        async def collect(cond: Mapping[str, Any]) -> None:
            for key, value in cond.items():
                if key in ("$and", "$or"):
                    for sub in value:
                        await collect(sub)
                elif key not in paths:
                    paths[key] = await resolve_path(key, scope, fetch=None, strict=False)

        await collect(filled)
        return evaluate_filter(filled, paths.get)
