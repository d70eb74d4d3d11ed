"""Request Processor HTTP: requests encoded as Rossum's engine (``requests``) sends them, its
three auth types, and the response object that handlers read.

Bodies follow ``Requester.execute``: ``json`` -> ``json.dumps`` with requests' separators,
``form`` and an omitted ``content_type`` -> ``data=`` (a dict is form-encoded, a string or bytes
go out unchanged), ``files`` -> multipart files, ``multipart`` -> list values as files and the
rest as fields. Auth: ``bearer`` (token request, ``{token}``), ``oauth1`` (a signed
``Authorization: OAuth`` header per request, via oauthlib) and ``oauth2_private_certificate``
(JWT client assertion, via joserfc).
"""

from __future__ import annotations

import binascii
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from rossflow.export.errors import StepError

__all__ = [
    "EncodedRequest",
    "encode_request",
    "jwt_assertion",
    "oauth1_header",
    "response_object",
    "safe_url",
    "token_from_reply",
]


@dataclass
class EncodedRequest:
    """Everything needed to send (and store) one request."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    timeout_s: float = 10.0
    meta: dict[str, Any] = field(default_factory=dict)

    def build(self) -> httpx.Request:
        """The httpx request, carrying its own timeout (connect, read, write, pool)."""
        t = self.timeout_s
        ext = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}}
        return httpx.Request(
            self.method, self.url, headers=self.headers, content=self.body, extensions=ext
        )

    def preview(self) -> bytes:
        """Bytes to store for operators."""
        return self.body or b""


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    return any(k.lower() == name.lower() for k in headers)


def _to_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


def _form(values: Any) -> bytes:
    """``requests``' ``_encode_params`` for a mapping or pairs."""
    pairs = values.items() if isinstance(values, Mapping) else values
    out: list[tuple[bytes, bytes]] = []
    for key, value in pairs:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is None:
                continue
            out.append((_to_bytes(key), _to_bytes(item)))
    return urlencode(out).encode()


_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-~")
_SUB_DELIMS = set("!$&'()*+,;=")
_PATH_CHARS = _UNRESERVED | _SUB_DELIMS | {":", "@", "/"}
_QUERY_CHARS = _UNRESERVED | _SUB_DELIMS | {":", "@", "/", "?"}
_PERCENT = re.compile(r"%[a-fA-F0-9]{2}")


def _encode_invalid(component: str, allowed: set[str]) -> str:
    """urllib3's ``_encode_invalid_chars``: what ``requests`` puts on the wire."""
    component, count = _PERCENT.subn(lambda m: m.group(0).upper(), component)
    raw = component.encode("utf-8", "surrogatepass")
    keep_percent = count == raw.count(b"%")
    out = bytearray()
    for byte in raw:
        char = chr(byte)
        if (keep_percent and char == "%") or (byte < 128 and char in allowed):
            out.append(byte)
        else:
            out += f"%{byte:02X}".encode()
    return out.decode()


def wire_url(url: str) -> str:
    """The URL as ``requests`` sends it (path and query percent-encoded like urllib3)."""
    parts = urlsplit(url)
    path = _encode_invalid(parts.path, _PATH_CHARS) if parts.path else ""
    query = _encode_invalid(parts.query, _QUERY_CHARS) if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, path or "/", query, ""))


def with_params(url: str, params: Mapping[str, Any] | None) -> str:
    """Append query parameters the way ``requests`` does (after any existing query)."""
    if not params:
        return url
    query = _form(params).decode()
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + query


def _file_tuple(name: str, value: Any) -> tuple[str | None, bytes, str | None]:
    """``requests``: ``[filename, content, mime]``; a bare value is a file named after the key."""
    if isinstance(value, (list, tuple)):
        filename = None if not value or value[0] is None else str(value[0])
        content = _to_bytes(value[1]) if len(value) > 1 else b""
        mime = str(value[2]) if len(value) > 2 and value[2] else None
        return filename, content, mime
    return name, _to_bytes(value), None


def _quote(value: str) -> str:
    return value.translate({10: "%0A", 13: "%0D", 34: "%22"})


