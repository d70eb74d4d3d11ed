"""URLs: a relative path joined to a base, and a URL safe to put into a message."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def join_url(base: str, url: str | None) -> str:
    """``url`` when absolute, else ``base`` + ``/`` + ``url`` (``base`` when ``url`` is empty)."""
    if not url:
        return base
    if url.startswith(("http://", "https://")):
        return url
    return base.rstrip("/") + "/" + url.lstrip("/")


def safe_url(url: str) -> str:
    """Drop user-info (``user:pass@``) from a URL before it goes into a message."""
    parts = urlsplit(str(url))
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)
