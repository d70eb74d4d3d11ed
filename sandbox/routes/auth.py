"""``/v1`` index and ``/v1/auth/…``: login (token), logout, the current user."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.routes._http import (
    authenticate,
    endpoint,
    json_body,
    reply,
    sb,
)
from sandbox.util import (
    PH,
    ApiError,
    public,
)


async def api_index(request: Request) -> Response:
    names = (
        "organizations",
        "workspaces",
        "schemas",
        "connectors",
        "inboxes",
        "queues",
        "documents",
        "users",
        "groups",
        "annotations",
        "pages",
        "hooks",
        "uploads",
        "tasks",
    )
    return reply(request, {n: f"{PH}/v1/{n}" for n in names})


async def login(request: Request) -> Response:
    data = await json_body(request)
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "username and password are required")
    lifetime = data.get("max_token_lifetime_s")
    if lifetime is not None:
        try:
            lifetime = float(lifetime)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "max_token_lifetime_s must be a number") from exc
        if lifetime <= 0:
            raise ApiError(400, "max_token_lifetime_s must be positive")
    key = sb(request).login(username, password, lifetime)
    if key is None:
        body = {
            "detail": "Unable to log in with provided credentials.",
            "code": "authentication_failed",
        }
        return JSONResponse(body, status_code=401)
    return reply(request, {"key": key, "domain": request.url.hostname})


async def logout(request: Request) -> Response:
    authenticate(request, basic=False)
    _, _, key = request.headers["authorization"].strip().partition(" ")
    sb(request).store.delete_token(key.strip())
    return reply(request, {"detail": "Successfully logged out."})


async def auth_user(request: Request, user: dict[str, Any]) -> Response:
    """The calling user (used by clients to find their organization)."""
    return reply(request, public(user))


def routes() -> list[Route]:
    """This resource's routes, in matching order."""
    v1 = "/api/v1"
    return [
        Route(v1, api_index, methods=["GET"]),
        Route(f"{v1}/auth/login", login, methods=["POST"]),
        Route(f"{v1}/auth/logout", logout, methods=["POST"]),
        Route(f"{v1}/auth/user", endpoint(auth_user), methods=["GET"]),
    ]
