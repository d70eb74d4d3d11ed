"""The local stack's Prefect server: Prefect's own server app, plus a fast retry on busy SQLite.

Why: on SQLite, Prefect's server refuses a write at once when another write committed since the
request's transaction began (WAL mode: ``SQLITE_BUSY``/``SQLITE_BUSY_SNAPSHOT``; ``busy_timeout``
does not apply). It answers ``503`` without ``Retry-After``, and Prefect's HTTP client waits
``2**1`` s before it tries again. The server's own in-process client, which creates the flow run
of a triggered deployment, meets this on most webhook-triggered runs: the trigger service commits
its bucket while the action already creates the run. That 2 s was most of the webhook → ERP
latency on SQLite (docs/triggers.md).

:class:`SqliteBusyRetry` re-runs such a request inside the server after 10-400 ms, up to six
times (0.8 s in all), and only then lets the ``503`` through, so Prefect's client still retries
as before when the database stays busy. A request that failed this way was rolled back, and
Prefect's client sends the very same request again anyway: re-running it changes nothing but the
wait. Installed only on SQLite; on PostgreSQL the server is Prefect's, unchanged.

``rossflow prefect-server`` (``python -m rossflow.localstack.prefect_server``) takes the
options of ``prefect server start`` that the local stack uses. The app is the one Prefect's
``create_app`` caches, so the in-process client of the server's own services goes through the
retry too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("rossflow.prefect_server")

#: Waits before each re-run; after the last one the 503 goes to the client.
RETRY_DELAYS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
#: Response header naming how many times the server re-ran the request (only when it did).
RETRIES_HEADER = b"x-rossflow-sqlite-retries"


class SqliteBusyRetry:
    """ASGI middleware: re-run an HTTP request the app answered with 503 (busy SQLite)."""

    def __init__(self, app: ASGIApp, delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.app = app
        self.delays = tuple(delays)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        for attempt in range(len(self.delays) + 1):
            last = attempt == len(self.delays)
            held = await self._attempt(scope, body, receive, send, retries=attempt, last=last)
            if not held:
                return
            delay = self.delays[attempt]
            logger.info(
                "SQLite busy: %s %s answered 503; running it again in %.2f s (re-run %d of %d)",
                scope.get("method"),
                scope.get("path"),
                delay,
                attempt + 1,
                len(self.delays),
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, *, retries: int, last: bool
    ) -> bool:
        """Run the app once; True when it answered 503 and the answer was held back."""
        replayed = False
        held = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def forward(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] == 503 and not last:
                    held = True
                    return
                if retries:
                    headers = list(message.get("headers", []))
                    headers.append((RETRIES_HEADER, str(retries).encode()))
                    message = {**message, "headers": headers}
            if held:
                return  # the held 503's body
            await send(message)

        try:
            # A copy: routing (Starlette's Mount) rewrites the scope in place.
            await self.app(dict(scope), replay, forward)
        except Exception:
            # Starlette's error middleware sends the handler's 503 and then re-raises.
            if not held:
                raise
        return held


def build_app() -> Any:
    """Prefect's server app (the cached one), with :class:`SqliteBusyRetry` on SQLite."""
    import prefect.settings
    from prefect.server.api.server import create_app
    from prefect.server.utilities.database import get_dialect

    app = create_app(final=True)
    url = prefect.settings.PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name == "sqlite" and not getattr(app.state, "rossflow_sqlite_retry", False):
        app.add_middleware(SqliteBusyRetry)
        app.state.rossflow_sqlite_retry = True
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rossflow prefect-server",
        description=(
            "Prefect's server for the local stack: `prefect server start` plus a fast in-server "
            "retry when SQLite is busy (see docs/triggers.md). Settings come from PREFECT_* "
            "variables as usual."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--no-ui", action="store_true", help="serve the API only")
    parser.add_argument("--analytics-off", action="store_true")
    parser.add_argument("--log-level", default=None, help="default: PREFECT_SERVER_LOGGING_LEVEL")
    parser.add_argument("--keep-alive-timeout", type=int, default=None)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # Before Prefect's settings are first read: the same settings for the app built here and
    # for the in-process client's create_app() later, so both get the one cached app.
    if args.no_ui:
        os.environ["PREFECT_SERVER_UI_ENABLED"] = "false"
    if args.analytics_off:
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if args.log_level:
        os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = args.log_level.upper()
    api_url = f"http://{args.host}:{args.port}/api"
    os.environ.setdefault("PREFECT_UI_API_URL", api_url)

    import uvicorn
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    level = PREFECT_SERVER_LOGGING_LEVEL.value()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    keep_alive = args.keep_alive_timeout or PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value()
    print(f"Prefect server (rossflow local stack) on {api_url}", flush=True)
    uvicorn.run(
        build_app(),
        host=args.host,
        port=args.port,
        timeout_keep_alive=keep_alive,
        log_level=str(level).lower(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
