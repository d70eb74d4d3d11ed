"""Timeouts of one HTTP client, in seconds: none of them unbounded (SDK weakness W3)."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict


class Timeouts(BaseModel):
    """connect / read / write / pool timeouts; REST targets use a longer read by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 30.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)
