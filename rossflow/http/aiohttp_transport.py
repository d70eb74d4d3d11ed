"""An httpx transport that sends with aiohttp: the delivery clients' HTTP/1.1 engine.

Why: a REST delivery is one small POST per document, and on the export's event loop the
request itself is most of the CPU. httpx's own stack (httpcore: a pool scanned per request,
anyio streams, cancel scopes) costs ~1.0–1.4 ms of CPU per request here; aiohttp (C parser,
asyncio protocol) ~0.3 ms, ~0.6 ms behind an httpx client (``bench/``). The httpx client on top
is unchanged: request building, auth, headers, ``httpx.Response``, and the httpx exceptions the
retry and "did it arrive?" logic (:func:`rossflow.http.retry.may_have_arrived`) rely on.

Errors are mapped conservatively: only failures before anything was sent (no connection, a
connect or pool timeout, a bad URL) become "not sent" errors (``ConnectError``,
``ConnectTimeout``, ``UnsupportedProtocol``); anything later — a dropped connection, a reset, a
read timeout, a malformed reply — may have reached the server and is reported as such. (The
``httpx-aiohttp`` package maps a dropped connection to ``ConnectTimeout``, "not sent", which
would let an uncertain POST be resent blind: hence this module.)

Not supported, and so never used for it: HTTP/2, proxies, a write timeout of its own.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake: nothing sent
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:  # no connection (or free slot) in time
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except (aiohttp.ClientError, OSError) as exc:  # resets, payload errors: may have arrived
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._response.content.iter_chunked(64 * 1024):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(verify=…, limits=…))``."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits()
        self._ssl: ssl.SSLContext | bool
        if isinstance(verify, ssl.SSLContext):
            self._ssl = verify
        elif verify is False:
            self._ssl = False
        else:  # True or a CA bundle path: the same trust store as httpx (certifi)
            self._ssl = httpx.create_ssl_context(verify=verify)
        self._limit = limits.max_connections or 0  # aiohttp: 0 = no limit
        self._keepalive = limits.keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                ssl=self._ssl,
                keepalive_timeout=self._keepalive if self._keepalive is not None else 15.0,
            )
            # No cookie jar (httpx keeps its own), and no headers of aiohttp's own: httpx has
            # set them all (Host, User-Agent, Accept, Content-Length, ...).
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        body = await request.aread()
        with _httpx_errors(request):
            response = await self._client().request(
                request.method,
                # credentials in the URL are already an Authorization header (httpx's doing)
                str(request.url.copy_with(userinfo=b"") if request.url.userinfo else request.url),
                headers=list(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,  # httpx decides (the delivery clients never follow)
                auto_decompress=False,  # httpx decodes per Content-Encoding
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
