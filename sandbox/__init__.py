"""Local Rossum-compatible API server ("sandbox") for developing and testing rossflow pipelines.

``from sandbox.server import SandboxServer`` to run it in-process, ``rossflow sandbox`` (see
:mod:`sandbox.cli`) to run it in the foreground. See ``sandbox/README.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SandboxServer", "create_app"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so importing the package does not pull in uvicorn and httpx."""
    if name == "SandboxServer":
        from sandbox.server import SandboxServer

        return SandboxServer
    if name == "create_app":
        from sandbox.app import create_app

        return create_app
    raise AttributeError(name)
