"""``SandboxServer``: the sandbox app served by uvicorn in a background thread.

Used by tests, the demo and benchmarks::

    with SandboxServer(extraction_delay_s=0.05) as sandbox:
        client = httpx.Client(base_url=sandbox.api_url)
        token = client.post("/v1/auth/login", json={"username": sandbox.username,
                                                     "password": sandbox.password}).json()["key"]
"""

from __future__ import annotations

from typing import Any

import httpx

from rossflow.localstack.uvicorn_thread import UvicornThread
from sandbox.app import create_app
from sandbox.config import DEFAULT_PASSWORD, DEFAULT_USERNAME, SandboxConfig


class SandboxServer:
    """A running Rossum-compatible sandbox; ``port=0`` picks a free port."""

    username = DEFAULT_USERNAME
    password = DEFAULT_PASSWORD

    def __init__(
        self,
        db: str = ":memory:",
        host: str = "127.0.0.1",
        port: int = 0,
        extraction_delay_s: float = 1.0,
        **settings: Any,
    ) -> None:
        self.config = SandboxConfig(db=db, extraction_delay_s=extraction_delay_s, **settings)
        self.app = create_app(self.config)
        self._thread = UvicornThread(self.app, host, port, name="rossum-sandbox")
        public_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.config.public_base_url = f"http://{public_host}:{self._thread.port}/api"

    @property
    def sandbox(self) -> Any:
        """The in-process :class:`sandbox.core.Sandbox` (state; use from the server loop only)."""
        return self.app.sandbox

    @property
    def url(self) -> str:
        return self.config.public_base_url[: -len("/api")]

    @property
    def api_url(self) -> str:
        return self.config.public_base_url

    @property
    def port(self) -> int:
        return self._thread.port

    def start(self) -> SandboxServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- admin helpers (thin HTTP calls to /_sandbox) -------------------------------------
    def _admin(self, method: str, path: str, json: Any = None, timeout: float = 120.0) -> Any:
        resp = httpx.request(method, f"{self.url}/_sandbox/{path}", json=json, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def login(self) -> str:
        """A fresh API token of the default user."""
        resp = httpx.post(
            f"{self.api_url}/v1/auth/login",
            json={"username": self.username, "password": self.password},
        )
        resp.raise_for_status()
        return str(resp.json()["key"])

    def set_faults(self, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self._admin("POST", "faults", {"rules": rules}))

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def seed(self, queue: int = 1, count: int = 10, status: str = "to_review") -> list[int]:
        return list(
            self._admin("POST", "seed", {"queue": queue, "count": count, "status": status})["ids"]
        )

    def confirm_all(self, queue: int = 1) -> list[int]:
        return list(self._admin("POST", "confirm_all", {"queue": queue})["confirmed"])

    def stats(self) -> dict[str, Any]:
        return dict(self._admin("GET", "stats"))

    def timeline(self) -> list[tuple[float, int]]:
        """(arrival epoch seconds, status) of the last API requests, oldest first."""
        body = self._admin("GET", "stats?timeline=1")
        return [(float(t), int(status)) for t, status in body["timeline"]]

    def reset_stats(self) -> None:
        self._admin("DELETE", "stats")

    def hook_deliveries(self) -> list[dict[str, Any]]:
        return list(self._admin("GET", "hook_deliveries")["results"])

    def settings(self, **values: Any) -> dict[str, Any]:
        """Change runtime settings (see :class:`SandboxConfig`); returns the current ones."""
        return dict(self._admin("POST", "settings", values))

    def force_status(self, annotation_id: int, status: str) -> None:
        self._admin("POST", f"annotations/{annotation_id}/status", {"status": status})

    def reset(self) -> None:
        """Fresh seeded state, default settings, no faults/stats/hook records (in-memory DB)."""
        self._admin("POST", "reset")

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until background hook deliveries and exports are done."""
        self._admin("POST", f"idle?timeout={timeout}", timeout=timeout + 5)
