"""Small helpers shared by the sandbox modules: time, URLs, errors, JSON responses.

URLs are stored with the placeholder ``@@BASE@@`` instead of the server's base
(``http://host:port/api``) because the same stored object is served to clients that reach the
server under different host names; the placeholder is replaced in the serialised JSON text,
which is cheap even for big pages.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

PH = "@@BASE@@"
DATE_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"

# (detail, code) for every status the spec lists in §3.4; used for all error bodies.
ERROR_BODIES: dict[int, tuple[str, str]] = {
    400: ("Bad Request.", "bad_request"),
    401: ("Invalid token.", "authentication_failed"),
    403: ("Access to the requested resource is forbidden.", "access_forbidden"),
    404: ("Not found.", "not_found"),
    405: ("Method not allowed.", "method_not_allowed"),
    409: ("Conflict.", "conflict_status"),
    413: ("Payload Too Large.", "payload_too_large"),
    429: ("Request was rate limited.", "rate_limited"),
    500: ("Server error.", "error"),
    502: ("Bad Gateway.", "bad_gateway"),
    503: ("Service Unavailable.", "service_unavailable"),
    504: ("Gateway timeout.", "gateway_timeout"),
}
RATE_LIMIT_URL = "https://rossum.app/api/docs/openapi/guides/overview/#rate-limiting"


def now_iso() -> str:
    """Current UTC time in Rossum's format (``2018-06-01T21:36:42.223415Z``)."""
    return datetime.now(UTC).strftime(DATE_FMT)


def parse_dt_filter(raw: str) -> str | None:
    """Parse a ``*_before``/``*_after`` filter value into the stored format (None if invalid).

    Accepts ``2019-11-15``, ``2019-11-14 22:00:00``, ``2019-11-14T22:00:00Z`` and offsets.
    """
    text = raw.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime(DATE_FMT)


def ref(collection: str, obj_id: int | None) -> str | None:
    """Stored (placeholder) URL of an object, or None."""
    return None if obj_id is None else f"{PH}/v1/{collection}/{obj_id}"


_URL_RE = re.compile(r"/v1/([a-z_]+)/(\d+)/?$")


def parse_ref(value: Any, collection: str) -> int | None:
    """Id from an absolute URL (any host) or an int/str id; None if not a ``collection`` ref."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        m = _URL_RE.search(value)
        if m and m.group(1) == collection:
            return int(m.group(2))
    return None


def ref_id(url: str | None) -> int | None:
    """Trailing integer id of a stored URL."""
    if not url:
        return None
    m = _URL_RE.search(url)
    return int(m.group(2)) if m else None


class ApiError(Exception):
    """An error answered with the exact §3.4 body; ``message`` goes to ``X-Sandbox-Error``."""

    def __init__(self, status: int, message: str = "", headers: dict[str, str] | None = None):
        super().__init__(message or str(status))
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(status: int) -> dict[str, Any]:
    detail, code = ERROR_BODIES.get(status, ("Error.", "error"))
    body: dict[str, Any] = {"detail": detail, "code": code}
    if status == 429:
        body["url"] = RATE_LIMIT_URL
    return body


def error_response(
    status: int, message: str = "", headers: dict[str, str] | None = None
) -> Response:
    """§3.4 body; a human hint rides in ``X-Sandbox-Error`` so the body stays exact."""
    hdrs = dict(headers or {})
    if message:
        hdrs["X-Sandbox-Error"] = message.encode("ascii", "replace").decode()[:500]
    return Response(
        json.dumps(error_body(status)),
        status_code=status,
        headers=hdrs,
        media_type="application/json",
    )


def dumps(obj: Any, base: str) -> str:
    """JSON text with stored placeholder URLs resolved against ``base``."""
    return json.dumps(obj, ensure_ascii=False).replace(PH, base)


def resolve(obj: Any, base: str) -> Any:
    """Deep copy of ``obj`` with placeholder URLs resolved (for hook payloads)."""
    return json.loads(dumps(obj, base))


def json_response(
    obj: Any, base: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dumps(obj, base).encode("utf-8"),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """Object without internal ``_``-prefixed keys."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}
