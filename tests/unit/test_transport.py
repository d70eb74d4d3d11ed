"""rossflow.http.transport: the pooled transport reuses connections and notices server closes."""

from __future__ import annotations

import asyncio

import httpx

from rossflow.http.transport import _Stream, async_transport


async def _server(close_after_response: bool) -> tuple[asyncio.Server, int, list[int]]:
    """A raw HTTP/1.1 server on 127.0.0.1; records one entry per TCP connection."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            body = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            if close_after_response:
                # Keep-alive was promised (no "Connection: close"), then the server goes away:
                # the pool must notice the idle socket became readable (EOF) and not reuse it.
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, connections


async def test_connections_are_reused() -> None:
    server, port, connections = await _server(close_after_response=False)
    async with (
        server,
        httpx.AsyncClient(transport=async_transport(limits=httpx.Limits(max_connections=4))) as c,
    ):
        for _ in range(20):
            resp = await c.get(f"http://127.0.0.1:{port}/")
            assert resp.json() == {"ok": True}
        assert len(connections) == 1


async def test_idle_connection_closed_by_server_is_not_reused() -> None:
    server, port, connections = await _server(close_after_response=True)
    transport = async_transport()
    async with server, httpx.AsyncClient(transport=transport) as client:
        for _ in range(5):
            resp = await client.get(f"http://127.0.0.1:{port}/")
            assert resp.status_code == 200
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
        assert len(connections) == 5
    # The cheaper check is actually in use (not the fallback to the plain transport).
    assert type(transport._pool._network_backend).__name__ == "_Backend"
    assert _Stream.get_extra_info is not None
