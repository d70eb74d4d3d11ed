"""Starlette application of the Rossum-compatible sandbox (``/api/v1/…`` plus ``/_sandbox/…``).

``create_app(config)`` builds the ASGI app; all state lives in :class:`sandbox.core.Sandbox`
(``app.state.sandbox``). Conventions of the real API that the handlers follow:

* absolute URLs built from the request's own base (``http://<Host>/api``), integer ids,
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` UTC dates, paths with or without trailing slash;
* lists: ``{"pagination": {total, total_pages, next, previous}, "results": [...]}``, ``page``
  (default 1; a page past the end -> 404) and ``page_size`` (default 20, capped at 100);
* errors: exact §3.4 bodies ``{"detail", "code"}`` (429 adds ``url``); a human-readable reason is
  in the ``X-Sandbox-Error`` response header;
* auth: ``Authorization: Bearer|Token <key>`` (scheme case-insensitive); HTTP Basic only on
  uploads, ``POST /v1/documents`` and export. No credentials -> 403 ``access_forbidden``;
  unknown/expired/logged-out token or wrong Basic credentials -> 401 ``authentication_failed``.

The handlers live in :mod:`sandbox.routes`, one module per resource, each listing its routes in
``routes()``; their shared HTTP helpers are in :mod:`sandbox.routes._http`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.config import SandboxConfig
from sandbox.core import Sandbox
from sandbox.faults import SandboxMiddleware, silence_drop_logs
from sandbox.routes import (
    accounts,
    admin,
    auth,
    documents,
    export,
    hooks,
    queues,
    schemas,
    uploads,
)
from sandbox.routes import annotations as annotation_routes  # ``annotations`` is a __future__ name
from sandbox.util import ApiError, error_response

#: Route modules in matching order (paths of different modules never overlap).
ROUTE_MODULES = (
    auth,
    accounts,
    schemas,
    queues,
    export,
    uploads,
    documents,
    annotation_routes,
    hooks,
    admin,
)


def _routes() -> list[Route]:
    return [route for module in ROUTE_MODULES for route in module.routes()]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, f"{type(exc).__name__}: {exc}")


def create_app(config: SandboxConfig | None = None) -> SandboxMiddleware:
    """Build the sandbox ASGI app (state in ``app.app.state.sandbox``)."""
    config = config or SandboxConfig()
    box = Sandbox(config)
    silence_drop_logs()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await box.startup()
        try:
            yield
        finally:
            await box.shutdown()

    routes = _routes()
    star = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, 500: _server_error},
    )
    star.router.redirect_slashes = False
    star.state.sandbox = box
    wrapper = SandboxMiddleware(star, routes, config, box.faults, box.limiter, box.stats)
    wrapper.sandbox = box
    return wrapper
