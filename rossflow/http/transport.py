"""httpx transports for the pipeline's async clients (Rossum API, REST delivery).

:func:`async_transport` is httpx's own ``AsyncHTTPTransport`` with one change: the connection
pool's check "has the server closed this idle connection?" reads a socket kept by the stream
instead of asking anyio for it. httpcore runs that check for every pooled connection each time a
request starts or a response closes, and anyio builds a dict of socket attributes (with a
``getpeername`` system call) on every ask: with 16 connections in a pool that was 10–15 % of the
export and ingest flows' CPU (``bench/``). Everything else (TLS, HTTP/1.1, timeouts, errors) is
unchanged.

:class:`BlockingTransport` lets an async client send with blocking sockets, for a loop that one
thread drives one request at a time.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable


class _Stream(httpcore.AsyncNetworkStream):
    """An anyio stream whose ``is_readable`` check uses the socket fetched once."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._sock is not None and is_socket_readable(self._sock)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(
            await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def async_transport(
    *,
    verify: ssl.SSLContext | str | bool = True,
    limits: httpx.Limits | None = None,
    **kwargs: Any,
) -> httpx.AsyncHTTPTransport:
    """``httpx.AsyncHTTPTransport(verify=…, limits=…)`` with the cheaper idle-connection check.

    Falls back to the plain transport if a future httpx/httpcore moves the pool's backend.
    """
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits or httpx.Limits(), **kwargs)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = _Backend()
    return transport


class _AsyncOverSync(httpx.AsyncByteStream):
    """A synchronous response body offered to the async client (read with blocking calls)."""

    def __init__(self, stream: httpx.SyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        self._stream.close()


class BlockingTransport(httpx.AsyncBaseTransport):
    """An async transport that sends with httpx's *synchronous* transport (blocking sockets).

    For a client whose event loop belongs to one thread that handles one request at a time (the
    ingest uploads: each I/O thread drives its own loop). Such a loop gains nothing from
    non-blocking sockets, and the sync stack costs about half the CPU per request of the async
    one (no anyio streams, cancel scopes or asyncio callbacks). Never use it on a loop shared by
    concurrent requests: a request blocks the whole loop while it waits for the network.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits | None = None,
        **kwargs: Any,
    ) -> None:
        self._sync = httpx.HTTPTransport(verify=verify, limits=limits or httpx.Limits(), **kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Request bodies built by httpx (bytes, JSON, forms, multipart over a file) are both
        # sync and async streams, so the sync transport can send them as they are.
        response = self._sync.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_AsyncOverSync(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        self._sync.close()
