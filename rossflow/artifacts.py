"""Durable store of what was sent and received, per annotation and step.

Rossum's hosted pipeline keeps rendered files and API replies as document relations
(``export_reference_key``, ``response_*_reference_key``). We keep them on disk, with secrets
redacted before they are written, so an operator (or a later step on a rerun) can see exactly
what happened. Layout: ``<root>/<annotation_id>/<step>/<name>``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """Replace every occurrence of each secret (≥ 4 chars) with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            data = data.replace(secret.encode(), b"***")
    return data


class ArtifactStore:
    def __init__(self, root: str | Path = ".rossflow/artifacts") -> None:
        self.root = Path(root)

    def _dir(self, annotation_id: int, step: str) -> Path:
        return self.root / str(int(annotation_id)) / (_SAFE.sub("_", step) or "_")

    def put(
        self,
        annotation_id: int,
        step: str,
        name: str,
        data: bytes,
        *,
        secrets: Iterable[str] = (),
    ) -> str:
        """Write atomically; returns a reference relative to the store root."""
        directory = self._dir(annotation_id, step)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / (_SAFE.sub("_", name) or "_")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(redact_bytes(data, secrets))
        os.replace(tmp, final)
        return str(final.relative_to(self.root))

    def get(self, ref: str) -> bytes:
        path = (self.root / ref).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact reference escapes the store: {ref!r}")
        return path.read_bytes()

    def path(self, ref: str) -> Path:
        return self.root / ref

    def purge(self, annotation_id: int) -> int:
        """Delete everything stored for one annotation (pipeline cleaning)."""
        directory = self.root / str(int(annotation_id))
        if not directory.exists():
            return 0
        count = sum(1 for p in directory.rglob("*") if p.is_file())
        shutil.rmtree(directory)
        return count
