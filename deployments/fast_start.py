"""Start ``rossflow serve``'s flow runs from a fork server that has already imported Prefect.

A flow run in its own process normally starts a fresh interpreter that imports Prefect and the
flow module: 4.6 s on an idle 2-CPU machine (``bench/webhook_bench.py``), most of the time
between a Rossum hook and the document reaching the ERP. With :func:`install`, the runner keeps
one fork server (``multiprocessing``'s ``forkserver`` start method) that has imported Prefect
and the rossflow flows once; each flow run is forked from it in a few milliseconds and still
runs in its own process (cancellation, crashes and memory stay isolated per run).

Prefect's runner starts in-memory flows through
``prefect.runner._starter_direct.run_flow_in_subprocess``, documented there as the place to
patch; that function uses ``multiprocessing.get_context("spawn")``. ``install`` registers the
flows with the runner and hands that function a ``forkserver`` context instead.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import threading
import types
from collections.abc import Iterable
from typing import Any
from uuid import UUID

log = logging.getLogger("rossflow.serve")

#: Imported once by the fork server; every flow run starts with them loaded (the last one
#: also runs Prefect's server version check there, so the forked runs skip it).
PRELOAD = (
    "prefect.flow_engine",
    "flows.export",
    "flows.export_event",
    "flows.ingest",
    "deployments.forkserver_warm",
)

_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None


def forkserver_context() -> multiprocessing.context.BaseContext:
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
            _context = ctx
        return _context


def _shim() -> types.SimpleNamespace:
    """What ``prefect.flow_engine`` sees as ``multiprocessing``: spawn → forkserver."""

    def get_context(method: str | None = None) -> Any:
        if method == "spawn":
            return forkserver_context()
        return multiprocessing.get_context(method)

    return types.SimpleNamespace(get_context=get_context, context=multiprocessing.context)


def flow_for(entrypoint: str | None) -> Any:
    """The flow object behind ``module:function`` or ``module.function`` (a module-path
    entrypoint); None if it cannot be imported."""
    if not entrypoint:
        return None
    module, _, attr = entrypoint.partition(":") if ":" in entrypoint else entrypoint.rpartition(".")
    if not module or not attr:
        return None
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # the runner falls back to `python -m prefect.engine`
        log.warning("fast start off for %s: %s", entrypoint, exc)
        return None


def install(runner: Any, deployments: Iterable[tuple[UUID, Any]]) -> int:
    """Run the given ``(deployment id, RunnerDeployment)`` pairs' flows from the fork server.

    Returns how many deployments use it (the others keep Prefect's default start)."""
    import prefect.flow_engine as engine

    registry = getattr(runner, "_deployment_registry", None)
    if registry is None or not hasattr(registry, "register_flow"):
        log.warning("fast start off: this Prefect runner has no flow registry")
        return 0
    count = 0
    for deployment_id, deployment in deployments:
        flow = flow_for(getattr(deployment, "entrypoint", None))
        if flow is not None:
            registry.register_flow(deployment_id, flow)
            count += 1
    if count:
        engine.multiprocessing = _shim()  # type: ignore[assignment]
        forkserver_context()
        # Start the fork server (and its imports) now rather than on the first flow run.
        threading.Thread(
            target=multiprocessing.forkserver.ensure_running, name="forkserver-warmup", daemon=True
        ).start()
    return count


def uninstall() -> None:
    """Back to Prefect's spawn start (tests; a process that stops serving)."""
    import prefect.flow_engine as engine

    engine.multiprocessing = multiprocessing  # type: ignore[assignment]


def forkserver_pid() -> int | None:
    """The fork server's process id once it runs (for tests and diagnostics)."""
    return getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
