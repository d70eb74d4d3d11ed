"""rossflow.http.aiohttp_transport: httpx on aiohttp, against raw servers on 127.0.0.1.

What matters most is the error mapping: only a failure before anything was sent may read as
"not sent" (a POST is otherwise resent blind by the retry logic)."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from rossflow.http import AiohttpTransport, may_have_arrived

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str, list[bytes]]:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(_Tap(reader, heads), writer)  # type: ignore[arg-type]

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads


class _Tap:
    """A reader that keeps each request head it reads (to assert on what was sent)."""

    def __init__(self, reader: asyncio.StreamReader, heads: list[bytes]) -> None:
        self._reader, self._heads = reader, heads

    async def readuntil(self, sep: bytes) -> bytes:
        data = await self._reader.readuntil(sep)
        self._heads.append(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length) if length else b""


def _client(**kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=httpx.Limits(max_connections=4)), **kw
    )  # type: ignore[arg-type]


async def test_round_trip_keeps_headers_body_and_decodes_gzip() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            reply = gzip.compress(b'{"echo": "%s"}' % body)
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)
            )
            await writer.drain()

    server, url, heads = await _serve(handler)
    async with server, _client() as client:
        for n in range(5):
            resp = await client.post(
                f"{url}/api/invoices?x=1",
                content=b"doc-%d" % n,
                headers={"Idempotency-Key": f"k{n}", "Content-Type": "application/json"},
            )
            assert resp.status_code == 201 and resp.reason_phrase == "Created"
            assert resp.json() == {"echo": f"doc-{n}"}
            assert resp.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert connections == 1  # kept alive and reused
    head = heads[-1].decode().lower()
    assert head.startswith("post /api/invoices?x=1 http/1.1")
    assert "idempotency-key: k4" in head and "content-type: application/json" in head
    assert "aiohttp" not in head  # httpx's own User-Agent, not aiohttp's


async def test_refused_connection_is_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with _client() as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post(f"http://127.0.0.1:{port}/", content=b"x")
    assert not may_have_arrived(caught.value)


async def test_connection_dropped_after_the_request_may_have_arrived() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # read it all (it may be booked), then vanish

    server, url, _ = await _serve(handler)
    async with server, _client() as client:
        with pytest.raises(httpx.TransportError) as caught:
            await client.post(f"{url}/", content=b"invoice")
    assert not isinstance(caught.value, httpx.ConnectError | httpx.ConnectTimeout)
    assert may_have_arrived(caught.value)


async def test_read_timeout_may_have_arrived() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(2)

    server, url, _ = await _serve(handler)
    async with server, _client(timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.post(f"{url}/", content=b"invoice")
    assert may_have_arrived(caught.value)


async def test_idle_connection_closed_by_server_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # keep-alive promised, then the server closes the connection

    server, url, _ = await _serve(handler)
    async with server, _client() as client:
        for _ in range(4):
            assert (await client.post(f"{url}/", content=b"x")).text == "ok"
            await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
    assert connections == 4
