"""One collector of every secret value a run knows, and the masking of them everywhere.

A run (the export engine) creates one :class:`Redactor`, adds the pipeline secrets, the
credentials of each target it resolves (every ``SecretStr`` inside the block or endpoint) and
the tokens it obtains at run time (OAuth2, Rossum v1 ``auth``), and passes it wherever a reply
is stored or quoted: artifacts, ledger results, messages written to Rossum, logs. Servers that
echo a request back (debug modes, some gateways) then cannot leak a credential through us.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "***"
# Secrets shorter than this are not masked: masking "1" or "ab" would shred every message.
MIN_SECRET_LEN = 4
# Authorization headers echoed back often carry credentials we were never told about.
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_AUTH_SCHEME_BYTES = re.compile(rb"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def _raw(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    raw = getter() if callable(getter) else value
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return raw if isinstance(raw, str) else str(raw)


def _variants(value: str) -> set[str]:
    """The value as it may appear in a reply: as is, JSON-escaped, URL-encoded."""
    out = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote(value, safe="/:")}
    return {v for v in out if len(v) >= MIN_SECRET_LEN}


class Redactor:
    """Thread-safe set of secret values; masks them (longest first) in text, bytes and data.

    Iterating yields the values, so a redactor can be passed wherever a list of secrets is
    accepted (e.g. :func:`rossflow.export.errors.redact`, ``ArtifactStore.put_many``).
    """

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._sorted: tuple[str, ...] = ()
        self.add(*values)

    def add(self, *values: Any) -> None:
        """Add secret values (str, bytes, ``SecretStr``); short and empty ones are ignored."""
        new: set[str] = set()
        for value in values:
            raw = _raw(value)
            if raw and len(raw) >= MIN_SECRET_LEN:
                new |= _variants(raw)
        if not new:
            return
        with self._lock:
            if new <= self._values:
                return
            self._values |= new
            self._sorted = tuple(sorted(self._values, key=len, reverse=True))

    def add_from(self, obj: Any) -> None:
        """Add every ``SecretStr`` found in ``obj`` (pydantic models incl. Prefect blocks,
        mappings, sequences), every value of a secrets mapping, and URL passwords."""
        self._collect(obj, depth=0, seen=set(), plain_values=True)

    def add_url(self, url: str | None) -> None:
        """The password of a ``user:password@host`` URL."""
        if url:
            try:
                self.add(urlsplit(str(url)).password)
            except ValueError:
                pass

    def add_auth_header(self, value: str | None) -> None:
        """An ``Authorization``-style header value and its credential part."""
        if not value:
            return
        _, _, credential = value.partition(" ")
        self.add(value, credential.strip() or None)

    def _collect(self, obj: Any, *, depth: int, seen: set[int], plain_values: bool) -> None:
        if depth > 6 or obj is None or id(obj) in seen:
            return
        if isinstance(obj, SecretStr | SecretBytes):
            self.add(obj)
            return
        if isinstance(obj, str | bytes):
            if plain_values:
                self.add(obj)
            return
        seen.add(id(obj))
        if isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                value = getattr(obj, name, None)
                if isinstance(value, str) and name.endswith("url"):
                    self.add_url(value)
                self._collect(value, depth=depth + 1, seen=seen, plain_values=False)
        elif isinstance(obj, Mapping):
            for value in obj.values():
                self._collect(value, depth=depth + 1, seen=seen, plain_values=plain_values)
        elif isinstance(obj, list | tuple | set | frozenset):
            for value in obj:
                self._collect(value, depth=depth + 1, seen=seen, plain_values=plain_values)
        elif hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                self._collect(value, depth=depth + 1, seen=seen, plain_values=False)

    def values(self) -> tuple[str, ...]:
        with self._lock:
            return self._sorted

    def __iter__(self) -> Iterator[str]:
        return iter(self.values())

    def __len__(self) -> int:
        return len(self.values())

    def text(self, text: str | None) -> str:
        """``text`` with every known secret and any bearer/basic credential masked."""
        if not text:
            return text or ""
        for value in self.values():
            if value in text:
                text = text.replace(value, REDACTED)
        return _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    __call__ = text

    def bytes(self, data: bytes) -> bytes:
        if not data:
            return data
        for value in self.values():
            needle = value.encode()
            if needle in data:
                data = data.replace(needle, REDACTED.encode())
        return _AUTH_SCHEME_BYTES.sub(lambda m: m.group(1) + b" " + REDACTED.encode(), data)

    def data(self, obj: Any) -> Any:
        """A copy of JSON-like ``obj`` with every string redacted."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, Mapping):
            return {k: self.data(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.data(v) for v in obj]
        return obj
