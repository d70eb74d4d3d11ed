"""Rossum hook signatures (spec §9.4), verified in constant time.

Rossum signs the raw request body with the hook's ``config.secret``:

* ``X-Rossum-Signature-SHA256: sha256=<hex HMAC-SHA256(secret, body)>`` (current);
* ``X-Elis-Signature: sha1=<hex HMAC-SHA1(secret, body)>`` (legacy, still sent).

When both headers are present the SHA-256 one decides (a wrong SHA-256 signature is not rescued
by a right SHA-1 one). Several secrets may be configured to rotate the hook secret without
downtime: a body signed with any of them is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

SHA256_HEADER = "x-rossum-signature-sha256"
SHA1_HEADER = "x-elis-signature"

_ALGORITHMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """The header value Rossum sends for ``body`` (``sha256=…`` or ``sha1=…``)."""
    digest = hmac.new(secret.encode(), body, _ALGORITHMS[algorithm]).hexdigest()
    return f"{algorithm}={digest}"


def signature_headers(secret: str, body: bytes) -> dict[str, str]:
    """Both headers, as Rossum (and the sandbox) send them."""
    return {
        "X-Rossum-Signature-SHA256": sign(secret, body, "sha256"),
        "X-Elis-Signature": sign(secret, body, "sha1"),
    }


def verify(headers: Mapping[str, str], body: bytes, secrets: Iterable[str]) -> str | None:
    """Check the signature of ``body``; returns ``None`` when valid, else the reason.

    ``headers`` must be case-insensitive (Starlette's ``Headers``) or use lower-case keys.
    """
    header, expected_algorithm = None, ""
    if headers.get(SHA256_HEADER):
        header, expected_algorithm = headers[SHA256_HEADER], "sha256"
    elif headers.get(SHA1_HEADER):
        header, expected_algorithm = headers[SHA1_HEADER], "sha1"
    if header is None:
        return "missing signature (X-Rossum-Signature-SHA256 or X-Elis-Signature)"
    algorithm, sep, received = header.strip().partition("=")
    if not sep or algorithm.lower() != expected_algorithm:
        return f"malformed signature header (expected {expected_algorithm}=<hex>)"
    received = received.strip().lower()
    valid = False
    for secret in secrets:
        computed = sign(secret, body, expected_algorithm).partition("=")[2]
        # compare every secret (no early exit) so the time does not depend on which one matched
        valid |= hmac.compare_digest(computed.encode(), received.encode())
    return None if valid else "signature mismatch"
