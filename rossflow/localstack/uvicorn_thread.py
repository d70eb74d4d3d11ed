"""Run an ASGI app with uvicorn in a background thread (tests, demo, benchmarks).

One helper for every local HTTP service (Rossum sandbox, ERP stand-in, webhook receiver) so that
each of them starts, reports its bound port and stops the same way.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class PortInUseError(RuntimeError):
    """The requested port is taken; the message names it."""


def _bind_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only disables Nagle on sockets whose proto says TCP, and
    # accepted sockets inherit TCP_NODELAY from the listener. Without it every response (headers
    # and body are two writes) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class UvicornThread:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one) from a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "asgi",
        log_level: str = "warning",
        timeout_keep_alive: int = 30,
    ) -> None:
        self.app = app
        self.host = host
        self.name = name
        self._sock = _bind_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            timeout_keep_alive=timeout_keep_alive,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> UvicornThread:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name} failed to start on {self.url}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start within {timeout}s on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def serve_forever(self) -> None:
        """Block in the calling thread (used by CLI commands)."""
        self._server.run(sockets=[self._sock])

    def __enter__(self) -> UvicornThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
