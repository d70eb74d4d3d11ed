"""What a REST delivery returns (the target's answer, whatever its status) or raises (the
target could not be reached despite retries)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rossflow.http import safe_url

__all__ = ["DeliveryError", "DeliveryResult"]


@dataclass(frozen=True)
class DeliveryResult:
    """What the target answered to the last attempt (any status: the caller judges it)."""

    status_code: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed_s: float
    attempts: int
    url: str
    idempotency_key: str | None = None
    # What each attempt ended in ("HTTP 503", "ReadTimeout (…)"), and whether one that failed
    # may have reached the target and been processed (timeout, 5xx, dropped connection).
    history: tuple[str, ...] = ()
    maybe_processed: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class DeliveryError(Exception):
    """The target could not be reached (or refused our credentials) despite retries.

    The message names the method, URL (without credentials), attempts and cause; never secrets.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        method: str = "POST",
        attempts: int = 0,
        cause: BaseException | None = None,
        history: tuple[str, ...] = (),
        maybe_processed: bool = False,
    ) -> None:
        self.url = safe_url(url)
        self.method = method
        self.attempts = attempts
        self.cause = cause
        self.history = history
        self.maybe_processed = maybe_processed
        super().__init__(message)
