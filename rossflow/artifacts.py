"""Durable store of what was sent and received, per annotation and step.

Rossum's hosted pipeline keeps rendered files and API replies as document relations
(``export_reference_key``, ``response_*_reference_key``). We keep them on disk, with secrets
redacted before they are written, so an operator (or a later step on a rerun) can see exactly
what happened. Layout: ``<root>/<annotation_id>/<step>/<name>``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """Replace every occurrence of each secret (≥ 4 chars) with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            data = data.replace(secret.encode(), b"***")
    return data


class ArtifactStore:
    """Thread-safe: the export engine writes from a small thread pool, off its event loop."""

    def __init__(self, root: str | Path = ".rossflow/artifacts") -> None:
        self.root = Path(root)
        # Directories this process made: one mkdir per (annotation, step), not one per file.
        self._made: set[Path] = set()
        self._lock = threading.Lock()
        self._tmp_names = itertools.count()

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
        return self.put_many(annotation_id, step, [(name, data)], secrets=secrets)[0]

    def put_many(
        self,
        annotation_id: int,
        step: str,
        files: Sequence[tuple[str, bytes]],
        *,
        secrets: Iterable[str] = (),
    ) -> list[str]:
        """Write several files of one step atomically (each: temporary name, then rename)."""
        directory = self._dir(annotation_id, step)
        secrets = list(secrets)
        refs = []
        for name, data in files:
            final = directory / (_SAFE.sub("_", name) or "_")
            self._write(directory, final, redact_bytes(data, secrets))
            refs.append(str(final.relative_to(self.root)))
        return refs

    def _write(self, directory: Path, final: Path, data: bytes) -> None:
        if directory not in self._made:
            directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made.add(directory)
        tmp = directory / f".tmp-{os.getpid()}-{next(self._tmp_names)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # removed behind our back (purge, an operator): recreate
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)

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
        with self._lock:
            self._made = {d for d in self._made if d.parent != directory}
        if not directory.exists():
            return 0
        count = sum(1 for p in directory.rglob("*") if p.is_file())
        shutil.rmtree(directory)
        return count