def multipart_body(
    fields: list[tuple[str, bytes]],
    files: list[tuple[str, tuple[str | None, bytes, str | None]]],
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """``requests``' ``_encode_files`` (urllib3 ``encode_multipart_formdata``): plain fields
    first, then files; a part has a ``Content-Type`` only when a mime type was given."""
    boundary = boundary or binascii.hexlify(os.urandom(16)).decode()
    out = bytearray()
    parts: list[tuple[str, str | None, str | None, bytes]] = [
        (name, None, None, data) for name, data in fields
    ] + [(name, fname, mime, data) for name, (fname, data, mime) in files]
    for name, filename, mime, data in parts:
        disposition = f'form-data; name="{_quote(name)}"'
        if filename is not None:
            disposition += f'; filename="{_quote(filename)}"'
        headers = [f"Content-Disposition: {disposition}"]
        if mime:
            headers.append(f"Content-Type: {mime}")
        out += f"--{boundary}\r\n".encode("latin-1")
        out += ("\r\n".join(headers) + "\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode("latin-1")
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def encode_request(
    *,
    method: str,
    url: str,
    content: Any,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    timeout_s: float,
    step: str,
) -> EncodedRequest:
    """Encode a filled ``request`` object."""
    hdrs = {str(k): "" if v is None else str(v) for k, v in (headers or {}).items()}
    req = EncodedRequest(
        method=method.upper(),
        url=wire_url(with_params(str(url), params)),
        headers=hdrs,
        timeout_s=timeout_s,
    )
    if content_type == "json":
        try:
            req.body = json.dumps(content, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise StepError(f"content cannot be sent as JSON: {exc}", step=step) from exc
        if not _has_header(hdrs, "content-type"):
            hdrs["Content-Type"] = "application/json"
    elif content_type in ("files", "multipart"):
        items = content if isinstance(content, Mapping) else {}
        if content is not None and not isinstance(content, Mapping):
            raise StepError(
                f"content_type {content_type!r} needs an object of fields, got "
                f"{type(content).__name__}",
                step=step,
            )
        files: list[tuple[str, tuple[str | None, bytes, str | None]]] = []
        data: list[tuple[str, bytes]] = []
        for key, value in items.items():
            if content_type == "files" or isinstance(value, (list, tuple)):
                files.append((str(key), _file_tuple(str(key), value)))
            elif value is not None:
                data.append((str(key), _to_bytes(value)))
        req.body, ctype = multipart_body(data, files)
        if not _has_header(hdrs, "content-type"):
            hdrs["Content-Type"] = ctype
    elif content is not None:  # form, raw
        if isinstance(content, (Mapping, list)):
            req.body = _form(content)
            if not _has_header(hdrs, "content-type"):
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            req.body = _to_bytes(content)
    return req


# ------------------------------------------------------------------------------ auth


def token_from_reply(
    reply: httpx.Response, credential_key: str, step: str, secrets: list[str] | None = None
) -> str:
    """The token at ``credential_key`` (a dot path) of a token reply."""
    try:
        data: Any = reply.json()
    except ValueError:
        data = None
    for part in credential_key.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    if not data:
        raise StepError(
            f"auth token not found at key {credential_key!r} of the token reply",
            step=step,
            target=str(reply.request.url.copy_with(query=None)),
            http_status=reply.status_code,
            reply=reply.text,
            secrets=secrets,
        )
    return str(data)


def oauth1_header(auth: Mapping[str, Any], method: str, url: str) -> str:
    """``Authorization: OAuth …`` for one request (realm is not part of the signature)."""
    from oauthlib import oauth1

    method_name = str(auth.get("signature_method") or "HMAC-SHA256")
    client = oauth1.Client(
        str(auth["consumer_key"]),
        client_secret=str(auth["consumer_secret"]),
        resource_owner_key=str(auth["token_key"]),
        resource_owner_secret=str(auth["token_secret"]),
        signature_method=(
            oauth1.SIGNATURE_HMAC_SHA1
            if method_name == "HMAC-SHA1"
            else oauth1.SIGNATURE_HMAC_SHA256
        ),
        realm=str(auth["realm"]) if auth.get("realm") else None,
        signature_type=oauth1.SIGNATURE_TYPE_AUTH_HEADER,
    )
    try:
        _, headers, _ = client.sign(url, http_method=method.upper())
    except ValueError as exc:
        raise StepError(f"cannot sign the request with OAuth 1.0a: {exc}") from None
    return str(headers["Authorization"])


def jwt_assertion(auth: Mapping[str, Any], now: float | None = None) -> str:
    """Signed JWT client assertion of ``oauth2_private_certificate``."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    alg = str(auth.get("signature_algorithm") or "PS256")
    pem = str(auth["private_certificate"]).replace("\\n", "\n")
    if "ENCRYPTED" in pem:
        raise StepError("encrypted private keys are not supported; store the key unencrypted")
    try:
        key = RSAKey.import_key(pem)
    except Exception as exc:
        raise StepError(f"private_certificate is not an RSA private key in PEM: {exc}") from None
    issued = int(now if now is not None else time.time())
    scope = auth.get("scope", ["rest_webservices"])
    claims: dict[str, Any] = {
        "iss": str(auth["client_id"]),
        "scope": scope,
        "aud": str(auth.get("audience") or auth["url"]),
        "iat": issued,
        "exp": issued + int(auth.get("assertion_expiry") or 3600),
    }
    claims.update(auth.get("additional_claims") or {})
    header = {"alg": alg, "typ": "JWT", "kid": str(auth["certificate_id"])}
    return str(jwt.encode(header, claims, key, algorithms=[alg]))


# -------------------------------------------------------------------------- responses


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (for messages and records)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def response_object(reply: httpx.Response, elapsed_s: float) -> dict[str, Any]:
    """The ``response`` handlers read (Rossum's keys; ``body`` only for known content types)."""
    ctype = reply.headers.get("content-type", "")
    out: dict[str, Any] = {
        "status_code": reply.status_code,
        "headers": {k.lower().replace("-", "_"): v for k, v in reply.headers.items()},
        "headers_raw": [[k, v] for k, v in reply.headers.multi_items()],
        "text": reply.text,
        "content": reply.content,
        "url": str(reply.url),
        "ok": reply.status_code < 400,
        "reason": reply.reason_phrase,
        "elapsed": elapsed_s,
        "encoding": reply.encoding,
        "cookies": dict(reply.cookies),
    }
    lowered = ctype.lower()
    if not ctype or "unknown" in lowered:
        return out
    if "application/json" in lowered:
        try:
            out["body"] = reply.json()
        except ValueError:
            out["body"] = reply.text
    elif "xml" in lowered or "text" in lowered:
        out["body"] = reply.text
    else:
        out["body"] = reply.content
    return out
