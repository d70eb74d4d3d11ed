"""Resolves the ``target:`` names of pipeline steps to connection objects (blocks)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from rossflow.delivery.sftp import SftpConnectionInfo

from .errors import StepError


class Targets:
    """Resolves the ``target:`` names of steps to connection objects.

    ``rest``/``sftp``/``s3`` hold the connection objects by name: the flow resolves the blocks
    a pipeline names before the run (``flows.export.resolve_targets``); tests and the demo pass
    objects directly.
    """

    def __init__(
        self,
        *,
        rest: Mapping[str, Any] | None = None,
        sftp: Mapping[str, SftpConnectionInfo] | None = None,
        s3: Mapping[str, Any] | None = None,
    ) -> None:
        self._given: dict[str, dict[str, Any]] = {
            "rest": dict(rest or {}),
            "sftp": dict(sftp or {}),
            "s3": dict(s3 or {}),
        }
        self._lock = threading.Lock()

    def get(self, kind: str, name: str) -> Any:
        with self._lock:
            found = self._given[kind].get(name)
        if found is None:
            raise StepError(f"unknown {kind} target {name!r} (no block or inline config)")
        return found
